"""Full-ranking evaluation harness and non-neural baselines (numpy only).

Every model is evaluated the same way: score **all** catalog items for each case, find
the rank of the held-out item (ties broken by item index, i.e. like a stable sort), and
report HR@k, NDCG@k, MRR@20 (computed by `models.metrics`) and catalog coverage@10.
Nothing is sampled. Items in the history are not excluded unless asked (the published
protocols do not exclude them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from models.encoding import EncodedHistories, encode_histories
from models.metadata import MASKED_THRESHOLD, MODEL_FILENAME, ModelMetadata
from models.metrics import DEFAULT_KS, metrics_from_ranks, target_ranks
from models.splits import EvalCase

__all__ = [
    "CooccurrenceRanker",
    "OnnxRanker",
    "PopularityRanker",
    "Ranker",
    "RankingReport",
    "TransitionRanker",
    "evaluate_ranker",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class Ranker(Protocol):
    """Anything that scores the whole catalog for a batch of encoded histories."""

    name: str
    max_len: int

    def score(self, batch: EncodedHistories) -> FloatArray:
        """Scores [B, n_items + 1] (column 0 = padding, ignored) for each history."""
        ...


@dataclass(frozen=True, slots=True)
class RankingReport:
    """Result of `evaluate_ranker`.

    Attributes:
        name: Ranker name.
        metrics: "hr@k", "ndcg@k", "mrr@20", "coverage@10", "n_cases",
            "unknown_targets" (share of targets outside the vocabulary).
        seconds: Wall time of scoring and ranking.
    """

    name: str
    metrics: dict[str, float]
    seconds: float


def evaluate_ranker(
    ranker: Ranker,
    cases: Sequence[EvalCase],
    item_index: Mapping[str, int],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 512,
    exclude_history: bool = False,
) -> RankingReport:
    """Full-ranking metrics of `ranker` on `cases`.

    Args:
        ranker: The model or baseline.
        cases: Held-out cases.
        item_index: External item id -> column (the ranker's vocabulary).
        ks: HR / NDCG cutoffs.
        batch_size: Cases per scoring call.
        exclude_history: Mask items of the history before ranking.

    Returns:
        The report (empty `cases` give zeros).
    """
    t0 = time.perf_counter()
    n_items = max(item_index.values(), default=0)
    ranks: list[IntArray] = []
    top10: set[int] = set()
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        enc = encode_histories([c.history for c in chunk], item_index, ranker.max_len)
        scores = np.array(ranker.score(enc), dtype=np.float32, copy=True)
        scores[:, 0] = -np.inf
        if exclude_history:
            for row, case in enumerate(chunk):
                cols = [i for it, _, _ in case.history if (i := item_index.get(it)) is not None]
                scores[row, cols] = -np.inf
        targets = np.asarray([item_index.get(c.target, 0) for c in chunk], dtype=np.int64)
        ranks.append(target_ranks(scores, targets))
        k = min(10, n_items)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k > 0 else scores[:, :0]
        top10.update(int(i) for i in np.unique(top))
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    metrics = metrics_from_ranks(all_ranks, ks)
    top10.discard(0)
    metrics["coverage@10"] = len(top10) / max(1, n_items)
    metrics["n_cases"] = float(len(cases))
    unknown = sum(1 for c in cases if c.target not in item_index)
    metrics["unknown_targets"] = unknown / max(1, len(cases))
    return RankingReport(ranker.name, metrics, time.perf_counter() - t0)


class PopularityRanker:
    """Most popular items in the training data, the same list for everyone.

    Args:
        popularity: Count per item index (index 0 = padding).
        name: Report name.
    """

    max_len = 1

    def __init__(self, popularity: Sequence[int], name: str = "most-popular") -> None:
        self.name = name
        self._scores = np.asarray(popularity, dtype=np.float32)

    def score(self, batch: EncodedHistories) -> FloatArray:
        """Popularity for every row."""
        return np.broadcast_to(self._scores, (batch.item_seq.shape[0], self._scores.size))


class _SparseRows:
    """Row-normalised sparse item x item counts in CSR form (numpy only)."""

    def __init__(self, src: IntArray, dst: IntArray, weight: FloatArray, n: int) -> None:
        key = src * n + dst
        uniq, inverse = np.unique(key, return_inverse=True)
        values = np.bincount(inverse, weights=weight).astype(np.float32)
        rows = (uniq // n).astype(np.int64)
        self.cols = (uniq % n).astype(np.int64)
        totals = np.bincount(rows, weights=values, minlength=n).astype(np.float32)
        self.values = values / np.maximum(totals[rows], 1e-12)
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=self.indptr[1:])

    def add_row(self, out: FloatArray, row: int, weight: float) -> None:
        lo, hi = self.indptr[row], self.indptr[row + 1]
        out[self.cols[lo:hi]] += weight * self.values[lo:hi]


class _NeighbourRanker:
    """Shared scoring: decayed sum of the neighbour rows of the last `order` items."""

    name: str
    max_len: int

    def __init__(self, rows: _SparseRows, popularity: Sequence[int], decay: float) -> None:
        self._rows = rows
        pop = np.asarray(popularity, dtype=np.float32)
        # Tiny popularity prior: breaks ties and fills lists for items without neighbours.
        self._prior = 1e-6 * pop / max(1.0, float(pop.max(initial=0.0)))
        self._decay = decay

    def score(self, batch: EncodedHistories) -> FloatArray:
        """Neighbour scores of the most recent items plus a popularity prior."""
        out = np.tile(self._prior, (batch.item_seq.shape[0], 1))
        for row in range(batch.item_seq.shape[0]):
            recent = [int(i) for i in batch.item_seq[row, ::-1] if i != 0][: self.max_len]
            for j, item in enumerate(recent):
                self._rows.add_row(out[row], item, self._decay**j)
        return out


def _pairs(
    timelines: Iterable[Sequence[int]], window: int, symmetric: bool
) -> tuple[IntArray, IntArray, FloatArray]:
    src: list[int] = []
    dst: list[int] = []
    weight: list[float] = []
    for seq in timelines:
        for i, a in enumerate(seq):
            for d in range(1, window + 1):
                if i + d >= len(seq):
                    break
                b = seq[i + d]
                src.append(a)
                dst.append(b)
                weight.append(1.0 / d)
                if symmetric:
                    src.append(b)
                    dst.append(a)
                    weight.append(1.0 / d)
    return (
        np.asarray(src, dtype=np.int64),
        np.asarray(dst, dtype=np.int64),
        np.asarray(weight, dtype=np.float32),
    )


class TransitionRanker(_NeighbourRanker):
    """First-order item-to-item transitions (a Markov chain) over training timelines.

    Score(j) = sum over the last `order` history items i (most recent first, weight
    decay^position) of P(next = j | current = i), plus a tiny popularity prior.

    Args:
        timelines: Oldest-first item indices per user (training data only).
        popularity: Count per item index.
        n_items: Catalog size (without padding).
        order: History items used.
        decay: Weight decay per step back in the history.
    """

    def __init__(
        self,
        timelines: Iterable[Sequence[int]],
        popularity: Sequence[int],
        n_items: int,
        *,
        order: int = 3,
        decay: float = 0.5,
    ) -> None:
        src, dst, w = _pairs(timelines, window=1, symmetric=False)
        super().__init__(_SparseRows(src, dst, w, n_items + 1), popularity, decay)
        self.name = "item-transitions"
        self.max_len = order


class CooccurrenceRanker(_NeighbourRanker):
    """Symmetric item co-occurrence within `window` steps (weight 1/distance), item-KNN style.

    Args:
        timelines: Oldest-first item indices per user (training data only).
        popularity: Count per item index.
        n_items: Catalog size (without padding).
        window: Max distance between co-occurring items.
        order: History items used.
        decay: Weight decay per step back in the history.
    """

    def __init__(
        self,
        timelines: Iterable[Sequence[int]],
        popularity: Sequence[int],
        n_items: int,
        *,
        window: int = 3,
        order: int = 3,
        decay: float = 0.5,
    ) -> None:
        src, dst, w = _pairs(timelines, window=window, symmetric=True)
        super().__init__(_SparseRows(src, dst, w, n_items + 1), popularity, decay)
        self.name = "item-cooccurrence"
        self.max_len = order


class OnnxRanker:
    """Rank with an exported graph (any variant), to measure what export changes.

    The graph returns only its top `max_k` items, so scores outside them are -inf: the
    ranks of targets inside the top `max_k` are exact, the others are misses, which is
    exact for every metric with a cutoff <= max_k (all reported ones when max_k >= 20).

    Args:
        model_dir: Exported model directory.
        threads: onnxruntime intra-op threads.
        name: Report name (default "onnx-<variant>").
    """

    def __init__(self, model_dir: Path, threads: int = 0, name: str | None = None) -> None:
        from models.session import create_session  # local: onnxruntime only when used

        model_dir = Path(model_dir)
        self.metadata = ModelMetadata.load(model_dir)
        self._session, _ = create_session(model_dir / MODEL_FILENAME, "cpu", threads)
        self.name = name or f"onnx-{self.metadata.variant}"
        self.max_len = self.metadata.max_len
        self._width = self.metadata.n_items + 1

    def score(self, batch: EncodedHistories) -> FloatArray:
        """Top-K scores scattered into a [B, n_items + 1] matrix of -inf."""
        b = batch.item_seq.shape[0]
        feeds = dict(
            zip(
                self.metadata.onnx_inputs,
                (batch.item_seq, batch.type_seq, batch.channel_seq, np.zeros((b, 1), np.int64)),
                strict=True,
            )
        )
        scores, items = self._session.run(self.metadata.onnx_outputs[:2], feeds)
        values = np.asarray(scores, dtype=np.float32)
        values[values <= MASKED_THRESHOLD] = -np.inf  # masked by the graph (pad / excluded)
        out = np.full((b, self._width), -np.inf, dtype=np.float32)
        np.put_along_axis(out, np.asarray(items), values, axis=1)
        out[:, 0] = -np.inf  # padding is never a result
        return out
