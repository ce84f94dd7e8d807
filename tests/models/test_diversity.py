"""The per-category cap: the rule the worker applies, and the ranker that measures it."""

from __future__ import annotations

import numpy as np
import pytest

from models.diversity import CategoryCapRanker, cap_per_category
from models.encoding import EncodedHistories, encode_histories
from models.ranking import evaluate_ranker
from models.splits import EvalCase


def test_cap_keeps_the_best_of_each_category_in_order() -> None:
    ranked = ["a1", "a2", "a3", "b1", "x", "a4", "b2", "b3"]
    category = {"a1": "a", "a2": "a", "a3": "a", "a4": "a", "b1": "b", "b2": "b", "b3": "b"}
    assert cap_per_category(ranked, category.get, 2, 5) == ["a1", "a2", "b1", "x", "b2"]
    # Too few other categories: the list is shorter than k.
    assert cap_per_category(ranked, category.get, 1, 5) == ["a1", "b1", "x"]


class _Fixed:
    """Scores column c as 100 - c: item 1 best, then 2, ..."""

    name = "fixed"
    max_len = 5

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def score(self, batch: EncodedHistories) -> np.ndarray:
        row = 100.0 - np.arange(self.n_items + 1, dtype=np.float32)
        return np.tile(row, (batch.item_seq.shape[0], 1))


def test_capped_ranker_ranks_the_capped_list_and_misses_the_rest() -> None:
    n = 50
    index = {f"i{c}": c for c in range(1, n + 1)}
    # Items 1-10 share one category; the rest have none.
    categories = {c: "same" for c in range(1, 11)}
    ranker = CategoryCapRanker(_Fixed(n), categories, cap=2, k=5)
    enc = encode_histories([[("i40", "click", "web")]], index, 5)
    scores = ranker.score(enc)
    order = np.argsort(-scores[0])[:5]
    assert order.tolist() == [1, 2, 11, 12, 13]
    assert np.isneginf(scores[0, 3]) and np.isneginf(scores[0, 20])  # capped / past k
    history = [("i40", "click", "web")]
    cases = [EvalCase("u", history, t) for t in ("i3", "i11", "i2")]
    plain = evaluate_ranker(_Fixed(n), cases, index).metrics
    capped = evaluate_ranker(ranker, cases, index).metrics
    # Uncapped: i3 at rank 3, i11 at 11, i2 at 2. Capped: i3 gone, i11 third, i2 second.
    assert plain["hr@5"] == pytest.approx(2 / 3) and capped["hr@5"] == pytest.approx(2 / 3)
    assert capped["mrr@20"] == pytest.approx((0 + 1 / 3 + 1 / 2) / 3)
    assert plain["mrr@20"] == pytest.approx((1 / 3 + 1 / 11 + 1 / 2) / 3)
