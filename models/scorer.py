"""Serving-time scorer over an exported model directory (numpy + onnxruntime only).

This module must stay importable without torch: the stream workers load it.

Beyond the graph's top-K, the scorer explains each item (`Reason`), fuses a search
intent with the sequence scores and scores cold items (in an attached
`models.catalog.ItemTextIndex` but not in the model) through their text; see
`OnnxScorer.recommend` and docs/SEMANTIC.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from models.catalog import ItemTextIndex
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
    "CATALOG_REFRESH_S",
    "COLD_MIN_FIT",
    "DEFAULT_SEARCH_WEIGHT",
    "HistoryItem",
    "Intent",
    "OnnxScorer",
    "Provider",
    "ProviderUnavailableError",
    "Reason",
    "ReasonCode",
    "Recommendation",
    "Scorer",
    "Strategy",
]

logger = logging.getLogger("recstream.models.scorer")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: How a recommendation list was produced.
Strategy = Literal["sequential", "popular"]

#: Why an item is in a list (see `Reason`).
ReasonCode = Literal["similar_to_viewed", "bought_together", "matches_search", "popular"]

#: The fused intent weight `OnnxScorer.search_weight` starts with: the intent term is
#: ``search_weight * intent.weight * std(row's logits) * tanh(max(z, 0))`` with z the
#: item's cos(intent, text) standardised over the catalog (see `_intent_shape`).
#: Selected on the validation split of the synthetic shop (`models.semantic_eval`,
#: ``recstream bench semantic``; docs/BENCHMARKS.md has the numbers).
DEFAULT_SEARCH_WEIGHT = 3.0

#: Ridge penalty of the text -> item-space map for cold items, relative to the mean
#: per-dimension variance of the text vectors (see `_fit_text_map`). Selected on the
#: validation split with `COLD_SCALE` (docs/SEMANTIC.md).
COLD_RIDGE = 10.0
#: Cold items' logits are this share of ``user . mapped key``: a mapped key is the
#: typical item of its text, which every user of its category scores high, while a
#: cold item has earned no such place. Selected on the validation split.
COLD_SCALE = 1.0

#: Fewest vocabulary items with text the cold-item map is fitted on
#: (`OnnxScorer.min_cold_fit`): a ridge map fitted on a handful of items is mostly its
#: penalty, and would place every cold item near the mean item. The ridge is well posed
#: with fewer items than text dimensions (a small shop of a hundred items with 384-wide
#: MiniLM text is fitted; the e2e loop's 120-item shop recommends its new item). Below
#: it cold items are not scored at all (not recommendable, no intent term either):
#: without a sequence part their fused score would have no scale against the logits.
COLD_MIN_FIT = 50

#: Seconds a catalog view is kept after the index changed (`OnnxScorer.catalog_refresh_s`):
#: a live catalog changes record by record, and the view (one gather of the text matrix
#: and the cold-item map) is rebuilt in the inference thread, so a burst of upserts
#: costs one rebuild per this many seconds, not one per batch. The first change after
#: a quiet spell is seen at once. Retired or banned items are hidden by the item rules
#: (exclusions), not by the view, so a view this stale shows no item it must not.
CATALOG_REFRESH_S = 1.0

# Refit the cold-item map when the number of vocabulary items with text changed by more
# than this share since the last fit (an item upsert alone does not refit it).
_REFIT_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class Reason:
    """Why one item is recommended.

    Attributes:
        code: "similar_to_viewed" (the history item that contributed most: highest
            cosine of item embeddings, or of text for cold items), "matches_search"
            (the search intent placed it), "bought_together" (added by the stream
            layer) or "popular" (the fallback list).
        item_id: The history item (similar_to_viewed) or the trigger item
            (bought_together); None otherwise.
    """

    code: ReasonCode
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class Intent:
    """A user's latest search, as the scorer fuses it.

    Attributes:
        vector: float32 [text_dim] unit query embedding (`OnnxTextEncoder` output).
        weight: In [0, 1]: the caller's age decay (1 = just typed, 0 = ignored).
    """

    vector: np.ndarray
    weight: float


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Top-k result for one user.

    Attributes:
        items: (item_id, score) pairs, best first. Scores are model logits for
            "sequential" (plus the intent term with a search) and interaction counts for
            "popular"; compare only within a list.
        strategy: "sequential" (transformer) or "popular" (fallback).
        reasons: One `Reason` per item (aligned with `items`) when the scorer explains;
            None from scorers (or old exports) that cannot.
    """

    items: list[tuple[str, float]]
    strategy: Strategy
    reasons: list[Reason] | None = None


#: Share of the full intent lift from which an item counts as matching the search.
_MATCH_SHARE = 0.5

_POPULAR = Reason("popular")
_SEARCH = Reason("matches_search")


