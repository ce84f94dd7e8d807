"""Repeat-aware output head: learn when a shopper goes back to an item they have seen.

Next-item models spend top slots on the items a user already has: on Amazon Beauty no
test target is in its user's history, while on DIGINETICA a fifth of them are (a shopper
looks at a product again). Excluding the history is right for the first and wrong for
the second, so the choice is learned instead (the idea of RepeatNet, Ren et al., AAAI
2019, in a form that costs a scatter): every item of the history gets an additive
bias on its logit,

    bias(t, s) = gate(h_t) + recency[t - s] + count_weight * log(count of the item up to t)

where `h_t` is the sequence representation at the query position t, s the position of
the item's most recent occurrence, and the three terms are trained end to end with
the next-item cross-entropy. A strongly negative bias is "exclude what they have", a
positive one "show it again"; the gate makes it depend on the sequence. Items outside the
history are scored exactly as without the head.

The same `RepeatHead` is used by training (every position), the offline ranker and the
exported ONNX graph (the last position; a ScatterElements-add, opset >= 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.metadata import MASKED_SCORE

__all__ = [
    "RepeatHead",
    "add_sparse_bias",
    "sample_columns",
    "sparse_extras",
    "uniform_negatives",
]


def uniform_negatives(
    n_items: int,
    n_negatives: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """The sampled softmax's negatives and their logQ correction, for both losses.

    `n_negatives` uniform draws (with replacement) from the items 1..`n_items`, shared
    by the batch, each distinct item kept once. An item is in the sample with chance
    q = 1 - (1 - 1/n_items) ** n_negatives, so each stands for 1/q catalog items: adding
    log(1/q) to its logit makes the sample's normaliser estimate the full softmax's
    (without it the always-present target is over-weighted against the catalog). When
    the sample covers the catalog, q is 1 and the loss is the full softmax's.

    Returns:
        int64 [S] distinct item indices (on `device`) and the scalar log(1/q).
    """
    draws = torch.randint(1, n_items + 1, (n_negatives,), generator=generator)
    negatives = torch.unique(draws.to(device))
    log_miss = n_negatives * torch.log1p(torch.tensor(-1.0 / n_items, device=negatives.device))
    return negatives, -torch.log1p(-torch.exp(log_miss))


class RepeatHead(nn.Module):
    """History-item logit bias (see the module docstring).

    Args:
        dim: Width of the sequence representation.
        max_len: Longest history (one recency weight per distance).
    """

    positions: Tensor  # registered buffer, [max_len] int64

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.gate = nn.Linear(dim, 1)
        self.recency = nn.Parameter(torch.zeros(max_len))
        self.count_weight = nn.Parameter(torch.zeros(()))
        self.register_buffer("positions", torch.arange(max_len), persistent=False)

    def bias(self, item_seq: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Bias of each history position for each query position.

        Args:
            item_seq: int64 [B, L] left-padded history.
            hidden: [B, T, D] representations of the last T positions (T = L in
                training, 1 when serving).

        Returns:
            (bias [B, T, L], recent bool [B, T, L]): `recent[b, t, s]` is True iff
            position s holds a real item, is visible from query t (s <= t) and is that
            item's most recent occurrence up to t; `bias` is zero where it is False, so
            a scatter-add of `bias` at `item_seq` adds each history item's bias once.
        """
        batch, length = item_seq.shape
        n_queries = hidden.shape[1]
        s = self.positions[:length]  # [L]
        q = s[length - n_queries :]  # [T] query positions
        same = item_seq.unsqueeze(2) == item_seq.unsqueeze(1)  # [B, s, s']
        after = s.view(1, 1, -1) > s.view(1, -1, 1)  # s' > s
        # Position of the next occurrence of the item at s (L when none).
        later = torch.where(same & after, s.view(1, 1, -1).expand(batch, length, length), length)
        next_pos = later.amin(dim=2)  # [B, L]
        visible = s.view(1, -1) <= q.view(-1, 1)  # [T, L]
        recent = (
            visible.unsqueeze(0)
            & (next_pos.unsqueeze(1) > q.view(1, -1, 1))
            & (item_seq != 0).unsqueeze(1)
        )  # [B, T, L]
        # Occurrences of the item at s among positions <= t.
        counts = same.to(hidden.dtype).cumsum(dim=2)[:, :, length - n_queries :]  # [B, s, T]
        distance = (q.view(-1, 1) - s.view(1, -1)).clamp(0, self.max_len - 1)  # [T, L]
        bias = (
            self.gate(hidden)
            + self.recency[distance].unsqueeze(0)
            + self.count_weight * torch.log(counts.transpose(1, 2).clamp(min=1.0))
        )
        return bias * recent.to(bias.dtype), recent

    def add_to_last(self, scores: Tensor, item_seq: Tensor, hidden: Tensor) -> Tensor:
        """`scores` [B, V] of the last position with each history item's bias added.

        Args:
            scores: Logits over the catalog [B, n_items + 1].
            item_seq: int64 [B, L] history.
            hidden: [B, D] last-position representation.
        """
        bias, _ = self.bias(item_seq, hidden.unsqueeze(1))
        return scores.scatter_add(1, item_seq, bias[:, 0, :])

    def loss(
        self,
        item_seq: Tensor,
        hidden: Tensor,
        queries: Tensor,
        keys: Tensor,
        targets: Tensor,
        *,
        n_items: int,
        n_negatives: int = 0,
        generator: torch.Generator | None = None,
        extra_bias: tuple[Tensor, Tensor] | None = None,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        """Next-item cross-entropy with history biases, over the non-pad targets.

        Args:
            item_seq: int64 [B, L] inputs.
            hidden: [B, L, D] representations at every position.
            queries: [N, D] query vectors of the target positions (`targets != 0`).
            keys: [V, D] item keys.
            targets: int64 [B, L] next item per position (0 = none).
            n_items: Catalog size (without padding).
            n_negatives: 0 = full softmax; N = the positive against N shared uniform
                negatives plus the history items (each once, with their bias).
            generator: RNG of the negatives.
            extra_bias: Another head's sparse term for the target positions, (items
                int64 [N, X], bias [N, X]) scatter-added to the logits (see
                `models.transitions`).
            label_smoothing: Of the cross-entropy (0 = none).
        """
        bias_all, recent_all = self.bias(item_seq, hidden)
        mask = targets != 0
        y = targets[mask]
        history = item_seq.unsqueeze(1).expand(-1, item_seq.shape[1], -1)[mask]  # [N, L]
        bias, recent = bias_all[mask], recent_all[mask]
        if n_negatives <= 0:
            logits = (queries @ keys.t()).scatter_add(1, history, bias)
            if extra_bias is not None:
                logits = logits.scatter_add(1, *extra_bias)
            return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        negatives, log_inv_q = uniform_negatives(
            n_items, n_negatives, generator=generator, device=queries.device
        )
        is_target = history == y.unsqueeze(1)
        pos = (queries * keys[y]).sum(-1, keepdim=True) + (bias * is_target).sum(-1, keepdim=True)
        # Negatives that are history items carry their bias; the other history items
        # join as extra candidates, so every history item is scored once. The extra
        # candidates' similarity is detached: the encoder learns what it learns without
        # the head (where a sampled softmax rarely draws a history item), and the head
        # learns how far to move the history items from there.
        column = sample_columns(negatives, n_items)
        neg_col = column[history]
        sampled = neg_col >= 0
        # logQ correction (`uniform_negatives`): the target and the history items are
        # always candidates, a sampled negative stands for 1/q catalog items. Without
        # it the softmax over the sample gives the always-present history items the
        # wrong weight against the catalog, and the head learns a bias that is wrong
        # when serving ranks the whole catalog.
        neg = (queries @ keys[negatives].t() + log_inv_q).scatter_add(
            1,
            neg_col.clamp(min=0),
            bias * sampled.to(bias.dtype) - log_inv_q * sampled.to(bias.dtype),
        )
        neg = neg.masked_fill(negatives.unsqueeze(0) == y.unsqueeze(1), MASKED_SCORE)
        extra = (queries.detach().unsqueeze(1) * keys[history].detach()).sum(-1) + bias
        not_shown = ~recent | is_target | sampled
        touched: list[Tensor] = []
        if extra_bias is not None:
            pos, neg, on_history = add_sparse_bias(extra_bias, y, pos, column, neg, history)
            assert on_history is not None  # noqa: S101 - history given
            extra = extra + on_history
            # The history items that are candidates here are not candidates twice.
            shown = history.masked_fill(not_shown, -1)
            touched.append(sparse_extras(extra_bias, y, column, queries, keys, shown))
        extra = extra.masked_fill(not_shown, MASKED_SCORE)
        logits = torch.cat([pos, neg, extra, *touched], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(y), label_smoothing=label_smoothing)


def sample_columns(negatives: Tensor, n_items: int) -> Tensor:
    """int64 [n_items + 1]: each item's column among the sampled `negatives`, -1 if none."""
    column = torch.full((n_items + 1,), -1, dtype=torch.long, device=negatives.device)
    column[negatives] = torch.arange(negatives.numel(), device=negatives.device)
    return column


def add_sparse_bias(
    sparse: tuple[Tensor, Tensor],
    y: Tensor,
    pos: Tensor,
    column: Tensor,
    neg: Tensor,
    history: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A sparse logit term (items [N, X], bias [N, X]) added to the sampled softmax's
    candidates: the positive `pos` [N, 1], the sampled negatives `neg` [N, S] (found
    through `column`, item -> sample column or -1) and, given, the history
    candidates [N, L] (returned as the third value, summed per history item).

    The items it touches that are none of these candidates join through
    `sparse_extras`.
    """
    items, bias = sparse
    pos = pos + (bias * (items == y.unsqueeze(1)).to(bias.dtype)).sum(-1, keepdim=True)
    col = column[items]
    hit = (col >= 0).to(bias.dtype)
    neg = neg.scatter_add(1, col.clamp(min=0), bias * hit)
    extra = None
    if history is not None:
        match = (history.unsqueeze(2) == items.unsqueeze(1)).to(bias.dtype)  # [N, L, X]
        extra = (match * bias.unsqueeze(1)).sum(-1)
    return pos, neg, extra


def sparse_extras(
    sparse: tuple[Tensor, Tensor],
    y: Tensor,
    column: Tensor,
    queries: Tensor,
    keys: Tensor,
    shown: Tensor | None = None,
) -> Tensor:
    """The items a sparse logit term touches, as extra sampled-softmax candidates.

    A term that raises a handful of items (a chain's successors) is rarely met by a
    uniform sample: without these candidates the loss would reward it whenever it
    raises the target and almost never charge it for raising the others, and serving,
    which ranks them all, would over-trust it. So, like the history items of
    `RepeatHead.loss`, every touched item that is not already a candidate (the target,
    a sampled negative, or an item of `shown`) joins once, with its similarity
    (detached: the encoder learns what it would without the term) plus its summed term.

    Args:
        sparse: (items int64 [N, X], bias [N, X]); an item may repeat (its biases sum),
            0 = none.
        y: int64 [N] targets.
        column: int64 [n_items + 1] sample column of each item, -1 when not sampled.
        queries: [N, D] query vectors; keys: [V, D] item keys.
        shown: int64 [N, L] items that are candidates already (-1 = none).

    Returns:
        [N, X] logits, `MASKED_SCORE` where the entry is no extra candidate.
    """
    items, bias = sparse
    same = items.unsqueeze(2) == items.unsqueeze(1)  # [N, X, X]
    total = (same.to(bias.dtype) * bias.unsqueeze(1)).sum(-1)  # each item's summed term
    earlier = torch.ones(items.shape[1], items.shape[1], dtype=torch.bool, device=items.device)
    repeated = (same & earlier.tril(-1)).any(-1)  # the same item at an earlier entry
    keep = (items != 0) & ~repeated & (items != y.unsqueeze(1)) & (column[items] < 0)
    if shown is not None:
        keep = keep & ~(items.unsqueeze(2) == shown.unsqueeze(1)).any(-1)
    similarity = (queries.detach().unsqueeze(1) * keys[items].detach()).sum(-1)
    return (similarity + total).masked_fill(~keep, MASKED_SCORE)
