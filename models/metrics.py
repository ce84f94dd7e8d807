"""Ranking metrics, computed one way for every caller (numpy only).

Every evaluation in recstream ends here: the full-ranking harness (`models.ranking`),
the quick torch checks (`models.evaluate`) and the online-vs-offline replay
(`deploy.lab.online_eval`). A case has one relevant item; its 0-based rank gives
HR@k (rank < k), NDCG@k (1 / log2(rank + 2) when a hit) and MRR@k (1 / (rank + 1) when
a hit). Keys are spelled lower case: "hr@10", "ndcg@10", "mrr@20".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_KS",
    "UNRANKABLE",
    "list_ranks",
    "metrics_from_ranks",
    "ranking_metrics",
    "target_ranks",
]

#: Cutoffs reported for HR and NDCG.
DEFAULT_KS: tuple[int, ...] = (5, 10, 20)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: The rank of a target that cannot be ranked (unknown, excluded, not in a list):
#: a miss at every cutoff.
UNRANKABLE = np.iinfo(np.int64).max


def target_ranks(scores: FloatArray, targets: IntArray) -> IntArray:
    """0-based rank of each target in its row (ties: lower item index ranks first).

    Args:
        scores: [B, N] scores; padding / excluded columns should hold -inf.
        targets: [B] target column per row; 0 means unknown. Unknown targets and
            targets scored -inf get an "infinite" rank (a miss at every cutoff).

    Returns:
        int64 [B] ranks.
    """
    rows = np.arange(scores.shape[0])
    target_scores = scores[rows, targets][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    better = (scores > target_scores) | ((scores == target_scores) & (cols < targets[:, None]))
    ranks: IntArray = better.sum(axis=1).astype(np.int64)
    # Unknown, excluded or (for top-K-only rankers) unranked targets are misses.
    ranks[(targets == 0) | np.isneginf(target_scores[:, 0])] = UNRANKABLE
    return ranks


def list_ranks(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> IntArray:
    """0-based position of each target in its recommendation list (`UNRANKABLE` if absent).

    Args:
        ranked: Recommended ids per case, best first.
        targets: The relevant item per case.

    Returns:
        int64 [len(targets)] ranks.

    Raises:
        ValueError: If the two sequences differ in length.
    """
    if len(ranked) != len(targets):
        raise ValueError("ranked and targets must have the same length")
    out = np.full(len(targets), UNRANKABLE, dtype=np.int64)
    for row, (items, target) in enumerate(zip(ranked, targets, strict=True)):
        items = list(items)
        if target in items:
            out[row] = items.index(target)
    return out


def metrics_from_ranks(
    ranks: IntArray, ks: Sequence[int] = DEFAULT_KS, mrr_k: int | None = 20
) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item) and MRR@mrr_k from 0-based target ranks.

    Args:
        ranks: int64 [N] ranks (`UNRANKABLE` = a miss).
        ks: HR / NDCG cutoffs.
        mrr_k: MRR cutoff; None leaves MRR out.

    Returns:
        {"hr@k": ..., "ndcg@k": ..., "mrr@mrr_k": ...}, means over the cases (0 if none).
    """
    n = max(1, ranks.size)
    out: dict[str, float] = {}
    safe = np.minimum(ranks, 1 << 40).astype(np.float64)
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.sum() / n)
        out[f"ndcg@{k}"] = float((hit / np.log2(safe + 2.0)).sum() / n)
    if mrr_k is not None:
        out[f"mrr@{mrr_k}"] = float(((ranks < mrr_k) / (safe + 1.0)).sum() / n)
    return out


def ranking_metrics(
    ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int = 10
) -> dict[str, float]:
    """Hit rate and NDCG at k of recommendation lists, one relevant item per case.

    Args:
        ranked: Recommended ids per case, best first (only the first k count).
        targets: The relevant item per case.
        k: Cutoff.

    Returns:
        {"hr@k": ..., "ndcg@k": ..., "n_cases": ...}.
    """
    metrics = metrics_from_ranks(list_ranks(ranked, targets), ks=(k,), mrr_k=None)
    return metrics | {"n_cases": float(len(targets))}