@dataclass(frozen=True, slots=True)
class _Catalog:
    """The attached catalog as the scorer uses it (see `OnnxScorer._current_catalog`).

    Cold items are in the view only when they can be scored (the text map is fitted,
    see `COLD_MIN_FIT`); otherwise `cold_ids` is empty and `unscored_cold` counts them.

    Attributes:
        version: `ItemTextIndex.version` it was built from.
        params: The scorer settings it was built with (`OnnxScorer._view_params`).
        built_at: `time.monotonic()` of the build.
        dim: Width of the text vectors.
        vocab_rows: Model indices of vocabulary items with text [Nv].
        texts: Text vectors, vocabulary items then cold items [Nv + Nc, T]; one matrix
            so a batch's intents take one product.
        vocab_text: Its first Nv rows (a view).
        text_row: Model index -> row of `vocab_text`, -1 without text [n_items + 1].
        cold_ids: Ids of the cold items (in the index, not in the model) [Nc].
        cold_index: Cold id -> row.
        cold_text: The last Nc rows of `texts` (a view).
        cold_keys: Their score keys in the model's item space [Nc, D] (None without
            cold items to score).
        cold_unit: `cold_keys` rows' unit directions in item space (for explanations).
        unscored_cold: Cold items of the index left out (too few items to fit the map).
    """

    version: int
    params: tuple[float, int]
    built_at: float
    dim: int
    vocab_rows: IntArray
    texts: FloatArray
    vocab_text: FloatArray
    text_row: IntArray
    cold_ids: npt.NDArray[np.object_]
    cold_index: dict[str, int]
    cold_text: FloatArray
    cold_keys: FloatArray | None
    cold_unit: FloatArray | None
    unscored_cold: int

    @property
    def has_cold(self) -> bool:
        return self.cold_keys is not None and self.cold_ids.size > 0

    @property
    def has_text(self) -> bool:
        return self.vocab_rows.size + self.cold_ids.size > 0


@dataclass(frozen=True, slots=True)
class _Hidden:
    """A batch's shared hidden set, mapped once (see `OnnxScorer._hidden_for`).

    Attributes:
        ids: The set as the caller passed it (kept: the cache is by identity).
        size: Its size when mapped (a guard against a set mutated in place).
        vocab: Model indices of its vocabulary items, sorted.
        cold: Its cold items' rows in the catalog view (`_Catalog.cold_ids`).
        catalog: The view `cold` refers to.
    """

    ids: Collection[str]
    size: int
    vocab: IntArray
    cold: IntArray
    catalog: _Catalog | None


_NO_INDICES = np.zeros(0, dtype=np.int64)
_NO_IDS = np.zeros(0, dtype=object)


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
        *,
        intents: Sequence[Intent | None] | None = None,
        hidden: Collection[str] = frozenset(),
    ) -> list[Recommendation]:
        """Recommend k items per history, never returning ids in the matching exclude set.

        `intents` (optional, one per history) are the users' latest searches; `hidden`
        (optional) ids no row may get (the item rules), the same as adding them to every
        exclude set but mapped once per batch: pass a frozenset that is replaced, not
        mutated, when the rules change.
        """
        ...


