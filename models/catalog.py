"""Item text embeddings of the live catalog, for the scorer (numpy only).

The stream layer embeds every catalog record's text (`models.text_encoder`) and
upserts it here; `models.scorer.OnnxScorer.attach_catalog` reads it to add the search
intent term and to score cold items (in the catalog but not in the model). Writers and
readers may be different threads: every method takes the index's lock, and readers
take a consistent copy with `snapshot`.
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


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """A consistent, read-only copy of an `ItemTextIndex`.

    Attributes:
        version: The index's `version` when the copy was taken.
        item_ids: Ids in row order.
        vectors: float32 [len(item_ids), dim] unit rows (not writeable).
    """

    version: int
    item_ids: tuple[str, ...]
    vectors: FloatArray


class ItemTextIndex:
    """Thread-safe map item id -> unit text vector, with a change counter.

    Rows live in one growing matrix (removal moves the last row into the hole), so a
    snapshot is one array copy however many items changed.

    Args:
        dim: Width of the text vectors.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError("dim must be positive")
        self.dim = dim
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        self._ids: list[str] = []
        self._matrix = np.zeros((16, dim), dtype=np.float32)
        self._version = 0

    @property
    def version(self) -> int:
        """Bumped by every `upsert` / `remove` that changes something."""
        with self._lock:
            return self._version

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        with self._lock:
            return item_id in self._rows

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
        with self._lock:
            for item_id, vector in zip(item_ids, array, strict=True):
                row = self._rows.get(item_id)
                if row is None:
                    row = len(self._ids)
                    if row == self._matrix.shape[0]:
                        grown = np.zeros((2 * row, self.dim), dtype=np.float32)
                        grown[:row] = self._matrix
                        self._matrix = grown
                    self._rows[item_id] = row
                    self._ids.append(item_id)
                self._matrix[row] = vector
            self._version += 1

    def remove(self, item_ids: Sequence[str]) -> None:
        """Forget `item_ids` (unknown ids are ignored)."""
        with self._lock:
            changed = False
            for item_id in item_ids:
                row = self._rows.pop(item_id, None)
                if row is None:
                    continue
                last = len(self._ids) - 1
                if row != last:  # move the last row into the hole
                    moved = self._ids[last]
                    self._ids[row] = moved
                    self._matrix[row] = self._matrix[last]
                    self._rows[moved] = row
                self._ids.pop()
                changed = True
            if changed:
                self._version += 1

    def vector(self, item_id: str) -> FloatArray | None:
        """A copy of one item's vector, or None."""
        with self._lock:
            row = self._rows.get(item_id)
            return None if row is None else self._matrix[row].copy()

    def snapshot(self) -> CatalogSnapshot:
        """A consistent copy of every id and vector, with the version it reflects."""
        with self._lock:
            vectors = self._matrix[: len(self._ids)].copy()
            vectors.setflags(write=False)
            return CatalogSnapshot(self._version, tuple(self._ids), vectors)
