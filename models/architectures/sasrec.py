"""SASRec: a causal transformer over the event sequence (the default architecture).

Pre-LN transformer blocks with a causal, padding-aware additive attention mask and
learned positions. Sequences are LEFT-padded, so the most recent event is always at the
last position: `encode_last` computes only what the serving head reads.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.architectures import register_architecture
from models.metadata import MASKED_SCORE
from models.network import Recommender

__all__ = ["SequentialRecommender"]


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

    def forward_last(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        """Attention output [B, 1, D] of the last query only, over all L keys.

        Same math as ``forward(x, attn_bias)[:, -1:]`` without the L x L logits and
        the output projection of the other queries.
        """
        b, length, dim = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, Dh]
        q = q[:, :, -1:, :]  # [B, H, 1, Dh]
        logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim)) + attn_bias
        weights = torch.softmax(logits, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, 1, dim)
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

    def mix(self, h: Tensor, attn_bias: Tensor, valid: Tensor) -> Tensor:
        """The token mixer on normalised ``h`` [B, L, D]: self-attention here.

        ``valid`` [B, L] marks the real (non-padding) positions, for mixers that need
        it beside the attention bias.
        """
        return self.attn(h, attn_bias)  # type: ignore[no-any-return]

    def mix_last(self, h: Tensor, attn_bias: Tensor, valid: Tensor) -> Tensor:
        """``mix(h, attn_bias, valid)[:, -1:]``, computing only the last position."""
        return self.attn.forward_last(h, attn_bias[:, :, -1:, :])

    def forward(self, x: Tensor, attn_bias: Tensor, valid: Tensor) -> Tensor:
        x = x + self.drop(self.mix(self.ln1(x), attn_bias, valid))
        return x + self.drop(self.ffn(self.ln2(x)))  # type: ignore[no-any-return]

    def forward_last(self, x: Tensor, attn_bias: Tensor, valid: Tensor) -> Tensor:
        """``forward(x, attn_bias, valid)[:, -1:]`` (eval mode), only the last position.

        Keys and values still come from every position; the feed-forward network,
        two thirds of a block's work, runs on one position instead of L.
        """
        last = x[:, -1:, :] + self.mix_last(self.ln1(x), attn_bias, valid)
        return last + self.ffn(self.ln2(last))  # type: ignore[no-any-return]


@register_architecture("sasrec")
class SequentialRecommender(Recommender):
    """Causal transformer over (item, event type, channel) sequences (SASRec-style).

    Takes `Recommender`'s arguments; uses `n_layers` pre-LN blocks of `n_heads` heads,
    learned positional embeddings for `max_len` positions, and `dropout` on the
    embeddings, attention weights and residual branches.
    """

    causal: Tensor  # registered buffer, [max_len, max_len] bool
    positions: Tensor  # registered buffer, [max_len] int64
    eye: Tensor  # registered buffer, [max_len, max_len] bool

    def build_encoder(self) -> None:
        """Positional embeddings, the transformer blocks, the final norm, mask constants."""
        max_len, dim = self.max_len, self.dim
        self.position_embedding = nn.Embedding(max_len, dim)
        self.embed_dropout = nn.Dropout(self.dropout)
        self.blocks = nn.ModuleList(self.new_block() for _ in range(self.n_layers))
        self.final_norm = nn.LayerNorm(dim)
        # Constant causal pattern (True = key k visible from query q, i.e. k <= q).
        self.register_buffer(
            "causal", torch.ones(max_len, max_len, dtype=torch.bool).tril(), persistent=False
        )
        self.register_buffer("positions", torch.arange(max_len), persistent=False)
        # A constant, not torch.eye(L) at run time: the latter exports as a bool EyeLike,
        # which onnxruntime does not implement.
        self.register_buffer("eye", torch.eye(max_len, dtype=torch.bool), persistent=False)

    def new_block(self) -> _Block:
        """One encoder block (an architecture with another token mixer overrides this)."""
        return _Block(self.dim, self.n_heads, self.dropout)

    def encode(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        item_table: Tensor | None = None,
    ) -> Tensor:
        """Contextual hidden states [B, L, D] for left-padded index sequences [B, L].

        Training may pass L < max_len (batches trimmed to their longest row); the rows
        are still left-padded, so they take the last L positional embeddings.

        Args:
            item_seq: Item indices (0 = pad), int64 [B, L] with L <= max_len.
            type_seq: Event-type indices (0 = pad), int64 [B, L].
            channel_seq: Channel indices (0 = pad), int64 [B, L].
            item_table: Precomputed `item_table()` (saves recomputing it in training).

        Returns:
            Final-LayerNorm'd hidden states; position t only depends on positions <= t.
        """
        x, attn_bias, valid = self._embed(item_seq, type_seq, channel_seq, item_table)
        for block in self.blocks:
            x = block(x, attn_bias, valid)
        return self.final_norm(x)  # type: ignore[no-any-return]

    def encode_last(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        item_table: Tensor | None = None,
    ) -> Tensor:
        """The last position's hidden state [B, D]: ``encode(...)[:, -1]`` for serving.

        Earlier blocks run on every position (the last block's keys and values need
        them); the last block computes only the final position, which is all that
        next-item scoring reads. For the default 2-block model at L = 50 this skips
        about 40 % of the encoder's multiply-adds. Eval mode only (no dropout).
        `item_table` is a precomputed `item_table()`, as in `encode`.
        """
        x, attn_bias, valid = self._embed(item_seq, type_seq, channel_seq, item_table)
        *early, last = self.blocks
        for block in early:
            x = block(x, attn_bias, valid)
        assert isinstance(last, _Block)
        hidden = self.final_norm(last.forward_last(x, attn_bias, valid))
        return hidden[:, 0, :]  # type: ignore[no-any-return]

    def _embed(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        item_table: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Input embeddings [B, L, D], the additive attention bias [B, 1, L, L] and the
        real (non-padding) positions [B, L]."""
        valid = item_seq != 0  # [B, L]
        length = item_seq.shape[1]
        positions, causal, eye = self.positions, self.causal, self.eye
        # Rows are left-padded, so a batch trimmed to its longest row (L < max_len) uses
        # the last L positions. Sliced unconditionally so the exported graph keeps L
        # dynamic: the scorer trims leading all-padding columns before each run, and
        # attention and feed-forward cost falls with L (exact: padding never feeds a
        # real position).
        positions = positions[self.max_len - length :]
        causal = causal[:length, :length]
        eye = eye[:length, :length]
        inputs = self.embed_inputs(item_seq, type_seq, channel_seq, item_table)
        x = inputs + self.position_embedding(positions)
        # Zero the padding positions so that positional embeddings there carry nothing.
        x = self.embed_dropout(x * valid.unsqueeze(-1).to(x.dtype))
        # Query q may see key k iff k <= q and k is a real item; every query also sees
        # itself so rows for padding queries are never fully masked (no NaN softmax).
        allowed = causal.unsqueeze(0) & (valid.unsqueeze(1) | eye.unsqueeze(0))
        attn_bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~allowed, MASKED_SCORE
        )
        attn_bias = attn_bias.unsqueeze(1)  # [B, 1, L, L], broadcast over heads
        return x, attn_bias, valid
