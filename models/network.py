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

from models.config import TrainConfig
from models.interactions import CHANNELS, EVENT_TYPES
from models.metadata import MASKED_SCORE, SIMILARITIES

__all__ = ["SequentialRecommender", "ServingRecommender", "build_network"]


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

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_bias))
        return x + self.drop(self.ffn(self.ln2(x)))  # type: ignore[no-any-return]

    def forward_last(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        """``forward(x, attn_bias)[:, -1:]`` (eval mode) computing only the last position.

        Keys and values still come from every position; the feed-forward network,
        two thirds of a block's work, runs on one position instead of L.
        """
        last = x[:, -1:, :] + self.attn.forward_last(self.ln1(x), attn_bias[:, :, -1:, :])
        return last + self.ffn(self.ln2(last))  # type: ignore[no-any-return]


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
        item_attributes: Optional int64 [n_items + 1, A] attribute ids per item (0 = pad),
            e.g. category / brand ids; their mean embedding is added to the item's.
        n_attributes: Size of the attribute vocabulary without padding (needed with
            `item_attributes`).
        item_content: Optional float [n_items + 1, C] content vectors per item (e.g. text
            embeddings); a learned projection is added to the item's embedding, which is
            what lets items without interactions be scored (see `models.content`).
        similarity: Output scoring, one of `SIMILARITIES`.
        temperature: With ``similarity="cosine"``: logits are cosine / temperature.
    """

    causal: Tensor  # registered buffer, [max_len, max_len] bool
    positions: Tensor  # registered buffer, [max_len] int64
    eye: Tensor  # registered buffer, [max_len, max_len] bool

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
        item_attributes: Tensor | None = None,
        n_attributes: int = 0,
        item_content: Tensor | None = None,
        similarity: str = "cosine",
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        if n_items < 1 or max_len < 1:
            raise ValueError("n_items and max_len must be positive")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if not temperature > 0:
            raise ValueError("temperature must be > 0")
        self.n_items = n_items
        self.similarity = similarity
        self.temperature = temperature
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
        # A constant, not torch.eye(L) at run time: the latter exports as a bool EyeLike,
        # which onnxruntime does not implement.
        self.register_buffer("eye", torch.eye(max_len, dtype=torch.bool), persistent=False)
        self.attribute_embedding: nn.Embedding | None = None
        self.item_attributes: Tensor | None
        if item_attributes is not None:
            if tuple(item_attributes.shape[:1]) != (n_items + 1,) or n_attributes < 1:
                raise ValueError("item_attributes must be [n_items + 1, A] with n_attributes")
            self.attribute_embedding = nn.Embedding(n_attributes + 1, dim, padding_idx=0)
            self.register_buffer("item_attributes", item_attributes.long())
        else:
            self.item_attributes = None
        self.content_projection: nn.Linear | None = None
        self.item_content: Tensor | None
        if item_content is not None:
            if tuple(item_content.shape[:1]) != (n_items + 1,):
                raise ValueError("item_content must be [n_items + 1, C]")
            self.content_projection = nn.Linear(item_content.shape[1], dim, bias=False)
            self.register_buffer("item_content", item_content.float())
        else:
            self.item_content = None
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

    def item_table(self) -> Tensor:
        """Item representations [n_items + 1, D]: id embedding plus side features.

        Used both as input embeddings and (tied) as output embeddings. Row 0 (padding)
        is zero for the id and attribute parts; it is always masked at the output.
        """
        table = self.item_embedding.weight
        if self.attribute_embedding is not None and self.item_attributes is not None:
            attrs = self.item_attributes
            counts = (attrs != 0).sum(dim=1, keepdim=True).clamp(min=1).to(table.dtype)
            table = table + self.attribute_embedding(attrs).sum(dim=1) / counts
        if self.content_projection is not None and self.item_content is not None:
            table = table + self.content_projection(self.item_content)
        return table

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
        x, attn_bias = self._embed(item_seq, type_seq, channel_seq, item_table)
        for block in self.blocks:
            x = block(x, attn_bias)
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
        x, attn_bias = self._embed(item_seq, type_seq, channel_seq, item_table)
        *early, last = self.blocks
        for block in early:
            x = block(x, attn_bias)
        assert isinstance(last, _Block)
        hidden = self.final_norm(last.forward_last(x, attn_bias))
        return hidden[:, 0, :]  # type: ignore[no-any-return]

    def _embed(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        item_table: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Input embeddings [B, L, D] and the additive attention bias [B, 1, L, L]."""
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
        x = (
            F.embedding(item_seq, self.item_table() if item_table is None else item_table)
            + self.type_embedding(type_seq)
            + self.channel_embedding(channel_seq)
            + self.position_embedding(positions)
        )
        # Zero the padding positions so that positional embeddings there carry nothing.
        x = self.embed_dropout(x * valid.unsqueeze(-1).to(x.dtype))
        # Query q may see key k iff k <= q and k is a real item; every query also sees
        # itself so rows for padding queries are never fully masked (no NaN softmax).
        allowed = causal.unsqueeze(0) & (valid.unsqueeze(1) | eye.unsqueeze(0))
        attn_bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~allowed, MASKED_SCORE
        )
        attn_bias = attn_bias.unsqueeze(1)  # [B, 1, L, L], broadcast over heads
        return x, attn_bias

    def score_queries(self, hidden: Tensor) -> Tensor:
        """The query side of the logits (whose inner products with `score_keys` rows
        are the logits of `similarity`): `hidden` itself, or normalised / temperature."""
        if self.similarity == "dot":
            return hidden
        return F.normalize(hidden, dim=-1) * (1.0 / self.temperature)

    def score_keys(self, table: Tensor) -> Tensor:
        """The item side of the logits: `table` itself, or its rows L2-normalised (the
        zero padding row stays zero; it is masked at the output)."""
        return table if self.similarity == "dot" else F.normalize(table, dim=-1)

    def item_logits(self, hidden: Tensor) -> Tensor:
        """Scores over the whole item vocabulary via the tied item embeddings.

        Args:
            hidden: Hidden states [..., D].

        Returns:
            Logits [..., n_items + 1]; column 0 (padding) is not masked here.
        """
        return self.score_queries(hidden) @ self.score_keys(self.item_table()).t()

    def forward(self, item_seq: Tensor, type_seq: Tensor, channel_seq: Tensor) -> Tensor:
        """Training forward: next-item logits at every position, [B, L, n_items + 1]."""
        return self.item_logits(self.encode(item_seq, type_seq, channel_seq))

    def next_item_loss(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        targets: Tensor,
        *,
        n_negatives: int = 0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Mean cross-entropy of next-item prediction over non-pad targets.

        Full softmax over the catalog by default. With `n_negatives > 0`, a sampled
        softmax instead: the positive against `n_negatives` items drawn uniformly (shared
        by the batch; accidental hits masked), for catalogs too large for full logits.
        Logits are only computed where `targets != 0`, which skips the (many) padding
        positions of short sequences instead of scoring and then ignoring them.

        Args:
            item_seq: int64 [B, L] inputs.
            type_seq: int64 [B, L] inputs.
            channel_seq: int64 [B, L] inputs.
            targets: int64 [B, L] next item per position (0 = no target).
            n_negatives: 0 = full softmax; otherwise sampled negatives per batch.
            generator: RNG for the negatives (CPU generator).

        Returns:
            Scalar loss.
        """
        table = self.item_table()
        hidden = self.encode(item_seq, type_seq, channel_seq, table)
        mask = targets != 0
        y = targets[mask]
        h, keys = self.score_queries(hidden[mask]), self.score_keys(table)  # [N, D], [V, D]
        if n_negatives <= 0:
            return F.cross_entropy(h @ keys.t(), y)
        negatives = torch.randint(1, self.n_items + 1, (n_negatives,), generator=generator)
        negatives = negatives.to(h.device)
        pos = (h * keys[y]).sum(dim=-1, keepdim=True)  # [N, 1]
        neg = (h @ keys[negatives].t()).masked_fill(
            negatives.unsqueeze(0) == y.unsqueeze(1), MASKED_SCORE
        )  # [N, S]
        logits = torch.cat([pos, neg], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(y))


class ServingRecommender(nn.Module):
    """Export wrapper: score the last position, mask pad/excluded items, return top-K.

    Args:
        model: A trained `SequentialRecommender` (put into eval mode by the caller).
        max_k: Number of results per row (fixed in the exported graph).
    """

    pad_bias: Tensor  # registered buffer, [n_items + 1] float32
    input_table: Tensor  # registered buffer, [n_items + 1, D]
    output_keys: Tensor  # registered buffer, [D, n_items + 1]

    def __init__(self, model: SequentialRecommender, max_k: int = 100) -> None:
        super().__init__()
        if not 1 <= max_k <= model.n_items:
            raise ValueError(f"max_k must be in [1, {model.n_items}], got {max_k}")
        self.model = model
        self.max_k = max_k
        pad_bias = torch.zeros(model.n_items + 1)
        pad_bias[0] = MASKED_SCORE  # the padding item is never a recommendation
        self.register_buffer("pad_bias", pad_bias, persistent=False)
        # The item tables are constants of a trained model: computed once here, they are
        # plain initializers in the exported graph (side features averaged, items
        # normalised and transposed for the output product) instead of per-call work
        # that onnxruntime may or may not fold (it cannot fold fp16 reductions on CPU).
        # A snapshot: build the wrapper after training.
        with torch.no_grad():
            table = model.item_table().detach().clone()
            keys = model.score_keys(table).t().contiguous()
        self.register_buffer("input_table", table, persistent=False)
        self.register_buffer("output_keys", keys, persistent=False)

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
        hidden = self.model.encode_last(item_seq, type_seq, channel_seq, self.input_table)
        scores = self.model.score_queries(hidden) @ self.output_keys + self.pad_bias
        # zeros_like keeps the exclude shape symbolic in the traced graph.
        masked = torch.zeros_like(exclude, dtype=scores.dtype) + MASKED_SCORE
        scores = scores.scatter(1, exclude, masked)
        top_scores, top_items = torch.topk(scores, self.max_k, dim=1)
        return top_scores, top_items


def build_network(
    config: TrainConfig,
    n_items: int,
    *,
    item_attributes: torch.Tensor | None = None,
    n_attributes: int = 0,
    item_content: torch.Tensor | None = None,
) -> SequentialRecommender:
    """A freshly initialised `SequentialRecommender` of `config`'s shape over `n_items`.

    Args:
        config: Shape and dropout.
        n_items: Catalog size (excluding padding).
        item_attributes: Optional [n_items + 1, A] attribute indices.
        n_attributes: Attribute vocabulary size (with `item_attributes`).
        item_content: Optional [n_items + 1, C] content vectors.

    Returns:
        The network (training mode).
    """
    return SequentialRecommender(
        n_items,
        max_len=config.max_len,
        dim=config.dim,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        dropout=config.dropout,
        item_attributes=item_attributes,
        n_attributes=n_attributes,
        item_content=item_content,
        similarity=config.similarity,
        temperature=config.temperature,
    )
