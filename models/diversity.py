"""A cap on items per category in one list: the rule itself, and its offline cost.

`cap_per_category` is the rule the worker applies (``RECSTREAM_CATEGORY_CAP``; the
model ranks 4 x K candidates, the cap picks K from them, best first).
`CategoryCapRanker` applies the same rule to any `Ranker`'s full-catalog scores, so the
quality cost of a cap is measured by the one ranking harness (`recstream evaluate
--category-cap N`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from models.encoding import EncodedHistories
from models.ranking import Ranker

__all__ = ["CANDIDATE_POOL", "CategoryCapRanker", "cap_per_category"]

#: Candidates ranked per list slot before the cap picks (the worker's pool too).
CANDIDATE_POOL = 4

_T = TypeVar("_T")


def cap_per_category(
    ranked: Iterable[_T], category_of: Callable[[_T], str | None], cap: int, k: int
) -> list[_T]:
    """At most `cap` entries of one category, best first, up to `k` entries.

    Entries without a category are not capped. The result is shorter than `k` only when
    `ranked` holds too few entries of other categories.
    """
    taken: dict[str, int] = {}
    out: list[_T] = []
    for entry in ranked:
        category = category_of(entry)
        if category is not None:
            if taken.get(category, 0) >= cap:
                continue
            taken[category] = taken.get(category, 0) + 1
        out.append(entry)
        if len(out) == k:
            break
    return out


class CategoryCapRanker:
    """`ranker` with the per-category cap applied to its top ``CANDIDATE_POOL * k`` items.

    The capped list of `k` keeps its order at the top of the scores; every other item
    scores -inf (a miss at any cutoff, as an item the worker does not send).

    Args:
        ranker: The model or baseline.
        categories: Column -> category (columns without one are not capped).
        cap: Most items of one category in a list.
        k: List length (the worker's ``top_k``).
    """

    def __init__(self, ranker: Ranker, categories: Mapping[int, str], cap: int, k: int = 20):
        if cap < 1 or k < 1:
            raise ValueError("cap and k must be >= 1")
        self.ranker = ranker
        self.categories = categories
        self.cap = cap
        self.k = k
        self.name = f"{ranker.name} (cap {cap}/category)"
        self.max_len = ranker.max_len

    def score(self, batch: EncodedHistories) -> npt.NDArray[np.float32]:
        """Scores where only the capped top-`k` list is finite, best first."""
        scores = np.asarray(self.ranker.score(batch), dtype=np.float32)
        scores = scores.copy()
        scores[:, 0] = -np.inf
        pool = min(CANDIDATE_POOL * self.k, scores.shape[1] - 1)
        out = np.full_like(scores, -np.inf)
        top = np.argpartition(-scores, pool - 1, axis=1)[:, :pool]
        for row in range(scores.shape[0]):
            cols = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
            kept = cap_per_category(cols.tolist(), self.categories.get, self.cap, self.k)
            out[row, kept] = np.arange(len(kept), 0, -1, dtype=np.float32)
        return out
