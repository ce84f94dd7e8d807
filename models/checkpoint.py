"""Checkpoint I/O: a self-contained `.pt` (weights, config, vocabulary, stats) and back."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from models.architectures import build_network
from models.config import TrainConfig
from models.trained import TrainedModel, TrainingStats
from models.vocab import ItemVocab

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(trained: TrainedModel, path: Path) -> Path:
    """Write a self-contained checkpoint (weights, config, vocabulary, stats) atomically.

    Args:
        trained: The model to save.
        path: Destination file (`.pt`); its directory is created.

    Returns:
        `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = trained.module
    # "arch" holds the side-feature shapes (a key older than the registry); the
    # architecture's name is config["arch"].
    arch = {
        "n_attributes": (
            module.attribute_embedding.num_embeddings - 1
            if module.attribute_embedding is not None
            else 0
        ),
        "attribute_width": (
            int(module.item_attributes.shape[1]) if module.item_attributes is not None else 0
        ),
        "content_dim": (
            int(module.item_content.shape[1]) if module.item_content is not None else 0
        ),
    }
    payload = {
        "format": 1,
        "config": asdict(trained.config),
        "arch": arch,
        "vocab": list(trained.vocab.ids),
        "popularity": list(trained.popularity),
        "stats": trained.stats.to_dict(),
        "data_fingerprint": trained.data_fingerprint,
        "metrics": dict(trained.metrics),
        "recent_popularity": {k: list(v) for k, v in trained.recent_popularity.items()},
        "attribute_names": list(trained.attribute_names),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> TrainedModel:
    """Load a checkpoint written by `save_checkpoint` (CPU, eval mode).

    Args:
        path: A `.pt` file, or a directory containing `best.pt`.

    Returns:
        The trained model.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    # Checkpoints written before cosine scoring existed (and became the default) are dot.
    # ... and those written before the repeat-aware head existed have none.
    # ... and those before the transition head likewise.
    defaults = {"similarity": "dot", "repeat_head": False, "transition_head": False}
    config = TrainConfig(**{**defaults, **payload["config"]})
    arch = payload["arch"]
    vocab = ItemVocab(tuple(payload["vocab"]))
    n = len(vocab)
    model = build_network(
        config,
        vocab.n_items,
        item_attributes=(
            torch.zeros(n, arch["attribute_width"], dtype=torch.long)
            if arch["n_attributes"]
            else None
        ),
        n_attributes=arch["n_attributes"],
        item_content=torch.zeros(n, arch["content_dim"]) if arch["content_dim"] else None,
    )
    model.load_state_dict(payload["state_dict"])
    return TrainedModel(
        module=model.eval(),
        vocab=vocab,
        popularity=list(payload["popularity"]),
        config=config,
        stats=TrainingStats.from_dict(payload["stats"]),
        data_fingerprint=payload["data_fingerprint"],
        metrics={str(k): float(v) for k, v in payload["metrics"].items()},
        recent_popularity={
            str(k): [int(c) for c in v] for k, v in payload.get("recent_popularity", {}).items()
        },
        attribute_names=tuple(str(a) for a in payload.get("attribute_names", ())),
    )
