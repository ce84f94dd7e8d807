"""The shared next-item model and its serving wrapper (torch; training/export only).

`Recommender` holds what every architecture shares: the item table (id embedding plus
side features), event-type and channel input embeddings, similarity scoring against the
tied item table, and the training losses. An architecture (see `models.architectures`)
subclasses it and supplies only the sequence encoder. `ServingRecommender` wraps any of
them for export.

Sequences are LEFT-padded to a fixed `max_len`, so the most recent event is always at
position `max_len - 1` and the serving head simply reads the last position. Index 0 is
padding in the item, event-type and channel vocabularies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - conventional alias

from models.contrastive import dropout_views_infonce
from models.interactions import CHANNELS, EVENT_TYPES
from models.metadata import MASKED_SCORE, SIMILARITIES
from models.repeat import (
    RepeatHead,
    add_sparse_bias,
    sample_columns,
    sparse_extras,
    uniform_negatives,
)
from models.transitions import TransitionHead

__all__ = ["Recommender", "ServingRecommender"]


class Recommender(nn.Module, ABC):
    """Base of every architecture: everything but the sequence encoder.

    A subclass implements `build_encoder` (create its layers from the shape attributes
    below), `encode` (hidden states at every position, for training) and `encode_last`
    (the last position only, for serving; equal to ``encode(...)[:, -1]`` in eval mode),
    and registers itself with `models.architectures.register_architecture`.

    Args:
        n_items: Number of real items; the item vocabulary has `n_items + 1` rows (0 = pad).
        max_len: Fixed (left-padded) sequence length.
        dim: Model width.
        n_layers: Encoder depth (the architecture decides what a layer is).
        n_heads: Attention heads per layer (architectures without attention ignore it).
        dropout: Dropout probability inside the encoder.
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
        repeat_head: Add the repeat-aware head (`models.repeat.RepeatHead`): a learned
            bias on the logits of the items already in the history.
        transition_head: Add the transition-prior head (`models.transitions`): the
            item-transition chain's successors of the newest items, fused into the
            logits by a learned gate (its table is filled by `TransitionHead.fit`).
    """

    #: Registry name, set by `models.architectures.register_architecture`.
    arch: ClassVar[str] = ""

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
        repeat_head: bool = False,
        transition_head: bool = False,
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
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.dropout = dropout
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.type_embedding = nn.Embedding(n_event_types + 1, dim, padding_idx=0)
        self.channel_embedding = nn.Embedding(n_channels + 1, dim, padding_idx=0)
        # The encoder registers its modules here, between the input embeddings and the
        # side features: registration order fixes the parameter init of a seed.
        self.build_encoder()
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
        # Registered last: a seed initialises every other parameter as without the head.
        self.repeat_head = RepeatHead(dim, max_len) if repeat_head else None
        # After the repeat head, for the same reason.
        self.transition_head = TransitionHead(dim, n_items) if transition_head else None
        self._init_weights()
        if self.transition_head is not None:
            self.transition_head.reset_gate()

    @abstractmethod
    def build_encoder(self) -> None:
        """Create the encoder's modules (called once, from `__init__`)."""

    @abstractmethod
    def encode(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        item_table: Tensor | None = None,
    ) -> Tensor:
        """Hidden states [B, L, D] for left-padded index sequences [B, L] (training).

        Position t may only depend on positions <= t. Training may pass L < max_len
        (batches trimmed to their longest row); `item_table` is a precomputed
        `item_table()` (see `embed_inputs`).
        """

    @abstractmethod
    def encode_last(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        item_table: Tensor | None = None,
    ) -> Tensor:
        """The last position's hidden state [B, D] (serving; eval mode).

        Must equal ``encode(...)[:, -1]`` and export to ONNX with a dynamic L.
        """

    def embed_inputs(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        item_table: Tensor | None = None,
    ) -> Tensor:
        """Input embeddings [B, L, D]: item table row + event type + channel.

        Args:
            item_seq: Item indices (0 = pad), int64 [B, L].
            type_seq: Event-type indices (0 = pad), int64 [B, L].
            channel_seq: Channel indices (0 = pad), int64 [B, L].
            item_table: Precomputed `item_table()` (saves recomputing it).
        """
        x: Tensor = (
            F.embedding(item_seq, self.item_table() if item_table is None else item_table)
            + self.type_embedding(type_seq)
            + self.channel_embedding(channel_seq)
        )
        return x

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

    def last_scores(
        self,
        item_seq: Tensor,
        type_seq: Tensor,
        channel_seq: Tensor,
        item_table: Tensor | None = None,
        keys: Tensor | None = None,
    ) -> Tensor:
        """Next-item logits [B, n_items + 1] after the last position, as served:
        the similarity scores plus, with the repeat head, the history items' biases.

        Args:
            item_seq: int64 [B, L] left-padded history (also `type_seq`, `channel_seq`).
            item_table: Precomputed `item_table()`.
            keys: Precomputed ``score_keys(item_table()).t()`` [D, n_items + 1].
        """
        table = self.item_table() if item_table is None else item_table
        hidden = self.encode_last(item_seq, type_seq, channel_seq, table)
        if keys is None:
            keys = self.score_keys(table).t()
        scores = self.score_queries(hidden) @ keys
        return self.add_heads(scores, item_seq, hidden)

    def add_heads(self, scores: Tensor, item_seq: Tensor, hidden: Tensor) -> Tensor:
        """Last-position `scores` [B, V] with the heads' sparse terms added (the repeat
        head's on history items, the transition head's on the newest items' successors).
        """
        if self.repeat_head is not None:
            scores = self.repeat_head.add_to_last(scores, item_seq, hidden)
        if self.transition_head is not None:
            scores = self.transition_head.add_to_last(scores, item_seq, hidden)
        return scores

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
        label_smoothing: float = 0.0,
        contrastive_weight: float = 0.0,
    ) -> Tensor:
        """Mean cross-entropy of next-item prediction over non-pad targets.

        Full softmax over the catalog by default. With `n_negatives > 0`, a sampled
        softmax instead: the positive against `n_negatives` items drawn uniformly (shared
        by the batch; accidental hits masked; logQ-corrected, see `uniform_negatives`),
        for catalogs too large for full logits.
        Logits are only computed where `targets != 0`, which skips the (many) padding
        positions of short sequences instead of scoring and then ignoring them.

        Args:
            item_seq: int64 [B, L] inputs.
            type_seq: int64 [B, L] inputs.
            channel_seq: int64 [B, L] inputs.
            targets: int64 [B, L] next item per position (0 = no target).
            n_negatives: 0 = full softmax; otherwise sampled negatives per batch.
            generator: RNG for the negatives (CPU generator).
            label_smoothing: Of the cross-entropy (0 = none).
            contrastive_weight: Weight of the contrastive term (`models.contrastive`:
                a second, differently dropped-out view of each window's last state;
                0 = none).

        Returns:
            Scalar loss.
        """
        table = self.item_table()
        hidden = self.encode(item_seq, type_seq, channel_seq, table)
        loss = self._cross_entropy(
            item_seq, hidden, table, targets, n_negatives, generator, label_smoothing
        )
        if contrastive_weight > 0:
            second = self.encode_last(item_seq, type_seq, channel_seq, table)
            loss = loss + contrastive_weight * dropout_views_infonce(
                hidden[:, -1], second, targets[:, -1]
            )
        return loss

    def _cross_entropy(
        self,
        item_seq: Tensor,
        hidden: Tensor,
        table: Tensor,
        targets: Tensor,
        n_negatives: int,
        generator: torch.Generator | None,
        label_smoothing: float,
    ) -> Tensor:
        """The next-item cross-entropy of `next_item_loss` given the hidden states."""
        mask = targets != 0
        y = targets[mask]
        h, keys = self.score_queries(hidden[mask]), self.score_keys(table)  # [N, D], [V, D]
        transitions: tuple[Tensor, Tensor] | None = None
        if self.transition_head is not None:
            t_items, t_bias = self.transition_head.bias(item_seq, hidden, targets)
            transitions = (t_items[mask], t_bias[mask])  # [N, LAGS * M] each
        if self.repeat_head is not None:
            return self.repeat_head.loss(
                item_seq,
                hidden,
                h,
                keys,
                targets,
                n_items=self.n_items,
                n_negatives=n_negatives,
                generator=generator,
                extra_bias=transitions,
                label_smoothing=label_smoothing,
            )
        if n_negatives <= 0:
            logits = h @ keys.t()
            if transitions is not None:
                logits = logits.scatter_add(1, *transitions)
            return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        negatives, log_inv_q = uniform_negatives(
            self.n_items, n_negatives, generator=generator, device=h.device
        )
        pos = (h * keys[y]).sum(dim=-1, keepdim=True)  # [N, 1]
        neg = h @ keys[negatives].t() + log_inv_q  # [N, S], logQ-corrected
        touched: list[Tensor] = []
        if transitions is not None:
            column = sample_columns(negatives, self.n_items)
            pos, neg, _ = add_sparse_bias(transitions, y, pos, column, neg)
            touched.append(sparse_extras(transitions, y, column, h, keys))
        neg = neg.masked_fill(negatives.unsqueeze(0) == y.unsqueeze(1), MASKED_SCORE)
        logits = torch.cat([pos, neg, *touched], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(y), label_smoothing=label_smoothing)


