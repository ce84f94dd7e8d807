"""Full-ranking metrics and baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.encoding import EncodedHistories
from models.metrics import metrics_from_ranks, target_ranks
from models.ranking import (
    CooccurrenceRanker,
    PopularityRanker,
    TransitionRanker,
    evaluate_ranker,
)
from models.splits import EvalCase


def test_target_ranks_break_ties_by_index() -> None:
    scores = np.array([[-np.inf, 1.0, 3.0, 3.0, 0.5]], dtype=np.float32)
    assert target_ranks(scores, np.array([2]))[0] == 0
    assert target_ranks(scores, np.array([3]))[0] == 1  # tie with item 2, which ranks first
    assert target_ranks(scores, np.array([4]))[0] == 3
    assert target_ranks(scores, np.array([0]))[0] > 10**9  # unknown target: always a miss


def test_metrics_from_ranks_match_definitions() -> None:
    ranks = np.array([0, 3, 9, 10, 25, 10**12], dtype=np.int64)
    m = metrics_from_ranks(ranks, ks=(5, 10, 20))
    n = len(ranks)
    assert m["hr@5"] == pytest.approx(2 / n)
    assert m["hr@10"] == pytest.approx(3 / n)
    assert m["hr@20"] == pytest.approx(4 / n)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / n)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 4 + 1 / 10 + 1 / 11) / n)


class _Oracle:
    """Knows the answer: scores the target of each case highest."""

    name = "oracle"
    max_len = 5

    def __init__(self, targets: list[int], n: int) -> None:
        self.targets = targets
        self.n = n
        self.calls = 0

    def score(self, batch: EncodedHistories) -> np.ndarray:
        rows = batch.item_seq.shape[0]
        out = np.zeros((rows, self.n + 1), dtype=np.float32)
        out[np.arange(rows), self.targets[self.calls : self.calls + rows]] = 1.0
        self.calls += rows
        return out


def _case(history: list[str], target: str) -> EvalCase:
    return EvalCase("u", tuple((i, "browse", "web") for i in history), target)


def test_evaluate_ranker_oracle_unknown_and_exclusion() -> None:
    index = {"a": 1, "b": 2, "c": 3}
    cases = [_case(["a"], "b"), _case(["b"], "c"), _case(["c"], "zzz")]
    report = evaluate_ranker(_Oracle([2, 3, 0], 3), cases, index, batch_size=2)
    assert report.metrics["hr@5"] == pytest.approx(2 / 3)
    assert report.metrics["ndcg@10"] == pytest.approx(2 / 3)
    assert report.metrics["unknown_targets"] == pytest.approx(1 / 3)
    assert report.metrics["n_cases"] == 3
    # Excluding history items turns a target that is in the history into a miss.
    repeat = [_case(["b"], "b")]
    excluded = evaluate_ranker(_Oracle([2], 3), repeat, index, exclude_history=True)
    kept = evaluate_ranker(_Oracle([2], 3), repeat, index)
    assert kept.metrics["hr@5"] == 1.0
    assert excluded.metrics["hr@20"] == 0.0


def test_popularity_ranker_and_coverage() -> None:
    index = {"a": 1, "b": 2, "c": 3}
    ranker = PopularityRanker([0, 5, 9, 1])
    report = evaluate_ranker(ranker, [_case(["a"], "b"), _case(["c"], "a")], index, ks=(1, 2))
    assert report.metrics["hr@1"] == 0.5 and report.metrics["hr@2"] == 1.0
    assert report.metrics["coverage@10"] == 1.0  # 3 items, all in a top-10


def test_transition_baseline_learns_successors() -> None:
    # 1 -> 2 -> 3 -> 1 cycle, plus noise item 4 that is popular but never follows 1.
    timelines = [[1, 2, 3, 1, 2, 3], [4, 4, 4, 4], [2, 3, 1]]
    popularity = [0, 3, 3, 3, 4]
    trans = TransitionRanker(timelines, popularity, n_items=4)
    enc = EncodedHistories(
        np.array([[0, 1], [0, 3]]),
        np.zeros((2, 2), np.int64),
        np.zeros((2, 2), np.int64),
        np.array([1, 1]),
    )
    scores = trans.score(enc)
    assert int(np.argmax(scores[0, 1:])) + 1 == 2
    assert int(np.argmax(scores[1, 1:])) + 1 == 1
    cooc = CooccurrenceRanker(timelines, popularity, n_items=4)
    co = cooc.score(enc)
    assert co[0, 2] > co[0, 4] and co[0, 3] > co[0, 4]  # neighbours beat the popular item
