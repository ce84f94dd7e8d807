"""Item text embeddings of the live catalog, for the scorer (numpy only).

The stream layer embeds every catalog record's text (`models.text_encoder`) and
upserts it here; `models.scorer.OnnxScorer.attach_catalog` reads it to add the search
intent term and to score cold items (in the catalog but not in the model).

Writers and readers may be different threads (the event loop upserts, the inference
thread snapshots). The index is copy-on-write: its whole state is one immutable
`_State` behind one reference, so readers take it without a lock and never copy;
writers (serialised by a lock that readers never take) build the next state and swap
the reference.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["CatalogSnapshot", "ItemTextIndex"]

FloatArray = npt.NDArray[np.float32]

# Vectors must be unit length (the encoder L2-normalises); this much drift is rounding.
_UNIT_TOLERANCE = 1e-3
# A replacement that moves no component by more than this is the same vector (an
# encoder run on the same text in another batch differs by float rounding at most).
_SAME_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """A consistent, read-only view of an `ItemTextIndex` (shared, never copied).

    Attributes:
        version: The index's `version` when the view was taken.
        item_ids: Ids in row order.
        vectors: float32 [len(item_ids), dim] unit rows (not writeable).
    """

    version: int
    item_ids: tuple[str, ...]
    vectors: FloatArray


@dataclass(frozen=True, slots=True)
class _State:
    """One published state of the index; nothing in it is ever mutated.

    `buffer` has spare rows past `len(ids)`: a writer may fill those in place (no
    published state reaches them) but must copy the buffer to change a row below.
    """

    version: int
    ids: tuple[str, ...]
    rows: dict[str, int]
    buffer: FloatArray
    snapshot: CatalogSnapshot


def _publish(
    version: int, ids: tuple[str, ...], rows: dict[str, int], buffer: FloatArray
) -> _State:
    vectors = buffer[: len(ids)]
    vectors.setflags(write=False)  # a view: the buffer itself stays writeable
    return _State(version, ids, rows, buffer, CatalogSnapshot(version, ids, vectors))


class ItemTextIndex:
    """Thread-safe map item id -> unit text vector, with a change counter.

    Rows live in one matrix with spare capacity that doubles when full (appends are
    amortised O(1) per row and touch no published row); replacing or removing rows
    copies the matrix once per call (removal moves the last row into the hole), so
    batch such writes, or make them off the event loop (writes are thread-safe).
    Upserting the vector an item already has changes nothing (not even `version`).

    Args:
        dim: Width of the text vectors.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError("dim must be positive")
        self.dim = dim
        self._write_lock = threading.Lock()
        self._state = _publish(0, (), {}, np.zeros((16, dim), dtype=np.float32))

    @property
    def version(self) -> int:
        """Bumped by every `upsert` / `remove` that changes something."""
        return self._state.version

    def __len__(self) -> int:
        return len(self._state.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._state.rows

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace the vectors of `item_ids` (the last one wins on duplicates).

        Args:
            item_ids: Non-empty ids.
            vectors: float [len(item_ids), dim], unit-length rows.

        Raises:
            ValueError: On a shape mismatch, an empty id, or rows that are not finite
                unit vectors.
        """
        array = np.asarray(vectors, dtype=np.float32)
        if array.shape != (len(item_ids), self.dim):
            raise ValueError(f"vectors must be [{len(item_ids)}, {self.dim}], got {array.shape}")
        if any(not isinstance(i, str) or not i for i in item_ids):
            raise ValueError("item ids must be non-empty strings")
        norms = np.linalg.norm(array, axis=1)
        if not np.all(np.isfinite(norms)) or np.any(np.abs(norms - 1.0) > _UNIT_TOLERANCE):
            raise ValueError("vectors must be finite unit-length rows")
        if not item_ids:
            return
        last = {item_id: p for p, item_id in enumerate(item_ids)}  # the last one wins
        if len(last) < len(item_ids):
            item_ids = list(last)
            array = array[list(last.values())]
        with self._write_lock:
            state = self._state
            # A row replaced by the vector it has (a record read again, its text
            # unchanged) is no change: no copy, no new version, no scorer rebuild.
            known = np.asarray([state.rows.get(i, -1) for i in item_ids], dtype=np.int64)
            same = known >= 0
            if same.any():
                delta = np.abs(state.buffer[known[same]] - array[same]).max(axis=1)
                same[same] = delta <= _SAME_TOLERANCE
                if same.all():
                    return
                item_ids = [i for i, s in zip(item_ids, same.tolist(), strict=True) if not s]
                array, known = array[~same], known[~same]
            rows, ids = state.rows, state.ids
            if (known < 0).any():
                rows, grown_ids = dict(rows), list(ids)
                for p in np.flatnonzero(known < 0).tolist():
                    known[p] = rows[item_ids[p]] = len(grown_ids)
                    grown_ids.append(item_ids[p])
                ids = tuple(grown_ids)
            targets = known
            buffer = state.buffer
            n_old = len(state.ids)
            replaces = bool((targets < n_old).any())
            if len(ids) > buffer.shape[0] or replaces:
                capacity = buffer.shape[0]
                while capacity < len(ids):
                    capacity *= 2
                grown = np.zeros((capacity, self.dim), dtype=np.float32)
                grown[:n_old] = buffer[:n_old]
                buffer = grown
            buffer[targets] = array
            self._state = _publish(state.version + 1, ids, rows, buffer)

    def remove(self, item_ids: Sequence[str]) -> None:
        """Forget `item_ids` (unknown ids are ignored)."""
        with self._write_lock:
            state = self._state
            if not any(i in state.rows for i in item_ids):
                return
            rows = dict(state.rows)
            ids = list(state.ids)
            buffer = state.buffer.copy()  # rows below len(ids) move: never in place
            for item_id in item_ids:
                row = rows.pop(item_id, None)
                if row is None:
                    continue
                last = len(ids) - 1
                if row != last:  # move the last row into the hole
                    moved = ids[last]
                    ids[row] = moved
                    buffer[row] = buffer[last]
                    rows[moved] = row
                ids.pop()
            self._state = _publish(state.version + 1, tuple(ids), rows, buffer)

    def vector(self, item_id: str) -> FloatArray | None:
        """A copy of one item's vector, or None."""
        state = self._state
        row = state.rows.get(item_id)
        return None if row is None else state.buffer[row].copy()

    def snapshot(self) -> CatalogSnapshot:
        """The current ids and vectors with the version they reflect: a shared,
        read-only view (no copy, no lock), consistent however writers proceed."""
        return self._state.snapshot
