"""Sentence pooling shared by the torch encoder and the ONNX export (torch; offline only).

One definition of "mean-pooled, L2-normalised sentence embedding", used by
`models.content.TextEncoder` and traced into the graph by
`models.text_encoder.export_text_encoder`, so both give the same vectors.
"""

from __future__ import annotations

import torch

__all__ = ["PooledEncoder", "mean_pool_normalise"]


def mean_pool_normalise(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Attention-mask mean of token states [B, T, H] -> unit-length rows [B, H].

    sentence-transformers' ``Pooling(mean)`` + ``Normalize``. Every tokenized text has
    at least one real token ([CLS]), so the clamp only guards an all-padding row.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


class PooledEncoder(torch.nn.Module):
    """A Hugging Face encoder followed by `mean_pool_normalise`: what the ONNX graph computes.

    Args:
        model: An ``AutoModel`` (returns ``last_hidden_state``).
        inputs: Names of the positional inputs of `forward`, in order; must include
            ``attention_mask``.
    """

    def __init__(self, model: torch.nn.Module, inputs: list[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = list(inputs)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Embed one batch: the tensors named by `inputs`, int64 [B, T] each."""
        kwargs = dict(zip(self.inputs, tensors, strict=True))
        hidden = self.model(**kwargs).last_hidden_state
        return mean_pool_normalise(hidden, kwargs["attention_mask"])