class OnnxScorer:
    """`Scorer` backed by an onnxruntime session over an exported model directory.

    Use `OnnxScorer.load`. The session is created once; `recommend` is safe to call
    from several threads (onnxruntime sessions are thread-safe for `run`).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        metadata: ModelMetadata,
        provider: str,
        item_table: np.ndarray | None = None,
    ) -> None:
        """Wrap an existing session; prefer `OnnxScorer.load`.

        Args:
            session: Session over the model described by `metadata`.
            metadata: The model's metadata.
            provider: "cpu" or "cuda".
            item_table: The export's item table (float32 [n_items + 1, D]), if any:
                needed for cold items, the intent term and explanations of old graphs.
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
        self._explains = metadata.explains
        self._unit: FloatArray | None = None  # item table rows, L2-normalised
        self._keys: FloatArray | None = None  # score keys (the graph's item side)
        self._table: FloatArray | None = None
        if item_table is not None:
            table = np.asarray(item_table, dtype=np.float32)
            expected = (metadata.n_items + 1, metadata.dim)
            if table.shape != expected:
                raise ValueError(f"item table is {table.shape}, expected {expected}")
            self._table = table
            self._unit = _normalise(table)
            self._keys = self._unit if metadata.similarity == "cosine" else table
        #: Weight of the search intent term (see `DEFAULT_SEARCH_WEIGHT`).
        self.search_weight = DEFAULT_SEARCH_WEIGHT
        #: Ridge penalty of the cold-item text map (`COLD_RIDGE`); read when the map is
        #: (re)fitted, i.e. at the next `attach_catalog`.
        self.cold_ridge = COLD_RIDGE
        #: Share of the mapped logit a cold item gets (`COLD_SCALE`).
        self.cold_scale = COLD_SCALE
        #: Fewest vocabulary items with text to score cold items (`COLD_MIN_FIT`).
        self.min_cold_fit = COLD_MIN_FIT
        #: How long a catalog view outlives an index change (`CATALOG_REFRESH_S`).
        self.catalog_refresh_s = CATALOG_REFRESH_S
        self._index: ItemTextIndex | None = None
        self._catalog: _Catalog | None = None
        self._catalog_lock = threading.Lock()
        self._text_map: tuple[int, float, FloatArray, FloatArray, FloatArray] | None = None
        self._unscored_warned = False
        self._hidden: _Hidden | None = None  # the last hidden set, mapped
        self._skipped_intents = 0
        self._intent_warned = False
        self._similar: dict[str, Reason] = {}  # one shared Reason per history item
        self._count_arrays: dict[str | None, FloatArray] = {}  # see _popular_counts
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
        table = None
        if metadata.item_table and (model_dir / metadata.item_table).is_file():
            table = np.load(model_dir / metadata.item_table, allow_pickle=False)
        return cls(session, metadata, used, item_table=table)

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
    ) -> dict[str, np.ndarray]:
        """One inference call: every graph output by name."""
        names = self._metadata.onnx_inputs
        outputs = self._metadata.onnx_outputs
        arrays = (item_seq, type_seq, channel_seq, exclude)
        if self.io_binding:
            binding = self._session.io_binding()
            for name, array in zip(names, arrays, strict=True):
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for name in outputs:
                binding.bind_output(name, "cpu")
            self._session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self._session.run(outputs, dict(zip(names, arrays, strict=True)))
        return {name: np.asarray(v) for name, v in zip(outputs, values, strict=True)}

    def attach_catalog(self, index: ItemTextIndex | None) -> None:
        """Use `index` (item id -> text vector) for search intents and cold items.

        Vocabulary items with text take part in the intent term; items in the index but
        not in the model's vocabulary (cold items) are recommendable at once, scored
        through a map of their text into the model's item space (ridge regression fitted
        on the vocabulary items with text; see `_fit_text_map`), once at least
        ``min_cold_fit`` vocabulary items have text (`COLD_MIN_FIT`).
        The scorer rebuilds its view lazily when `index.version` changes, at most once
        per `catalog_refresh_s` (`CATALOG_REFRESH_S`); `prepare_catalog` builds it now.
        Attaching the index already attached keeps the view (and its fitted map). None
        detaches; without a catalog the behaviour is unchanged. Needs an export with
        the explanation outputs and its item table; older exports log a warning and
        ignore the catalog.
        """
        if index is not None and not self._fusable:
            logger.warning(
                "model %s has no explanation outputs or item table: the catalog (search "
                "intents, cold items) is ignored; re-export the model to use it",
                self.model_version,
            )
        with self._catalog_lock:
            if index is self._index:
                return
            self._index = index
            self._catalog = None
            self._text_map = None

    def prepare_catalog(self) -> None:
        """Build the catalog view (and fit the cold-item map) now, whatever its age.

        For a hot reload: ``new.attach_catalog(index); new.prepare_catalog()`` in the
        reloader's thread, before the new scorer is swapped in, so the first batch it
        serves does not pay the rebuild (seconds at 50k items with a refit) in the
        inference thread. Attaching the same index again afterwards keeps the view.
        A no-op without a catalog or for exports that cannot use one.
        """
        self._current_catalog(force=True)

    @property
    def skipped_intents(self) -> int:
        """Intents ignored so far because their vector does not fit the catalog's text
        width (another encoder) or is not finite; the first one logs a warning."""
        return self._skipped_intents

    @property
    def _fusable(self) -> bool:
        return self._explains and self._keys is not None

    @property
    def _view_params(self) -> tuple[float, int]:
        """The settings a catalog view depends on besides the index."""
        return (float(self.cold_ridge), int(self.min_cold_fit))

    def _current_catalog(self, force: bool = False) -> _Catalog | None:
        """The catalog view: rebuilt when the index changed and the view is older than
        `catalog_refresh_s` (or `force`), or when `_view_params` changed."""
        index = self._index
        if index is None or not self._fusable:
            return None
        catalog = self._catalog
        if catalog is not None and self._fresh(catalog, index, force):
            return catalog
        with self._catalog_lock:
            catalog = self._catalog
            if catalog is None or not self._fresh(catalog, index, force):
                catalog = self._catalog = self._build_catalog(index)
            return catalog

    def _fresh(self, catalog: _Catalog, index: ItemTextIndex, force: bool) -> bool:
        """Whether `catalog` may serve now (see `_current_catalog`)."""
        if catalog.params != self._view_params:
            return False
        if catalog.version == index.version:
            return True
        return not force and time.monotonic() - catalog.built_at < self.catalog_refresh_s

    def _build_catalog(self, index: ItemTextIndex) -> _Catalog:
        snap = index.snapshot()  # shared and immutable: no copy
        lookup = self._item_index.get
        vocab_pos = [lookup(i, -1) for i in snap.item_ids]
        model_idx = np.asarray(vocab_pos, dtype=np.int64).reshape(len(vocab_pos))
        in_vocab = np.flatnonzero(model_idx >= 0)
        cold = np.flatnonzero(model_idx < 0)
        vocab_rows = model_idx[in_vocab]
        text_row = np.full(self.n_items + 1, -1, dtype=np.int64)
        text_row[vocab_rows] = np.arange(vocab_rows.size)
        mapping = None
        if cold.size:
            mapping = self._text_map_for(vocab_rows, snap.vectors[in_vocab], index.dim)
        scored = cold if mapping is not None else cold[:0]
        self._log_unscored(int(cold.size - scored.size), int(vocab_rows.size), index.dim)
        # One gather: vocabulary rows then cold rows.
        texts = snap.vectors[np.concatenate([in_vocab, scored])].reshape(-1, index.dim)
        n_vocab = int(in_vocab.size)
        cold_text = texts[n_vocab:]
        cold_ids = np.asarray(snap.item_ids, dtype=object)[scored] if scored.size else _NO_IDS
        cold_keys = cold_unit = None
        if mapping is not None:
            w, x_mean, y_mean = mapping
            mapped = cold_text @ w + (y_mean - x_mean @ w)  # no [Nc, T] temporary
            cold_unit = _normalise(mapped)
            cold_keys = cold_unit if self._metadata.similarity == "cosine" else mapped
        return _Catalog(
            version=snap.version,
            params=self._view_params,
            built_at=time.monotonic(),
            dim=index.dim,
            vocab_rows=vocab_rows,
            texts=texts,
            vocab_text=texts[:n_vocab],
            text_row=text_row,
            cold_ids=cold_ids,
            cold_index=dict(zip(cold_ids.tolist(), range(cold_ids.size), strict=True)),
            cold_text=cold_text,
            cold_keys=None if cold_keys is None else np.asarray(cold_keys, dtype=np.float32),
            cold_unit=cold_unit,
            unscored_cold=int(cold.size - scored.size),
        )

    def _log_unscored(self, unscored: int, n_fit: int, dim: int) -> None:
        """Warn when cold items start or stop being left out (not on every build)."""
        if bool(unscored) == self._unscored_warned:
            return
        self._unscored_warned = bool(unscored)
        if unscored:
            logger.warning(
                "%d cold items are not scored: their text map needs at least %d "
                "vocabulary items with text, the catalog has %d",
                unscored,
                max(2, self.min_cold_fit),
                n_fit,
            )
        else:
            logger.info("cold items are scored again (%d vocabulary items with text)", n_fit)

    def _text_map_for(
        self, vocab_rows: IntArray, vocab_text: FloatArray, dim: int
    ) -> tuple[FloatArray, FloatArray, FloatArray] | None:
        """The text -> item-table map, or None below ``min_cold_fit`` fitted
        items; refitted only when the fitted set grew or shrank by more than
        `_REFIT_SHARE` (a live catalog upserts items one by one) or the ridge changed."""
        n = int(vocab_rows.size)
        if self._table is None or n < max(2, self.min_cold_fit):
            return None
        cached = self._text_map
        if (
            cached is not None
            and cached[1] == self.cold_ridge
            and abs(n - cached[0]) <= _REFIT_SHARE * cached[0]
        ):
            return cached[2], cached[3], cached[4]
        w, x_mean, y_mean = _fit_text_map(vocab_text, self._table[vocab_rows], self.cold_ridge)
        self._text_map = (n, float(self.cold_ridge), w, x_mean, y_mean)
        return w, x_mean, y_mean

    def recommend(
        self,
        histories: Sequence[Sequence[HistoryItem]],
        exclude: Sequence[Collection[str]],
        k: int,
        *,
        intents: Sequence[Intent | None] | None = None,
        hidden: Collection[str] = frozenset(),
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

        With a catalog attached (`attach_catalog`) a sequential row's list is exact over
        the whole catalog for the fused score

            logit(item) + search_weight * intent.weight * std(row logits) * tanh(max(z, 0))

        where z is cos(intent, text(item)) standardised over the catalog's text items
        (items without text get 0; see `_intent_shape`), and cold items' logits come
        from their mapped text. Rows without an intent and without cold
        items in the catalog take the graph's list unchanged (and pay nothing for it).

        Every item gets a `Reason` when the graph explains (or the export has its item
        table): "matches_search" when the intent term is larger than the item's margin
        over the row's k-th sequence score (it would not be in the top-k without it, or
        the search is most of why it is there) and at least half the full lift (the
        item does match the search), else
        "similar_to_viewed" with the history item nearest to it (item embeddings; text
        for cold items). Popular rows get "popular"; with a search and a catalog their
        list is ``log1p(count)`` plus the intent term (scaled by the std of
        ``log1p(count)``), and the items the search placed get "matches_search".

        Args:
            histories: One oldest-first sequence of (item_id, event_type, channel) per user.
            exclude: One collection of item ids to exclude per user (e.g. purchases).
            k: Results per user, 1 <= k <= max_k.
            intents: Optional, one per history: the user's latest search (None = none).
                An intent whose vector is not the catalog's text width (another
                encoder) or not finite is ignored for its row (`skipped_intents`).
            hidden: Item ids excluded from every row (the item rules' hidden set): the
                same lists as adding them to each exclude set, but mapped to model and
                cold-item indices once per set and catalog view instead of once per
                row. The cache is by identity: pass a set that is replaced, not
                mutated, when it changes (a frozenset).

        Returns:
            One `Recommendation` per history, in input order.

        Raises:
            ValueError: If k is out of range or the sequences differ in length.
        """
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k must be between 1 and max_k={self.max_k}, got {k}")
        if len(exclude) != len(histories):
            raise ValueError(
                f"exclude has {len(exclude)} entries but there are {len(histories)} histories"
            )
        if intents is not None and len(intents) != len(histories):
            raise ValueError(
                f"intents has {len(intents)} entries but there are {len(histories)} histories"
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
        catalog = self._current_catalog()
        intents = self._usable_intents(intents, catalog)
        masks = self._hidden_for(hidden, catalog)
        rows = np.flatnonzero(enc.has_known)
        results: list[Recommendation | None] = [None] * len(histories)
        if rows.size:
            for group in self._length_groups(enc.lengths[rows]):
                self._rank_rows(enc, rows[group], exclude, k, results, catalog, intents, masks)
        for row, rec in enumerate(results):
            if rec is None:
                channel = histories[row][-1][2] if histories[row] else None
                intent = intents[row] if intents is not None else None
                if catalog is not None and catalog.has_text and intent and intent.weight > 0:
                    results[row] = self._searched_popular(
                        exclude[row], k, channel, intent, catalog, masks
                    )
                    continue
                items = self._popular_top(exclude[row], k, channel, masks.ids)
                results[row] = Recommendation(items, "popular", [_POPULAR] * len(items))
        return [rec for rec in results if rec is not None]

    def _usable_intents(
        self, intents: Sequence[Intent | None] | None, catalog: _Catalog | None
    ) -> Sequence[Intent | None] | None:
        """`intents` with None for each one the catalog cannot fuse: a vector of another
        width (a stored search embedded by another encoder) or not finite. One bad
        intent must not fail its whole batch; counted in `skipped_intents`."""
        if intents is None or catalog is None:
            return intents  # without a catalog intents are not used
        usable: list[Intent | None] = list(intents)
        for r, intent in enumerate(usable):
            if intent is None:
                continue
            try:
                vector = np.asarray(intent.vector, dtype=np.float32)
            except (TypeError, ValueError):
                vector = np.zeros(0, dtype=np.float32)
            if vector.shape == (catalog.dim,) and bool(np.isfinite(vector).all()):
                continue
            usable[r] = None
            self._skipped_intents += 1
            if not self._intent_warned:
                self._intent_warned = True
                logger.warning(
                    "ignoring a search intent of shape %s: the catalog's text vectors are "
                    "%d wide (another text encoder?); further ones are only counted "
                    "(skipped_intents)",
                    vector.shape,
                    catalog.dim,
                )
        return usable

    def _hidden_for(self, hidden: Collection[str], catalog: _Catalog | None) -> _Hidden:
        """`hidden` mapped to model indices and cold-item rows of `catalog`.

        Cached by the set's identity (and size) and the view: a batch pays nothing for
        a hidden set it shares with the previous batch, and a new set or view costs one
        pass over the smaller of the set and the cold items.
        """
        cached = self._hidden
        if cached is not None and cached.ids is hidden and len(cached.ids) == cached.size:
            if cached.catalog is catalog:
                return cached
            vocab = cached.vocab
        elif not hidden:
            vocab = _NO_INDICES
        else:
            found = {i for item in hidden if (i := self._item_index.get(item)) is not None}
            vocab = np.asarray(sorted(found), dtype=np.int64)
        cold = _NO_INDICES
        if catalog is not None and catalog.cold_index and hidden:
            index = catalog.cold_index
            if len(index) < len(hidden):
                cols = [c for item, c in index.items() if item in hidden]
            else:
                cols = [c for item in hidden if (c := index.get(item)) is not None]
            cold = np.asarray(sorted(cols), dtype=np.int64)
        masks = _Hidden(hidden, len(hidden), vocab, cold, catalog)
        self._hidden = masks
        return masks

    def _intent_lift(
        self, cos: FloatArray, scale: float, intent: Intent
    ) -> tuple[FloatArray, float]:
        """The intent term of each text item (catalog order) and the full lift."""
        full = self.search_weight * float(intent.weight) * scale
        spread = float(np.std(cos))
        if spread <= 0:
            return np.zeros_like(cos), full
        z = _intent_shape((cos - float(np.mean(cos))) / spread)
        return z * np.float32(full), full

    def _searched_popular(
        self,
        banned: Collection[str],
        k: int,
        channel: str | None,
        intent: Intent,
        catalog: _Catalog,
        masks: _Hidden,
    ) -> Recommendation:
        """A user without known items who searched: the popularity list with the
        intent term, ``log1p(count) + lift`` (cold items count 0), still "popular".

        Reasons: "matches_search" by the rule of `recommend`, else "popular".
        """
        counts = self._popular_counts(channel)
        base = np.concatenate([np.log1p(counts), np.zeros(catalog.cold_ids.size, np.float32)])
        vocab = base[: self.n_items + 1]
        base[0] = -np.inf
        lift, full = self._intent_lift(
            catalog.texts @ np.asarray(intent.vector, np.float32), float(np.std(vocab[1:])), intent
        )
        term = np.zeros_like(base)
        term[catalog.vocab_rows] = lift[: catalog.vocab_rows.size]
        term[self.n_items + 1 :] = lift[catalog.vocab_rows.size :]
        for item in banned:
            idx = self._item_index.get(item)
            if idx is None:
                c = catalog.cold_index.get(item)
                idx = None if c is None else self.n_items + 1 + c
            if idx is not None:
                base[idx] = -np.inf
        base[masks.vocab] = -np.inf
        base[self.n_items + 1 + masks.cold] = -np.inf
        fused = base + term
        kk = min(k, int(np.isfinite(fused).sum()))
        if kk == 0:
            return Recommendation([], "popular", [])
        chosen = np.argpartition(-fused, kk - 1)[:kk]
        chosen = chosen[np.lexsort((chosen, -fused[chosen]))]
        kth = float(-np.partition(-base, kk - 1)[kk - 1])
        picked: list[tuple[str, float]] = []
        reasons: list[Reason] = []
        for idx in chosen.tolist():
            item = (
                self._items[idx]
                if idx <= self.n_items
                else catalog.cold_ids[idx - self.n_items - 1]
            )
            picked.append((str(item), float(fused[idx])))
            t = float(term[idx])
            by_search = t > float(base[idx]) - kth and t >= _MATCH_SHARE * full > 0
            reasons.append(_SEARCH if by_search else _POPULAR)
        return Recommendation(picked, "popular", reasons)

    def _popular_counts(self, channel: str | None) -> FloatArray:
        """`popular_list(channel)`'s counts aligned with model indices (cached)."""
        key = channel if channel is not None and channel in self._recent else None
        cached = self._count_arrays.get(key)
        if cached is None:
            cached = np.zeros(self.n_items + 1, dtype=np.float32)
            for item, count in self.popular_list(channel):
                cached[self._item_index[item]] = count
            self._count_arrays[key] = cached
        return cached

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
        catalog: _Catalog | None,
        intents: Sequence[Intent | None] | None,
        masks: _Hidden,
    ) -> None:
        """One inference call for ``rows`` of ``enc``; fills their ``results``."""
        excl = encode_exclude([exclude[int(r)] for r in rows], self._item_index)
        if masks.vocab.size:  # the shared hidden set: the same columns in every row
            shared = np.broadcast_to(masks.vocab, (excl.shape[0], masks.vocab.size))
            excl = np.concatenate([excl, shared], axis=1)
        hidden = masks.ids
        # Drop the columns that are padding in every row (left padding: a prefix).
        # Exact, and the transformer's cost is proportional to the length left.
        start = self.max_len - int(enc.lengths[rows].max()) if self._dynamic_seq else 0
        history = enc.item_seq[rows, start:]
        out = self._run(history, enc.type_seq[rows, start:], enc.channel_seq[rows, start:], excl)
        scores, items = out["scores"], out["items"]
        positions = self._reason_positions(out, history)
        named = None
        if positions is not None:
            named = self._item_ids[np.take_along_axis(history, positions, axis=1)]
        # Fast path, vectorised: the graph already masks padding and excluded items,
        # so when a row's first k scores are all real its first k items are the
        # answer. Rows that hit masked scores (tiny catalogs, huge exclusions) take
        # the item-by-item path.
        top_ids = self._item_ids[items[:, :k]].tolist()
        top_scores = scores[:, :k].tolist()
        top_named = None if named is None else named[:, :k].tolist()
        if scores.shape[1] >= k:
            clean = (scores[:, k - 1] > MASKED_THRESHOLD).tolist()
        else:
            clean = [False] * len(top_ids)
        fused: list[tuple[int, Collection[str], Intent | None]] = []
        for j, row in enumerate(rows.tolist()):
            banned = exclude[row]
            if not isinstance(banned, set | frozenset):
                banned = set(banned)
            intent = intents[row] if intents is not None else None
            searching = intent is not None and intent.weight > 0
            if catalog is not None and (catalog.has_cold or (searching and catalog.has_text)):
                fused.append((j, banned, intent))
                continue
            if clean[j] and banned.isdisjoint(top_ids[j]) and not _meets(hidden, top_ids[j]):
                picked = list(zip(top_ids[j], top_scores[j], strict=True))
                reasons = None
                if top_named is not None:
                    reasons = [self._similar_to(i) for i in top_named[j]]
                results[row] = Recommendation(picked, "sequential", reasons)
                continue
            cols = self._pick(scores[j], items[j], banned, hidden, k)
            picked = [(str(self._items[int(items[j, c])]), float(scores[j, c])) for c in cols]
            reasons = None if named is None else [self._similar_to(named[j, c]) for c in cols]
            results[row] = Recommendation(picked, "sequential", reasons)
        if fused and catalog is not None:
            ranked = self._fused_rows(out, fused, history, excl, k, catalog, masks)
            for (j, _, _), rec in zip(fused, ranked, strict=True):
                results[int(rows[j])] = rec

    def _reason_positions(self, out: dict[str, np.ndarray], history: np.ndarray) -> IntArray | None:
        """History position [B, K] named for each graph item (see `Reason`).

        From the graph's ``reason_pos`` when it has it; else computed here from the item
        table (old exports); None without either.
        """
        if "reason_pos" in out:
            return np.asarray(out["reason_pos"], dtype=np.int64)
        if self._unit is None:
            return None
        candidates = self._unit[out["items"]]  # [B, K, D]
        cosine = np.einsum("bkd,bld->bkl", candidates, self._unit[history])
        cosine = np.where((history == 0)[:, None, :], np.float32(-4.0), cosine)
        return np.asarray(cosine.argmax(axis=2), dtype=np.int64)

    def _similar_to(self, item_id: object) -> Reason:
        """The shared `Reason` naming history item `item_id`."""
        key = str(item_id)
        reason = self._similar.get(key)
        if reason is None:
            reason = self._similar.setdefault(key, Reason("similar_to_viewed", key))
        return reason

    def _fused_rows(
        self,
        out: dict[str, np.ndarray],
        rows: list[tuple[int, Collection[str], Intent | None]],
        history: np.ndarray,
        excl: np.ndarray,
        k: int,
        catalog: _Catalog,
        masks: _Hidden,
    ) -> list[Recommendation]:
        """Exact top-k over the vocabulary and the cold items for the graph rows
        ``(j, banned, intent)`` of `out`, with the intent term where there is one.

        The matrix products run once for all the rows (one GEMM each); only the
        selection is per row. Rows without an intent merge the graph's top-K (exact for
        the vocabulary) with the cold items; rows with one score every vocabulary item
        (see `_searched_row`).
        """
        users = np.asarray(out["user"][[j for j, _, _ in rows]], dtype=np.float32)
        cold = np.zeros((len(rows), 0), dtype=np.float32)
        if catalog.has_cold:
            assert catalog.cold_keys is not None  # noqa: S101 - has_cold
            cold = (users @ catalog.cold_keys.T) * np.float32(self.cold_scale)
            cold[:, masks.cold] = -np.inf
            for r, (_, banned, _) in enumerate(rows):  # the users' own exclusions
                for item in banned:
                    c = catalog.cold_index.get(item)
                    if c is not None:
                        cold[r, c] = -np.inf
        searches = {
            r: i
            for r, (_, _, i) in enumerate(rows)
            if i is not None and i.weight > 0 and catalog.has_text
        }
        order = list(searches)  # rows with a search, in row order: columns below
        column = {r: s for s, r in enumerate(order)}
        assert self._keys is not None  # noqa: S101 - _fusable
        seq = users[order] @ self._keys.T  # [S, n_items + 1]
        texts = catalog.texts
        queries = np.zeros((texts.shape[1], len(order)), dtype=np.float32)
        for s, r in enumerate(order):
            queries[:, s] = searches[r].vector
        cos = texts @ queries  # [n text items, S]
        results: list[Recommendation] = []
        for r, (j, _, _) in enumerate(rows):
            intent = searches.get(r)
            if intent is None:
                results.append(self._merged_row(out, j, history[j], cold[r], k, catalog))
                continue
            s = column[r]
            results.append(
                self._searched_row(
                    out, j, history[j], excl[j], seq[s], cold[r], cos[:, s], intent, k, catalog
                )
            )
        return results

    def _merged_row(
        self,
        out: dict[str, np.ndarray],
        j: int,
        history: np.ndarray,
        cold: FloatArray,
        k: int,
        catalog: _Catalog,
    ) -> Recommendation:
        """Graph row `j`'s top-K (exclusions already masked) merged with the cold items."""
        scores, items = out["scores"][j], out["items"][j]
        real = scores > MASKED_THRESHOLD
        n_graph = int(real.sum())
        merged = np.concatenate([scores[:n_graph], cold])
        kk = min(k, int(np.isfinite(merged).sum()))
        chosen = np.argpartition(-merged, kk - 1)[:kk] if kk else np.zeros(0, np.int64)
        chosen = chosen[np.lexsort((chosen, -merged[chosen]))]
        picked: list[tuple[str, float]] = []
        reasons: list[Reason] = []
        near = iter(self._nearest_by_text(chosen[chosen >= n_graph] - n_graph, history, catalog))
        for c in chosen.tolist():
            if c < n_graph:
                picked.append((str(self._items[int(items[c])]), float(merged[c])))
                pos = int(out["reason_pos"][j, c])
            else:
                picked.append((str(catalog.cold_ids[c - n_graph]), float(merged[c])))
                pos = int(next(near))
            reasons.append(self._similar_to(self._items[int(history[pos])]))
        return Recommendation(picked, "sequential", reasons)

    def _searched_row(
        self,
        out: dict[str, np.ndarray],
        j: int,
        history: np.ndarray,
        excl: np.ndarray,
        seq: FloatArray,
        cold_seq: FloatArray,
        cos: FloatArray,
        intent: Intent,
        k: int,
        catalog: _Catalog,
    ) -> Recommendation:
        """Row `j`'s exact top-k of the fused score over the vocabulary and cold items.

        `seq` is ``user . keys`` for every vocabulary item; the graph's own values
        replace it where the graph has them (its top-K, the history items, which carry
        the repeat head's bias, and the transition head's successor items), so the list
        is exact over the whole catalog, not a re-ranking of the graph's top-K.
        """
        assert self._unit is not None  # noqa: S101 - _fusable
        n_vocab = self.n_items + 1
        known = history != 0
        seq[history[known]] = out["history_scores"][j][known]
        if "successor_scores" in out:  # the transition head's items (0 = none: masked below)
            seq[out["successor_items"][j]] = out["successor_scores"][j]
        top_scores, top_items = out["scores"][j], out["items"][j]
        real = top_scores > MASKED_THRESHOLD
        seq[top_items[real]] = top_scores[real]
        scale = float(np.std(seq[1:]))  # before exclusions: a property of the user
        seq[0] = -np.inf
        seq[excl] = -np.inf
        term = np.zeros(n_vocab + cold_seq.size, dtype=np.float32)
        z, full_lift = self._intent_lift(cos, scale, intent)
        n_text = catalog.vocab_rows.size
        term[catalog.vocab_rows] = z[:n_text]
        term[n_vocab:] = z[n_text:]
        sequence = np.concatenate([seq, cold_seq])
        fused = sequence + term
        kk = min(k, int(np.isfinite(fused).sum()))
        if kk == 0:
            return Recommendation([], "sequential", [])
        chosen = np.argpartition(-fused, kk - 1)[:kk]
        chosen = chosen[np.lexsort((chosen, -fused[chosen]))]
        # The row's k-th best sequence score: what an item must beat without the search.
        kth = float(-np.partition(-sequence, kk - 1)[kk - 1])
        graph_col = {int(i): c for c, i in enumerate(top_items.tolist()) if real[c]}
        graph_pos = out["reason_pos"][j]
        hist_unit = self._unit[history]
        near = iter(self._nearest_by_text(chosen[chosen >= n_vocab] - n_vocab, history, catalog))
        picked: list[tuple[str, float]] = []
        reasons: list[Reason] = []
        for idx in chosen.tolist():
            if idx < n_vocab:
                picked.append((str(self._items[idx]), float(fused[idx])))
            else:
                picked.append((str(catalog.cold_ids[idx - n_vocab]), float(fused[idx])))
                nearest = int(next(near))
            t = float(term[idx])
            # The search placed it (the lift exceeds its margin over the k-th sequence
            # score) and it matches the search (at least half the full lift).
            if t > float(sequence[idx]) - kth and t >= _MATCH_SHARE * full_lift > 0:
                reasons.append(_SEARCH)
                continue
            if idx >= n_vocab:
                pos = nearest
            elif idx in graph_col:
                pos = int(graph_pos[graph_col[idx]])
            else:
                pos = int(np.where(known, hist_unit @ self._unit[idx], -4.0).argmax())
            reasons.append(self._similar_to(self._items[int(history[pos])]))
        return Recommendation(picked, "sequential", reasons)

    def _nearest_by_text(self, cold: IntArray, history: np.ndarray, catalog: _Catalog) -> IntArray:
        """History position of the item whose text is nearest to each cold item of
        `cold` (by its mapped item-space direction when no history item has text); one
        product for all of a row's cold picks."""
        if cold.size == 0:
            return _NO_INDICES
        rows = catalog.text_row[history]
        with_text = (history != 0) & (rows >= 0)
        if with_text.any():
            cosine = catalog.vocab_text[np.maximum(rows, 0)] @ catalog.cold_text[cold].T
            return np.asarray(np.where(with_text[:, None], cosine, -4.0).argmax(axis=0))
        assert catalog.cold_unit is not None and self._unit is not None  # noqa: S101
        cosine = self._unit[history] @ catalog.cold_unit[cold].T
        return np.asarray(np.where((history != 0)[:, None], cosine, -4.0).argmax(axis=0))

    def _pick(
        self,
        scores: np.ndarray,
        items: np.ndarray,
        banned: Collection[str],
        hidden: Collection[str],
        k: int,
    ) -> list[int]:
        """Columns of the first k real, non-excluded items of one graph row."""
        picked: list[int] = []
        for col, (score, idx) in enumerate(zip(scores.tolist(), items.tolist(), strict=True)):
            if score <= MASKED_THRESHOLD:
                break  # sorted descending: only masked items follow
            item = self._items[idx]
            if item is None or item in banned or item in hidden:  # defensive: graph-masked
                continue
            picked.append(col)
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
        self,
        banned: Collection[str],
        k: int,
        channel: str | None = None,
        hidden: Collection[str] = frozenset(),
    ) -> list[tuple[str, float]]:
        picked: list[tuple[str, float]] = []
        for item, count in self.popular_list(channel):
            if item not in banned and item not in hidden:
                picked.append((item, count))
                if len(picked) == k:
                    break
        return picked


