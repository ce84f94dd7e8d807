"""Serving-time scorer over an exported model directory (numpy + onnxruntime only).

This module must stay importable without torch: the stream workers load it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from models.encoding import EncodedHistories, encode_exclude, encode_histories, vocab_index
from models.grouping import length_groups, modelled_grouping_costs, solve_grouping_costs
from models.interactions import HistoryItem
from models.metadata import MASKED_THRESHOLD, MODEL_FILENAME, ModelMetadata
from models.session import (
    Provider,
    ProviderUnavailableError,
    create_session,
)
from models.store import resolve_model_dir

__all__ = [
    "Provider",
    "HistoryItem",
    "OnnxScorer",
    "ProviderUnavailableError",
    "Recommendation",
    "Scorer",
    "Strategy",
]

logger = logging.getLogger("recstream.models.scorer")

#: How a recommendation list was produced.
Strategy = Literal["sequential", "popular"]


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Top-k result for one user.

    Attributes:
        items: (item_id, score) pairs, best first. Scores are model logits for
            "sequential" and interaction counts for "popular"; compare only within a list.
        strategy: "sequential" (transformer) or "popular" (fallback).
    """

    items: list[tuple[str, float]]
    strategy: Strategy


@runtime_checkable
class Scorer(Protocol):
    """What the stream code needs from a recommender model."""

    @property
    def model_version(self) -> str:
        """Version string of the loaded model."""
        ...

    @property
    def provider(self) -> str:
        """Execution provider in use ("cpu" or "cuda")."""
        ...

    def recommend(
        self,
        histories: Sequence[Sequence[HistoryItem]],
        exclude: Sequence[Collection[str]],
        k: int,
    ) -> list[Recommendation]:
        """Recommend k items per history, never returning ids in the matching exclude set."""
        ...


