"""Transition-prior head: the item-transition baseline fused into the logits, learned.

A first-order Markov chain over item transitions is the strongest simple baseline on
the benchmark files (docs/BENCHMARKS.md): it memorises rare exact pairs that an
embedding model smooths away. Instead of losing to it at the top of the list, the model
adds it as a gated residual: for the last `LAGS` history items x_0 (newest), x_1, x_2
and every item b among the `NEIGHBOURS` most frequent successors of x_j,

    bias(b) = sum_j a_j(h) * log(1 + P(b | x_j) / EPS)

where P is the transition probability counted on the training timelines and a(h) =
``gate(h)`` is a linear function of the sequence representation, trained end to end
with the next-item cross-entropy (so the model decides per sequence how far to trust
the chain). Items outside those neighbour lists are scored exactly as without the head.

Counting the pairs on the very data the loss is computed on would leak the answer: a
pair seen once is always "known" in training and never at test time. Training therefore
uses leave-one-out counts: at a position whose newest item is x_0 and whose target is y,
the pair (x_0, y) counts one less, and x_0's total one less, which is what the chain
would have counted without this occurrence.

The same head scores in training (every position), the offline ranker and the exported
ONNX graph (the last position; Gather, Pad and a ScatterElements-add).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812 - conventional alias

__all__ = ["EPS", "LAGS", "NEIGHBOURS", "TransitionHead", "transition_table"]

#: Successors kept per item (the most frequent ones): 20 cover every successor of 99 %
#: of Beauty's items, and the table stays 20 x 12 bytes per catalog item.
NEIGHBOURS = 20
#: History items whose successors are scored (the newest first), as the baseline's.
LAGS = 3
#: Probability scale of the feature log(1 + P / EPS): compresses P in [0, 1] to
#: [0, 4.6], so that a pair seen once among 100 successors still counts (log 2).
EPS = 0.01


def transition_table(
    timelines: Iterable[Sequence[int]], n_items: int, neighbours: int = NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `neighbours` most frequent successors of every item, with their counts.

    Args:
        timelines: Oldest-first item indices (1..n_items) per user (training data).
        n_items: Catalog size without padding.
        neighbours: Successors kept per item.

    Returns:
        (items int64 [n_items + 1, M], counts float32 [n_items + 1, M], totals float32
        [n_items + 1]): successor indices (0 = none) and their pair counts, most frequent
        first (ties by index), and each item's number of transitions (all successors,
        not only the kept ones). Row 0 (padding) is empty.
    """
    src_parts: list[np.ndarray] = []
    dst_parts: list[np.ndarray] = []
    for seq in timelines:
        arr = np.asarray(seq, dtype=np.int64)
        if arr.size >= 2:
            src_parts.append(arr[:-1])
            dst_parts.append(arr[1:])
    n = n_items + 1
    items = np.zeros((n, neighbours), dtype=np.int64)
    counts = np.zeros((n, neighbours), dtype=np.float32)
    totals = np.zeros(n, dtype=np.float32)
    if not src_parts:
        return items, counts, totals
    src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
    pairs, pair_counts = np.unique(src * n + dst, return_counts=True)
    rows, cols = pairs // n, pairs % n
    totals[:] = np.bincount(rows, weights=pair_counts, minlength=n)
    # Most frequent first within each row: sort by (row, -count, col).
    order = np.lexsort((cols, -pair_counts, rows))
    rows, cols, pair_counts = rows[order], cols[order], pair_counts[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(rows.size) - starts[rows]
    keep = rank < neighbours
    items[rows[keep], rank[keep]] = cols[keep]
    counts[rows[keep], rank[keep]] = pair_counts[keep]
    return items, counts, totals


class TransitionHead(nn.Module):
    """Learned fusion of the item-transition prior (see the module docstring).

    The table is a buffer (saved with the weights): `fit` fills it from training
    timelines before training; a checkpoint restores it.

    Args:
        dim: Width of the sequence representation.
        n_items: Catalog size without padding.
    """

    next_items: Tensor  # registered buffer, int64 [n_items + 1, NEIGHBOURS]
    next_counts: Tensor  # registered buffer, float32 [n_items + 1, NEIGHBOURS]
    totals: Tensor  # registered buffer, float32 [n_items + 1]

    def __init__(self, dim: int, n_items: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, LAGS)
        n = n_items + 1
        self.register_buffer("next_items", torch.zeros(n, NEIGHBOURS, dtype=torch.long))
        self.register_buffer("next_counts", torch.zeros(n, NEIGHBOURS))
        self.register_buffer("totals", torch.zeros(n))

    def reset_gate(self) -> None:
        """Start trusting the chain like the baseline does: weights 1, 1/2, 1/4 by lag."""
        with torch.no_grad():
            nn.init.zeros_(self.gate.weight)
            self.gate.bias.copy_(torch.tensor([0.5**j for j in range(LAGS)]))

    def fit(self, timelines: Iterable[Sequence[int]]) -> None:
        """Count the transitions of `timelines` (oldest-first item indices per user)."""
        items, counts, totals = transition_table(timelines, self.totals.numel() - 1)
        self.next_items.copy_(torch.from_numpy(items))
        self.next_counts.copy_(torch.from_numpy(counts))
        self.totals.copy_(torch.from_numpy(totals))

    def _lagged(self, item_seq: Tensor, n_queries: int) -> Tensor:
        """[B, T, LAGS] the newest, second and third item up to each of the last
        `n_queries` positions (0 where the history is shorter)."""
        length = item_seq.shape[1]
        padded = F.pad(item_seq, (LAGS - 1, 0))  # [B, L + LAGS - 1]
        lags = [
            padded[:, LAGS - 1 - j : LAGS - 1 - j + length][:, length - n_queries :]
            for j in range(LAGS)
        ]
        return torch.stack(lags, dim=2)

    def bias(
        self, item_seq: Tensor, hidden: Tensor, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Candidate items and their biases for each query position.

        Args:
            item_seq: int64 [B, L] left-padded history.
            hidden: [B, T, D] representations of the last T positions.
            targets: int64 [B, T] the items the positions are trained to predict (training
                only): their pair with the newest item counts leave-one-out.

        Returns:
            (items int64 [B, T, LAGS * M], bias [B, T, LAGS * M]): a scatter-add of `bias`
            at `items` adds the head's term to the logits (an item can appear under
            several lags: the adds sum up; index 0 carries zero bias).
        """
        lagged = self._lagged(item_seq, hidden.shape[1])  # [B, T, LAGS]
        items = self.next_items[lagged]  # [B, T, LAGS, M]
        counts = self.next_counts[lagged]
        totals = self.totals[lagged].unsqueeze(-1)  # [B, T, LAGS, 1]
        if targets is not None:
            newest = torch.zeros_like(counts)
            newest[:, :, 0, :] = 1.0
            own = (items == targets.unsqueeze(-1).unsqueeze(-1)).to(counts.dtype) * newest
            counts = counts - own
            totals = totals - newest[..., :1] * (targets != 0).unsqueeze(-1).unsqueeze(-1)
        prob = counts / totals.clamp(min=1.0)
        feature = torch.log1p(prob.clamp(min=0.0) * (1.0 / EPS))  # [B, T, LAGS, M]
        weight = self.gate(hidden).unsqueeze(-1)  # [B, T, LAGS, 1]
        bias = feature * weight
        flat = (*items.shape[:2], -1)
        return items.reshape(flat), bias.reshape(flat)

    def successors(self, item_seq: Tensor) -> Tensor:
        """int64 [B, LAGS * M]: the items the last position's term goes to (0 = none)."""
        return self.next_items[self._lagged(item_seq, 1)[:, 0]].flatten(1)

    def add_to_last(self, scores: Tensor, item_seq: Tensor, hidden: Tensor) -> Tensor:
        """`scores` [B, V] of the last position with the head's term added.

        Args:
            scores: Logits over the catalog [B, n_items + 1].
            item_seq: int64 [B, L] history.
            hidden: [B, D] last-position representation.
        """
        items, bias = self.bias(item_seq, hidden.unsqueeze(1))
        return scores.scatter_add(1, items[:, 0], bias[:, 0])
