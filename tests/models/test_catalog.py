"""ItemTextIndex: upsert / remove / version, validation, concurrent use."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from models.catalog import ItemTextIndex


def _unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_upsert_replace_remove_and_version() -> None:
    index = ItemTextIndex(4)
    assert len(index) == 0 and index.version == 0
    first = _unit_rows(3, 4, 0)
    index.upsert(["a", "b", "c"], first)
    assert len(index) == 3 and "b" in index and "z" not in index and index.version == 1
    replacement = _unit_rows(1, 4, 1)
    index.upsert(["b"], replacement)
    assert len(index) == 3 and index.version == 2
    np.testing.assert_array_equal(index.vector("b"), replacement[0])
    index.remove(["a", "missing"])
    assert len(index) == 2 and "a" not in index and index.version == 3
    index.remove(["missing"])  # nothing changed: no new version
    assert index.version == 3
    snap = index.snapshot()
    assert snap.version == 3 and set(snap.item_ids) == {"b", "c"}
    rows = dict(zip(snap.item_ids, snap.vectors, strict=True))
    np.testing.assert_array_equal(rows["c"], first[2])  # moved into the hole, intact
    np.testing.assert_array_equal(rows["b"], replacement[0])
    assert not snap.vectors.flags.writeable
    index.upsert(["d"], _unit_rows(1, 4, 2))
    assert len(snap.item_ids) == 2  # a snapshot does not change afterwards


def test_grows_past_its_initial_capacity() -> None:
    index = ItemTextIndex(8)
    ids = [f"i{n}" for n in range(100)]
    vectors = _unit_rows(100, 8, 3)
    for start in range(0, 100, 7):
        index.upsert(ids[start : start + 7], vectors[start : start + 7])
    snap = index.snapshot()
    assert snap.item_ids == tuple(ids)
    np.testing.assert_array_equal(snap.vectors, vectors)


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (["a"], np.ones((1, 3), np.float32), r"must be \[1, 4\]"),
        (["a"], np.ones((1, 4), np.float32), "unit-length"),
        (["a"], np.full((1, 4), np.nan, np.float32), "unit-length"),
        ([""], np.eye(4, dtype=np.float32)[:1], "non-empty"),
    ],
)
def test_bad_input_is_rejected(ids: list[str], vectors: np.ndarray, message: str) -> None:
    index = ItemTextIndex(4)
    with pytest.raises(ValueError, match=message):
        index.upsert(ids, vectors)
    assert len(index) == 0 and index.version == 0
    with pytest.raises(ValueError):
        ItemTextIndex(0)


def test_concurrent_writers_and_readers() -> None:
    index = ItemTextIndex(8)
    vectors = _unit_rows(400, 8, 4)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        for n in range(100):
            row = worker * 100 + n
            index.upsert([f"w{worker}-{n}"], vectors[row : row + 1])
            if n % 3 == 0:
                index.remove([f"w{worker}-{n}"])

    def read() -> None:
        try:
            for _ in range(200):
                snap = index.snapshot()
                assert len(snap.item_ids) == snap.vectors.shape[0]
                for item, vector in zip(snap.item_ids, snap.vectors, strict=True):
                    worker, n = item[1:].split("-")
                    np.testing.assert_array_equal(vector, vectors[int(worker) * 100 + int(n)])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 4 * (100 - 34)