class OnnxScorer:
    """`Scorer` backed by an onnxruntime session over an exported model directory.

    Use `OnnxScorer.load`. The session is created once; `recommend` is safe to call
    from several threads (onnxruntime sessions are thread-safe for `run`).
    """

    def __init__(
        self, session: ort.InferenceSession, metadata: ModelMetadata, provider: str
    ) -> None:
        """Wrap an existing session; prefer `OnnxScorer.load`.

        Args:
            session: Session over the model described by `metadata`.
            metadata: The model's metadata.
            provider: "cpu" or "cuda".
        """
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        # Graphs exported with a dynamic sequence axis accept batches trimmed to their
        # longest history; older graphs with a fixed max_len get full-width rows.
        seq_dim = session.get_inputs()[0].shape[1] if session.get_inputs() else None
        self._dynamic_seq = not isinstance(seq_dim, int)
        # Length grouping (and its calibration) needs trimmable rows; on CUDA one call
        # stays cheaper.
        self._can_group = self._dynamic_seq and provider == "cpu"
        if inputs != metadata.onnx_inputs or outputs != metadata.onnx_outputs:
            raise ValueError(
                f"graph I/O {inputs} -> {outputs} does not match metadata "
                f"{metadata.onnx_inputs} -> {metadata.onnx_outputs}"
            )
        self._session = session
        self._metadata = metadata
        self._provider = provider
        #: Run through an onnxruntime IO binding (inputs bound from host arrays, outputs
        #: fetched to host once) instead of `session.run`. On by default on CUDA; the
        #: results are the same either way.
        self.io_binding = provider == "cuda"
        self._items: list[str | None] = list(metadata.items)
        # Cost model of one inference call (see `models.grouping`), counted until
        # calibrate_grouping() measures it.
        self._row_cost, self._call_cost = modelled_grouping_costs(
            metadata.n_items, metadata.dim, metadata.n_layers
        )
        self._cost_source = "modelled"  # "measured" after calibrate_grouping()
        #: Split CPU batches by history length (see `_length_groups`); False = one call.
        self.group_by_length = True
        # Index -> id as an object array: a whole top-k block maps in one take().
        self._item_ids = np.asarray(self._items, dtype=object)
        self._item_index = vocab_index(metadata.items)
        self._type_index = vocab_index([None, *metadata.event_types])
        self._channel_index = vocab_index([None, *metadata.channels])
        # Popularity order computed once; a stable sort breaks ties by index (= id order).
        counts = np.asarray(metadata.popularity[1:], dtype=np.int64)
        order = np.argsort(-counts, kind="stable")
        self._popular: list[tuple[str, float]] = [
            (str(self._items[int(i) + 1]), float(counts[i])) for i in order
        ]
        # Cold-start lists: recent popularity ("all" and per channel), ties broken by
        # all-time popularity, then index. Empty when the model has none (older exports).
        self._recent: dict[str, list[tuple[str, float]]] = {}
        for key, values in metadata.recent_popularity.items():
            recent = np.asarray(values[1:], dtype=np.int64)
            if recent.any():
                ranked = np.lexsort((np.arange(recent.size), -counts, -recent))
                self._recent[key] = [
                    (str(self._items[int(i) + 1]), float(recent[i])) for i in ranked
                ]

    @classmethod
    def load(
        cls,
        model_dir: Path,
        provider: Provider = "auto",
        intra_op_threads: int = 0,
    ) -> OnnxScorer:
        """Load `model_dir/model.onnx` + `metadata.json` and create the session.

        Args:
            model_dir: Directory written by `models.export.export_onnx`, or a model
                store root (`models.store`), which loads the version named by CURRENT.
            provider: "cpu"; "cuda" (raise if CUDA is not really used); or "auto" (CUDA
                when it really works, else CPU).
            intra_op_threads: onnxruntime intra-op threads (0 = onnxruntime default).

        Returns:
            The ready scorer.

        Raises:
            ProviderUnavailableError: If provider="cuda" and CUDA cannot be used.
            models.metadata.MetadataError: If metadata.json is invalid.
            FileNotFoundError: If a file is missing.
        """
        model_dir = resolve_model_dir(Path(model_dir))
        metadata = ModelMetadata.load(model_dir)
        model_path = model_dir / MODEL_FILENAME
        if not model_path.is_file():
            raise FileNotFoundError(model_path)
        session, used = create_session(model_path, provider, intra_op_threads)
        logger.info(
            "loaded model %s from %s with provider %s (session providers: %s)",
            metadata.model_version,
            model_dir,
            used,
            session.get_providers(),
        )
        return cls(session, metadata, used)

    @property
    def model_version(self) -> str:
        """Version string from metadata.json."""
        return self._metadata.model_version

    @property
    def provider(self) -> str:
        """Execution provider actually in use: "cpu" or "cuda"."""
        return self._provider

    @property
    def metadata(self) -> ModelMetadata:
        """The model's metadata."""
        return self._metadata

    @property
    def max_len(self) -> int:
        """Number of most recent known events the model looks at."""
        return self._metadata.max_len

    @property
    def max_k(self) -> int:
        """Largest supported `k`."""
        return self._metadata.max_k

    @property
    def n_items(self) -> int:
        """Catalog size known to the model (excluding padding)."""
        return self._metadata.n_items

    def warmup(self, batch_sizes: Sequence[int] = (1, 8, 64), calibrate: bool = True) -> None:
        """Run dummy batches so allocations / kernel selection happen before traffic.

        Args:
            batch_sizes: Batch sizes to run once each (full width).
            calibrate: Then measure the length-grouping cost model on this machine
                (`calibrate_grouping`; CPU graphs with a dynamic sequence axis only).
        """
        for batch in batch_sizes:
            self._dummy_run(batch, self.max_len)
        if calibrate and self._can_group and self.max_len > 1:
            self.calibrate_grouping()

    def _dummy_run(self, batch: int, width: int) -> None:
        item_seq = np.ones((batch, width), dtype=np.int64)
        self._run(item_seq, item_seq.copy(), item_seq.copy(), np.zeros((batch, 1), np.int64))

    @property
    def grouping_costs(self) -> dict[str, float | str]:
        """The length-grouping cost model: per-row scoring and per-call costs in units of
        one history position of one row, and whether they were measured or modelled."""
        return {"row": self._row_cost, "call": self._call_cost, "source": self._cost_source}

    @property
    def grouping_shape(self) -> tuple[object, ...]:
        """What the measured grouping costs depend on besides the machine: two scorers
        with the same shape can share them (see `adopt_grouping_costs`)."""
        m = self._metadata
        return (m.n_items, m.dim, m.n_layers, m.max_len, self._provider, self._dynamic_seq)

    def adopt_grouping_costs(
        self, shape: tuple[object, ...], costs: dict[str, float | str]
    ) -> bool:
        """Take costs another scorer measured, if it had the same `grouping_shape`.

        A hot reload of a same-shaped model then needs no new timing while the old
        model is still serving on the same cores (which would skew it).

        Returns:
            Whether the costs were adopted.
        """
        if shape != self.grouping_shape or costs.get("source") != "measured":
            return False
        self._row_cost, self._call_cost = float(costs["row"]), float(costs["call"])
        self._cost_source = "measured"
        return True

    def calibrate_grouping(self, rows: int = 32, repeats: int = 7) -> dict[str, float | str]:
        """Measure the cost model `_length_groups` uses, instead of counting multiply-adds.

        Times (best of `repeats`) one call of 1 row x 1 position, `rows` x 1 and
        `rows` x max_len, and solves for the cost of one position, of one row's item
        scoring and of one call. A measurement that comes out non-positive (a noisy
        machine) keeps the modelled values.

        Returns:
            `grouping_costs` after calibration.
        """

        def best_seconds(batch: int, width: int) -> float:
            self._dummy_run(batch, width)  # first run of a shape is slow in onnxruntime
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                self._dummy_run(batch, width)
                times.append(time.perf_counter() - t0)
            return min(times)  # the least disturbed run: noise only ever adds time

        one = best_seconds(1, 1)
        narrow = best_seconds(rows, 1)
        wide = best_seconds(rows, self.max_len)
        solved = solve_grouping_costs(one, narrow, wide, rows, self.max_len)
        if solved is not None:
            position, row, call = solved
            self._row_cost, self._call_cost, self._cost_source = row, call, "measured"
            logger.info(
                "length-grouping costs measured: per row %.1f, per call %.1f positions "
                "(one position %.2f us)",
                row,
                call,
                position * 1e6,
            )
        else:
            logger.info("length-grouping calibration too noisy; keeping the modelled costs")
        return self.grouping_costs

    def _run(
        self,
        item_seq: np.ndarray,
        type_seq: np.ndarray,
        channel_seq: np.ndarray,
        exclude: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        names = self._metadata.onnx_inputs
        arrays = (item_seq, type_seq, channel_seq, exclude)
        if self.io_binding:
            binding = self._session.io_binding()
            for name, array in zip(names, arrays, strict=True):
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for name in self._metadata.onnx_outputs:
                binding.bind_output(name, "cpu")
            self._session.run_with_iobinding(binding)
            scores, items = binding.copy_outputs_to_cpu()
            return np.asarray(scores), np.asarray(items)
        feeds = dict(zip(names, arrays, strict=True))
        scores, items = self._session.run(self._metadata.onnx_outputs, feeds)
        return np.asarray(scores), np.asarray(items)

    def recommend(
        self,
        histories: Sequence[Sequence[HistoryItem]],
        exclude: Sequence[Collection[str]],
        k: int,
    ) -> list[Recommendation]:
        """Recommend up to k items per history, batching rows into a few inference calls.

        Rows with at least one known item get the transformer's top-k ("sequential").
        They are ranked in one inference call or, on the CPU with a dynamic sequence
        length and `group_by_length` on, sorted by history length and split into up to
        3 calls where the cost model says that is cheaper (see `_length_groups`); with a
        dynamic sequence length each call is padded only to its longest history. The
        other rows get the popularity top-k ("popular") without an inference call:
        recent popularity in the channel of the row's latest event when the model has
        it (see `popular_list`). Items in
        the row's exclude set are never returned. Unknown item ids (in history or
        exclude) are ignored. Fewer than k items are returned only if the catalog minus
        exclusions is that small.

        Args:
            histories: One oldest-first sequence of (item_id, event_type, channel) per user.
            exclude: One collection of item ids to exclude per user (e.g. purchases).
            k: Results per user, 1 <= k <= max_k.

        Returns:
            One `Recommendation` per history, in input order.

        Raises:
            ValueError: If k is out of range or the two sequences differ in length.
        """
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k must be between 1 and max_k={self.max_k}, got {k}")
        if len(exclude) != len(histories):
            raise ValueError(
                f"exclude has {len(exclude)} entries but there are {len(histories)} histories"
            )
        if not histories:
            return []
        enc = encode_histories(
            histories,
            self._item_index,
            self.max_len,
            type_index=self._type_index,
            channel_index=self._channel_index,
        )
        rows = np.flatnonzero(enc.has_known)
        results: list[Recommendation | None] = [None] * len(histories)
        if rows.size:
            for group in self._length_groups(enc.lengths[rows]):
                self._rank_rows(enc, rows[group], exclude, k, results)
        for row, rec in enumerate(results):
            if rec is None:
                channel = histories[row][-1][2] if histories[row] else None
                results[row] = Recommendation(
                    items=self._popular_top(exclude[row], k, channel), strategy="popular"
                )
        return [rec for rec in results if rec is not None]

    def _length_groups(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Split a batch into at most 3 runs of similar history length (CPU only).

        `models.grouping.length_groups` with this scorer's (modelled or measured)
        costs. On CUDA one call stays cheaper.

        Returns:
            Index arrays into ``lengths``, one per inference call.
        """
        if lengths.size < 2 or not self.group_by_length or not self._can_group:
            return [np.arange(lengths.size)]
        return length_groups(lengths, self._row_cost, self._call_cost)

    def _rank_rows(
        self,
        enc: EncodedHistories,
        rows: np.ndarray,
        exclude: Sequence[Collection[str]],
        k: int,
        results: list[Recommendation | None],
    ) -> None:
        """One inference call for ``rows`` of ``enc``; fills their ``results``."""
        excl = encode_exclude([exclude[int(r)] for r in rows], self._item_index)
        # Drop the columns that are padding in every row (left padding: a prefix).
        # Exact, and the transformer's cost is proportional to the length left.
        start = self.max_len - int(enc.lengths[rows].max()) if self._dynamic_seq else 0
        scores, items = self._run(
            enc.item_seq[rows, start:],
            enc.type_seq[rows, start:],
            enc.channel_seq[rows, start:],
            excl,
        )
        # Fast path, vectorised: the graph already masks padding and excluded items,
        # so when a row's first k scores are all real its first k items are the
        # answer. Rows that hit masked scores (tiny catalogs, huge exclusions) take
        # the item-by-item path.
        top_ids = self._item_ids[items[:, :k]].tolist()
        top_scores = scores[:, :k].tolist()
        if scores.shape[1] >= k:
            clean = (scores[:, k - 1] > MASKED_THRESHOLD).tolist()
        else:
            clean = [False] * len(top_ids)
        for j, row in enumerate(rows.tolist()):
            banned = exclude[row]
            if not isinstance(banned, set | frozenset):
                banned = set(banned)
            if clean[j] and banned.isdisjoint(top_ids[j]):
                picked = list(zip(top_ids[j], top_scores[j], strict=True))
                results[row] = Recommendation(items=picked, strategy="sequential")
                continue
            results[row] = Recommendation(
                items=self._pick(scores[j], items[j], banned, k), strategy="sequential"
            )

    def _pick(
        self, scores: np.ndarray, items: np.ndarray, exclude: Collection[str], k: int
    ) -> list[tuple[str, float]]:
        """The first k real, non-excluded items of one graph row, item by item."""
        banned = set(exclude)
        picked: list[tuple[str, float]] = []
        for score, idx in zip(scores.tolist(), items.tolist(), strict=True):
            if score <= MASKED_THRESHOLD:
                break  # sorted descending: only masked items follow
            item = self._items[idx]
            if item is None or item in banned:  # defensive; the graph masks these
                continue
            picked.append((item, float(score)))
            if len(picked) == k:
                break
        return picked

    def popular_list(self, channel: str | None = None) -> list[tuple[str, float]]:
        """The fallback ranking for a user without known items.

        Recent popularity in the user's channel (of their latest event) when the model
        has it, else recent popularity overall, else all-time popularity.
        """
        if channel is not None and channel in self._recent:
            return self._recent[channel]
        return self._recent.get("all", self._popular)

    def _popular_top(
        self, banned: Collection[str], k: int, channel: str | None = None
    ) -> list[tuple[str, float]]:
        picked: list[tuple[str, float]] = []
        for item, count in self.popular_list(channel):
            if item not in banned:
                picked.append((item, count))
                if len(picked) == k:
                    break
        return picked
