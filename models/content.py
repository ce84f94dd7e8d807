"""Item content embeddings from a local Hugging Face text encoder, and cold-start items.

Any encoder directory works (``AutoTokenizer`` + ``AutoModel``, e.g. a sentence-transformers
model saved with ``save_pretrained``); it is loaded with ``local_files_only=True`` so
nothing is downloaded at run time. Texts are embedded by attention-mask mean pooling and
L2-normalised (`models.pooling.mean_pool_normalise`, the definition the torch-free
`models.text_encoder.OnnxTextEncoder` has in its graph).

Cold start: a model trained with ``item_content`` (see `models.train.train_model`) has
a learned projection from content vectors into its item space. `add_cold_items`
appends items that have text but no interactions, with a zero id embedding, so their
representation is the projection of their text alone; exported as usual, they can be
recommended immediately and their ids are in the vocabulary when events arrive.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from models.architectures import build_network
from models.pooling import mean_pool_normalise
from models.trained import TrainedModel
from models.vocab import ItemVocab

__all__ = ["TextEncoder", "add_cold_items", "encode_item_texts"]

FloatArray = npt.NDArray[np.float32]


class TextEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a local encoder directory.

    Args:
        model_dir: Directory with a tokenizer and a model (``save_pretrained`` layout).
        max_length: Token limit per text.
        batch_size: Texts per forward pass.
        device: Torch device.
    """

    def __init__(
        self, model_dir: Path, *, max_length: int = 128, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        self.model.to(device).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device

    @property
    def dim(self) -> int:
        """Embedding width (the encoder's hidden size)."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed texts; returns float32 [N, dim] with unit-length rows."""
        out: list[FloatArray] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # [B, T, H]
            pooled = mean_pool_normalise(hidden, batch["attention_mask"])
            out.append(pooled.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)


def encode_item_texts(encoder: TextEncoder, texts: Mapping[str, str]) -> dict[str, FloatArray]:
    """Embed item descriptions: item id -> unit vector."""
    ids = list(texts)
    vectors = encoder.encode([texts[i] for i in ids])
    return {item: vectors[row] for row, item in enumerate(ids)}


def add_cold_items(trained: TrainedModel, content: Mapping[str, FloatArray]) -> TrainedModel:
    """Return a copy of `trained` whose catalog also holds the new items of `content`.

    Items already in the vocabulary keep their learned embeddings (their content vector
    is updated if given). New items are appended with a zero id embedding, zero
    attributes and zero popularity, so they are scored by their content alone.

    Args:
        trained: A model trained with `item_content`.
        content: Item id -> content vector (same width as in training).

    Returns:
        The extended model (CPU, eval mode); the original is not modified.

    Raises:
        ValueError: If the model has no content projection or a vector has the wrong width.
    """
    module = trained.module
    if module.content_projection is None or module.item_content is None:
        raise ValueError("the model was trained without item content; retrain with texts")
    width = int(module.item_content.shape[1])
    if any(np.asarray(v).shape != (width,) for v in content.values()):
        raise ValueError(f"content vectors must have width {width}")
    new_ids = sorted(i for i in content if i not in trained.vocab.index)
    vocab = ItemVocab((*trained.vocab.ids, *new_ids))
    n = len(vocab)
    item_content = torch.zeros(n, width)
    item_content[: len(trained.vocab)] = module.item_content
    for item, vector in content.items():
        item_content[vocab.index[item]] = torch.as_tensor(np.asarray(vector, dtype=np.float32))
    attrs = None
    if module.item_attributes is not None:
        attrs = torch.zeros(n, module.item_attributes.shape[1], dtype=torch.long)
        attrs[: len(trained.vocab)] = module.item_attributes
    n_attrs = module.attribute_embedding.num_embeddings - 1 if module.attribute_embedding else 0
    cfg = trained.config
    extended = build_network(
        cfg,
        vocab.n_items,
        item_attributes=attrs,
        n_attributes=n_attrs,
        item_content=item_content,
    )
    state = copy.deepcopy(module.state_dict())
    weight = torch.zeros(n, cfg.dim)
    weight[: len(trained.vocab)] = state["item_embedding.weight"]
    state["item_embedding.weight"] = weight
    state["item_content"] = item_content
    if attrs is not None:
        state["item_attributes"] = attrs
    extended.load_state_dict(state)
    return replace(
        trained,
        module=extended.eval(),
        vocab=vocab,
        popularity=[*trained.popularity, *([0] * len(new_ids))],
        recent_popularity={
            k: [*v, *([0] * len(new_ids))] for k, v in trained.recent_popularity.items()
        },
        config=replace(cfg, max_k=min(cfg.max_k, vocab.n_items)),
    )
