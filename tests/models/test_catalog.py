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


def test_snapshots_are_shared_and_never_change_after_later_writes() -> None:
    index = ItemTextIndex(4)
    vectors = _unit_rows(40, 4, 5)
    index.upsert([f"i{n}" for n in range(20)], vectors[:20])
    snap = index.snapshot()
    assert index.snapshot() is snap  # no copy per reader
    before = snap.vectors.copy()
    index.upsert([f"i{n}" for n in range(20, 40)], vectors[20:])  # appends (and growth)
    index.upsert(["i3"], vectors[39:40])  # a replacement
    index.remove(["i0", "i5"])  # removals move rows
    assert snap.version == 1 and snap.item_ids == tuple(f"i{n}" for n in range(20))
    np.testing.assert_array_equal(snap.vectors, before)
    assert not snap.vectors.flags.writeable
    now = index.snapshot()
    assert len(now.item_ids) == 38 and now.version == 4
    np.testing.assert_array_equal(now.vectors[now.item_ids.index("i3")], vectors[39])


def test_readers_never_wait_for_a_writer() -> None:
    index = ItemTextIndex(4)
    index.upsert(["a"], _unit_rows(1, 4, 6))
    seen: list[object] = []

    def read() -> None:
        seen.extend([index.snapshot().item_ids, len(index), "a" in index, index.version])

    with index._write_lock:  # a writer mid-upsert
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive()
    assert seen == [("a",), 1, True, 1]


def test_concurrent_replacements_are_seen_whole() -> None:
    """A writer replaces every vector at once, generation after generation; a reader's
    snapshot always holds one generation, never a mix."""
    n, dim = 300, 8
    generations = [_unit_rows(n, dim, 100 + g) for g in range(30)]
    ids = [f"i{r}" for r in range(n)]
    index = ItemTextIndex(dim)
    index.upsert(ids, generations[0])
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        for g in range(1, len(generations)):
            index.upsert(ids, generations[g])
            index.upsert([f"extra{g}"], generations[g][:1])  # growth on the way
        done.set()

    def read() -> None:
        try:
            while not done.is_set():
                snap = index.snapshot()
                # version 1: generation 0; then 2g (generation g) and 2g + 1 (its extra)
                np.testing.assert_array_equal(snap.vectors[:n], generations[snap.version // 2])
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == n + len(generations) - 1


def test_upserting_the_vectors_an_item_has_changes_nothing() -> None:
    index = ItemTextIndex(4)
    vectors = _unit_rows(3, 4, 7)
    index.upsert(["a", "b"], vectors[:2])
    snap = index.snapshot()
    index.upsert(["b", "a"], vectors[1::-1] + np.float32(1e-8))  # re-read, same text
    assert index.version == 1 and index.snapshot() is snap
    # Mixed with a real change, only the change counts; the last duplicate wins.
    index.upsert(["a", "c", "c"], np.stack([vectors[0], vectors[1], vectors[2]]))
    now = index.snapshot()
    assert now.version == 2 and now.item_ids == ("a", "b", "c")
    np.testing.assert_array_equal(now.vectors, vectors[[0, 1, 2]])
    index.upsert(["c", "c"], np.stack([vectors[0], vectors[2]]))  # last = what it has
    assert index.version == 2