class ServingRecommender(nn.Module):
    """Export wrapper: score the last position, mask pad/excluded items, return top-K.

    With `explain` (the default) the graph also returns what the scorer needs to say
    why an item is recommended and to score items the graph does not rank itself:

    * ``reason_pos`` int64 [B, K]: for each top-K item, the history position (0-based,
      in the left-padded input) of the history item whose embedding is most similar to
      the candidate's (cosine of item-table rows; padding never wins), and
      ``reason_cos`` float32 [B, K] that cosine;
    * ``user`` float32 [B, D]: the query vector, whose inner product with a row of
      ``score_keys(item_table)`` is that item's similarity logit (used for items
      outside the top-K and for cold items mapped into the item space);
    * ``history_scores`` float32 [B, L]: the final score of each history position's
      item (repeat-head bias included), the one part of a logit `user` cannot give;
    * with the transition head, ``successor_items`` int64 [B, LAGS * M] and
      ``successor_scores`` float32 [B, LAGS * M]: the items the head adds a term to (the
      newest items' successors, 0 = none) and their final scores, the other part.

    Args:
        model: A trained `Recommender` (any architecture) (put into eval mode by the caller).
        max_k: Number of results per row (fixed in the exported graph).
        explain: Add the outputs above (old graphs have only scores and items).
    """

    pad_bias: Tensor  # registered buffer, [n_items + 1] float32
    input_table: Tensor  # registered buffer, [n_items + 1, D]
    output_keys: Tensor  # registered buffer, [D, n_items + 1]
    unit_table: Tensor  # registered buffer, [n_items + 1, D], rows L2-normalised

    def __init__(self, model: Recommender, max_k: int = 100, *, explain: bool = True) -> None:
        super().__init__()
        if not 1 <= max_k <= model.n_items:
            raise ValueError(f"max_k must be in [1, {model.n_items}], got {max_k}")
        self.model = model
        self.max_k = max_k
        self.explain = explain
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
            unit = F.normalize(table, dim=-1)
        self.register_buffer("input_table", table, persistent=False)
        self.register_buffer("output_keys", keys, persistent=False)
        self.register_buffer("unit_table", unit, persistent=False)

    def forward(
        self, item_seq: Tensor, type_seq: Tensor, channel_seq: Tensor, exclude: Tensor
    ) -> tuple[Tensor, ...]:
        """Top-K next items for each row.

        Args:
            item_seq: int64 [B, L] left-padded item indices.
            type_seq: int64 [B, L] event-type indices.
            channel_seq: int64 [B, L] channel indices.
            exclude: int64 [B, E] item indices to mask (0-padded; E >= 1).

        Returns:
            (scores float32 [B, K], items int64 [B, K]), best first; with `explain`
            also reason_pos, reason_cos, user and history_scores (see the class).
        """
        model = self.model
        hidden = model.encode_last(item_seq, type_seq, channel_seq, self.input_table)
        user = model.score_queries(hidden)
        scores = model.add_heads(user @ self.output_keys, item_seq, hidden)
        scores = scores + self.pad_bias
        # zeros_like keeps the exclude shape symbolic in the traced graph.
        masked = torch.zeros_like(exclude, dtype=scores.dtype) + MASKED_SCORE
        ranked = scores.scatter(1, exclude, masked)
        top_scores, top_items = torch.topk(ranked, self.max_k, dim=1)
        if not self.explain:
            return top_scores, top_items
        # Cosine of each candidate to each history item: [B, K, D] x [B, D, L]. K x L x D
        # multiply-adds per row, small beside the catalog product (V x D) for K, L << V.
        candidates = F.embedding(top_items, self.unit_table)
        history = F.embedding(item_seq, self.unit_table)
        cosine = torch.bmm(candidates, history.transpose(1, 2))
        # Padding rows of the unit table are zero; push them below any real cosine (>= -1).
        cosine = cosine + (item_seq == 0).to(cosine.dtype).unsqueeze(1) * -4.0
        # argmax + gather rather than max(): one op for fp16 conversion to keep in fp32.
        reason_pos = cosine.argmax(dim=2)
        reason_cos = cosine.gather(2, reason_pos.unsqueeze(2)).squeeze(2)
        history_scores = torch.gather(scores, 1, item_seq)
        explained = (top_scores, top_items, reason_pos, reason_cos, user, history_scores)
        if model.transition_head is None:
            return explained
        successors = model.transition_head.successors(item_seq)
        return (*explained, successors, torch.gather(scores, 1, successors))
