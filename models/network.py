"""SASRec-style causal transformer for next-item recommendation (torch; training/export only).

Sequences are LEFT-padded to a fixed `max_len`, so the most recent event is always at
position `max_len - 1` and the serving head simply reads the last position. Index 0 is
padding in the item, event-type and channel vocabularies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - conventional alias

from models.interactions import CHANNELS, EVENT_TYPES

__all__ = ["MASKED_SCORE", "SequentialRecommender", "ServingRecommender"]

#: Score given to padding / excluded items before TopK. A large negative *finite* value
#: (not -inf) keeps TopK well defined in every runtime; real scores are O(10).
MASKED_SCORE = -1.0e9

# Additive attention bias for disallowed keys; finite so a fully masked row cannot NaN.
_ATTN_MASK_VALUE = -1.0e9


class _CausalSelfAttention(nn.Module):
    """Multi-head self-attention with an additive mask (plain ops: exports everywhere)."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        """Attend over `x` [B, L, D] with `attn_bias` [B, 1, L, L] added to the logits."""
        b, length, dim = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, Dh]
        logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim)) + attn_bias
        weights = self.attn_dropout(torch.softmax(logits, dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(b, length, dim)
        return self.proj(out)  # type: ignore[no-any-return]


class _Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _CausalSelfAttention(dim, n_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_bias))
        return x + self.drop(self.ffn(self.ln2(x)))  # type: ignore[no-any-return]


class SequentialRecommender(nn.Module):
    """Causal transformer over (item, event type, channel) sequences with tied output.

    Args:
        n_items: Number of real items; the item vocabulary has `n_items + 1` rows (0 = pad).
        max_len: Fixed (left-padded) sequence length.
        dim: Model width.
        n_layers: Number of pre-LN transformer blocks.
        n_heads: Attention heads per block.
        dropout: Dropout probability (embeddings, attention weights, residual branches).
        n_event_types: Size of the event-type vocabulary without padding.
        n_channels: Size of the channel vocabulary without padding.
    """

    causal: Tensor  # registered buffer, [max_len, max_len] bool
    positions: Tensor  # registered buffer, [max_len] int64

    def __init__(
        self,
        n_items: int,
        *,
        max_len: int = 50,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        dropout: float = 0.2,
        n_event_types: int = len(EVENT_TYPES),
        n_channels: int = len(CHANNELS),
    ) -> None:
        super().__init__()
        if n_items < 1 or max_len < 1:
            raise ValueError("n_items and max_len must be positive")
        self.n_items = n_items
        self.max_len = max_len
        self.dim = dim
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.type_embedding = nn.Embedding(n_event_types + 1, dim, padding_idx=0)
        self.channel_embedding = nn.Embedding(n_channels + 1, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, dim)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, n_heads, dropout) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(dim)
        # Constant causal pattern (True = key k visible from query q, i.e. k <= q).
        self.register_buffer(
            "causal", torch.ones(max_len, max_len, dtype=torch.bool).tril(), persistent=False
        )
        self.register_buffer("positions", torch.arange(max_len), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-style small init: with tied output embeddings, N(0, 1) embeddings would give
        # huge initial logits and a slow start.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def encode(self, item_seq: Tensor, type_seq: Tensor, channel_seq: Tensor) -> Tensor:
        """Contextual hidden states [B, L, D] for left-padded index sequences [B, L].

        Args:
            item_seq: Item indices (0 = pad), int64 [B, L] with L == max_len.
            type_seq: Event-type indices (0 = pad), int64 [B, L].
            channel_seq: Channel indices (0 = pad), int64 [B, L].

        Returns:
            Final-LayerNorm'd hidden states; position t only depends on positions <= t.
        """
        valid = item_seq != 0  # [B, L]
        x = (
            self.item_embedding(item_seq)
            + self.type_embedding(type_seq)
            + self.channel_embedding(channel_seq)
            + self.position_embedding(self.positions)
        )
        # Zero the padding positions so that positional embeddings there carry nothing.
        x = self.embed_dropout(x * valid.unsqueeze(-1).to(x.dtype))
        # Query q may see key k iff k <= q and k is a real item; every query also sees
        # itself so rows for padding queries are never fully masked (no NaN softmax).
        eye = torch.eye(self.max_len, dtype=torch.bool, device=item_seq.device)
        allowed = self.causal.unsqueeze(0) & (valid.unsqueeze(1) | eye.unsqueeze(0))
        attn_bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~allowed, _ATTN_MASK_VALUE
        )
        attn_bias = attn_bias.unsqueeze(1)  # [B, 1, L, L], broadcast over heads
        for block in self.blocks:
            x = block(x, attn_bias)
        return self.final_norm(x)  # type: ignore[no-any-return]

    def item_logits(self, hidden: Tensor) -> Tensor:
        """Scores over the whole item vocabulary via the tied item embeddings.

        Args:
            hidden: Hidden states [..., D].

        Returns:
            Logits [..., n_items + 1]; column 0 (padding) is not masked here.
        """
        return hidden @ self.item_embedding.weight.t()

    def forward(self, item_seq: Tensor, type_seq: Tensor, channel_seq: Tensor) -> Tensor:
        """Training forward: next-item logits at every position, [B, L, n_items + 1]."""
        return self.item_logits(self.encode(item_seq, type_seq, channel_seq))

    def next_item_loss(
        self, item_seq: Tensor, type_seq: Tensor, channel_seq: Tensor, targets: Tensor
    ) -> Tensor:
        """Mean full-softmax cross-entropy of next-item prediction over non-pad targets.

        Logits are only computed where `targets != 0`, which skips the (many) padding
        positions of short sequences instead of scoring and then ignoring them.

        Args:
            item_seq: int64 [B, L] inputs.
            type_seq: int64 [B, L] inputs.
            channel_seq: int64 [B, L] inputs.
            targets: int64 [B, L] next item per position (0 = no target).

        Returns:
            Scalar loss.
        """
        hidden = self.encode(item_seq, type_seq, channel_seq)
        mask = targets != 0
        logits = self.item_logits(hidden[mask])  # [N, n_items + 1]
        return F.cross_entropy(logits, targets[mask])


class ServingRecommender(nn.Module):
    """Export wrapper: score the last position, mask pad/excluded items, return top-K.

    Args:
        model: A trained `SequentialRecommender` (put into eval mode by the caller).
        max_k: Number of results per row (fixed in the exported graph).
    """

    pad_bias: Tensor  # registered buffer, [n_items + 1] float32

    def __init__(self, model: SequentialRecommender, max_k: int = 100) -> None:
        super().__init__()
        if not 1 <= max_k <= model.n_items:
            raise ValueError(f"max_k must be in [1, {model.n_items}], got {max_k}")
        self.model = model
        self.max_k = max_k
        pad_bias = torch.zeros(model.n_items + 1)
        pad_bias[0] = MASKED_SCORE  # the padding item is never a recommendation
        self.register_buffer("pad_bias", pad_bias, persistent=False)

    def forward(
        self, item_seq: Tensor, type_seq: Tensor, channel_seq: Tensor, exclude: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Top-K next items for each row.

        Args:
            item_seq: int64 [B, L] left-padded item indices.
            type_seq: int64 [B, L] event-type indices.
            channel_seq: int64 [B, L] channel indices.
            exclude: int64 [B, E] item indices to mask (0-padded; E >= 1).

        Returns:
            (scores float32 [B, K], items int64 [B, K]), best first.
        """
        hidden = self.model.encode(item_seq, type_seq, channel_seq)[:, -1, :]
        scores = self.model.item_logits(hidden) + self.pad_bias
        # zeros_like keeps the exclude shape symbolic in the traced graph.
        masked = torch.zeros_like(exclude, dtype=scores.dtype) + MASKED_SCORE
        scores = scores.scatter(1, exclude, masked)
        top_scores, top_items = torch.topk(scores, self.max_k, dim=1)
        return top_scores, top_items