def _meets(hidden: Collection[str], items: Sequence[str]) -> bool:
    """Whether any of `items` (a top-k, short) is in `hidden` (large): k lookups."""
    return bool(hidden) and any(item in hidden for item in items)


def _intent_shape(z: FloatArray) -> FloatArray:
    """How a standardised intent match z becomes a lift in units of the row's std:
    tanh(max(z, 0)).

    Saturating, and zero below the catalog's mean match: the items that match a search
    (z of 1.5 to 2.5 for a category query with MiniLM) get nearly the same lift, so
    the sequence model still orders them, and the rest are not pushed down. A linear
    lift reorders matching items by text noise instead: on the validation split, at
    the same category share, it cost more NDCG@10 to users who stay in their category
    (5.2 % vs 3.6 %) for a third less gain to users who switch (docs/SEMANTIC.md).
    """
    return np.asarray(np.tanh(np.maximum(z, 0.0)), dtype=np.float32)


def _normalise(matrix: np.ndarray) -> FloatArray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


def _fit_text_map(
    text: FloatArray, table: FloatArray, ridge: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Ridge regression from text vectors to item-table rows: (W, x_mean, y_mean).

    ``(x - x_mean) @ W + y_mean`` predicts an item's table row from its text. The
    penalty is `ridge` times the mean per-dimension variance of `text`, so it means the
    same for any encoder width. Closed form on the centred data: (X'X + lambda I) W = X'Y.
    """
    x_mean = text.mean(axis=0)
    y_mean = table.mean(axis=0)
    x = (text - x_mean).astype(np.float64)
    y = (table - y_mean).astype(np.float64)
    gram = x.T @ x
    penalty = ridge * float(np.trace(gram)) / max(1, gram.shape[0])
    w = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), x.T @ y)
    return w.astype(np.float32), x_mean.astype(np.float32), y_mean.astype(np.float32)
