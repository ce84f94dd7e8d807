"""Warm start: copy a trained parent's weights into a new network, items mapped by id."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from models.config import TrainConfig
from models.network import Recommender
from models.trained import TrainedModel
from models.vocab import ItemVocab

__all__ = ["warm_start"]

logger = logging.getLogger("recstream.models.train")


#: Parameters warm_start maps row by row (by external id) instead of copying whole.
_ROW_MAPPED = ("item_embedding.weight", "attribute_embedding.weight")
#: Buffers that describe the current data's catalog; always rebuilt, never carried over.
_CATALOG_BUFFERS = (
    "item_attributes",
    "item_content",
    "transition_head.next_items",
    "transition_head.next_counts",
    "transition_head.totals",
)
#: Architecture settings a warm start must share with its parent.
_ARCH_FIELDS = (
    "arch",
    "repeat_head",
    "transition_head",
    "max_len",
    "dim",
    "n_layers",
    "n_heads",
    "similarity",
    "temperature",
)


def warm_start(
    model: Recommender,
    vocab: ItemVocab,
    attribute_names: Sequence[str],
    parent: TrainedModel,
    config: TrainConfig,
) -> dict[str, Any]:
    """Copy a trained parent's weights into a freshly initialised `model`, in place.

    Items are matched by external id: an item both catalogs share keeps its learned
    embedding, an item only the new data has keeps its random init, an item only the
    parent had is dropped. Attribute embeddings are matched by attribute id the same
    way (a parent saved without attribute names must have exactly the same attribute
    vocabulary size). Every other parameter is copied as is.

    Args:
        model: The new network (built for `vocab`).
        vocab: The new training data's item vocabulary.
        attribute_names: The new attribute vocabulary (empty without attributes).
        parent: The model to start from.
        config: The new run's configuration (`arch`, `max_len`, `dim`, `n_layers`, `n_heads`,
            `similarity` and `temperature` must equal the parent's).

    Returns:
        Lineage for `TrainingStats.init_from`.

    Raises:
        ValueError: If the architectures differ (architecture, width, depth, heads, sequence length,
            side features, scoring).
    """
    mismatched = [
        f"{name} {getattr(parent.config, name)} != {getattr(config, name)}"
        for name in _ARCH_FIELDS
        if getattr(parent.config, name) != getattr(config, name)
    ]
    own = model.state_dict()
    theirs = parent.module.state_dict()
    for key, value in theirs.items():
        if key in _CATALOG_BUFFERS or key in _ROW_MAPPED:
            continue
        if key not in own:
            mismatched.append(f"{key} only in the parent (side features differ?)")
        elif own[key].shape != value.shape:
            mismatched.append(f"{key} {tuple(value.shape)} != {tuple(own[key].shape)}")
    for key in own.keys() - theirs.keys() - set(_CATALOG_BUFFERS):
        mismatched.append(f"{key} only in the new model (side features differ?)")
    if ("attribute_embedding.weight" in own) != ("attribute_embedding.weight" in theirs):
        mismatched.append("item attributes used by only one of the two models")
    if mismatched:
        detail = "; ".join(mismatched)
        raise ValueError(f"cannot warm-start from a different architecture: {detail}")
    state = {k: v for k, v in theirs.items() if k not in _CATALOG_BUFFERS + _ROW_MAPPED}
    state["item_embedding.weight"], copied = _map_rows(
        own["item_embedding.weight"], theirs["item_embedding.weight"], parent.vocab.ids, vocab.ids
    )
    if "attribute_embedding.weight" in own:
        old_names: Sequence[str | None] = parent.attribute_names
        if not old_names:
            logger.warning(
                "the parent checkpoint does not record attribute names; attribute "
                "embeddings are copied by index, which assumes the same attribute file"
            )
            if len(theirs["attribute_embedding.weight"]) != len(attribute_names) + 1:
                raise ValueError(
                    "the parent does not record its attribute names and its attribute "
                    "vocabulary has a different size; cannot map attribute embeddings"
                )
            old_names = attribute_names
        state["attribute_embedding.weight"], _ = _map_rows(
            own["attribute_embedding.weight"],
            theirs["attribute_embedding.weight"],
            (None, *old_names),
            (None, *attribute_names),
        )
    model.load_state_dict(state, strict=False)
    return {
        "data_fingerprint": parent.data_fingerprint,
        "best_epoch": parent.stats.best_epoch,
        "n_items_copied": copied,
        "n_items_new": vocab.n_items - copied,
        "n_items_dropped": parent.vocab.n_items - copied,
    }


def _map_rows(
    fresh: torch.Tensor,
    old: torch.Tensor,
    old_ids: Sequence[str | None],
    new_ids: Sequence[str | None],
) -> tuple[torch.Tensor, int]:
    """`fresh` with row 0 (padding) and the rows of ids both lists share taken from `old`.

    Returns the rows and how many ids (padding not counted) were carried over.
    """
    where = {item: row for row, item in enumerate(old_ids) if item is not None}
    pairs = [(0, 0)] + [(row, where[item]) for row, item in enumerate(new_ids) if item in where]
    out = fresh.detach().clone()
    dst, src = (torch.tensor(side) for side in zip(*pairs, strict=True))
    out[dst] = old[src]
    return out, len(pairs) - 1
