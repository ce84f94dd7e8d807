"""The archive writer without Kafka: part names, the scan, skip after a crash, retention."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from streams.archive import (
    SCHEMA,
    ArchiveWriter,
    PartName,
    archived_offsets,
    day_of,
    remove_expired,
)
from streams.events import EventType

TOPICS = {"clicks-x": EventType.CLICK, "browses-x": EventType.BROWSE, "buy-x": EventType.PURCHASE}
DAY1 = 1_790_000_000.0  # 2026-09-21
DAY2 = DAY1 + 86_400


def click(n: int, ts: float = DAY1, user: str = "u1") -> bytes:
    return orjson.dumps({"event_id": f"e{n}", "user_id": user, "item_id": f"i{n}", "ts": ts})


def writer(root: Path, **kw: object) -> ArchiveWriter:
    opts: dict[str, object] = {"flush_records": 1000, "flush_interval_s": 60.0, **kw}
    return ArchiveWriter(root, TOPICS, **opts)  # type: ignore[arg-type]


def rows(root: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for path in sorted(root.glob("day=*/part-*.parquet")):
        out.extend(pq.read_table(path).to_pylist())
    return out


def test_part_names_round_trip_with_dashes_in_topic() -> None:
    part = PartName("clicks-v1-abc", 3, 17, 42)
    assert part.filename == "part-clicks-v1-abc-3-17-42.parquet"
    assert PartName.parse(part.filename) == part
    assert PartName.parse(".part-a-1-2-3.parquet.tmp") is None
    assert PartName.parse("part-a-1-2.parquet") is None


def test_day_is_the_utc_day_of_the_event_time() -> None:
    assert day_of(0.0) == "1970-01-01"
    assert day_of(DAY1) == "2026-09-21"


def test_parts_hold_the_contract_columns(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.add("clicks-x", 0, 5, b"u1", click(1))
    browse = {"event_id": "b", "user_id": "u1", "item_id": "i", "ts": DAY1, "dwell_ms": 700}
    w.add("browses-x", 1, 0, b"u1", orjson.dumps(browse))
    buy = {"event_id": "p", "user_id": "u1", "item_id": "i", "ts": DAY1, "order_id": "o"}
    w.add("buy-x", 0, 9, b"u1", orjson.dumps({**buy, "price": 2.5, "quantity": 2}))
    w.flush_all()
    names = sorted(p.name for p in (tmp_path / "day=2026-09-21").iterdir())
    assert names == [
        "part-browses-x-1-0-0.parquet",
        "part-buy-x-0-9-9.parquet",
        "part-clicks-x-0-5-5.parquet",
    ]
    table = pq.read_table(tmp_path / "day=2026-09-21" / names[1])
    assert table.schema.equals(SCHEMA, check_metadata=False)
    by_id = {r["event_id"]: r for r in rows(tmp_path)}
    assert by_id["e1"] == {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "click",
        "ts": DAY1,
        "channel": "web",
        "order_id": None,
        "quantity": None,
        "price": None,
        "dwell_ms": None,
        "topic": "clicks-x",
        "partition": 0,
        "offset": 5,
    }
    assert by_id["b"]["dwell_ms"] == 700 and by_id["b"]["order_id"] is None
    assert (by_id["p"]["order_id"], by_id["p"]["quantity"], by_id["p"]["price"]) == ("o", 2, 2.5)


def test_rejects_are_counted_not_written_and_commit_moves_past_them(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.assign([("clicks-x", 0)])
    assert w.add("clicks-x", 0, 0, b"u1", click(0))
    assert not w.add("clicks-x", 0, 1, b"u1", b"{not json")
    assert not w.add("clicks-x", 0, 2, b"other", click(2))  # key mismatch
    assert w.to_commit() == {("clicks-x", 0): 0}  # offset 0 is not on disk yet
    w.flush_all()
    assert w.to_commit() == {("clicks-x", 0): 3}
    assert w.stats.rejected == {"invalid_json": 1, "key_mismatch": 1}
    assert [r["event_id"] for r in rows(tmp_path)] == ["e0"]


def test_a_day_change_cuts_the_part_so_parts_stay_contiguous(tmp_path: Path) -> None:
    w = writer(tmp_path)
    for offset, ts in enumerate([DAY1, DAY1, DAY2, DAY1]):
        w.add("clicks-x", 0, offset, b"u1", click(offset, ts))
    w.flush_all()
    parts = sorted((p.parent.name, p.name) for p in tmp_path.glob("day=*/part-*.parquet"))
    assert parts == [
        ("day=2026-09-21", "part-clicks-x-0-0-1.parquet"),
        ("day=2026-09-21", "part-clicks-x-0-3-3.parquet"),
        ("day=2026-09-22", "part-clicks-x-0-2-2.parquet"),
    ]


def test_flush_by_count_and_by_age(tmp_path: Path) -> None:
    w = writer(tmp_path, flush_records=3, flush_interval_s=10.0)
    for offset in range(7):
        w.add("clicks-x", 0, offset, b"u1", click(offset))
    assert w.stats.parts == 2  # 0-2, 3-5; offset 6 still open
    assert w.flush_due(now=0.0) == 0
    assert w.flush_due(now=1e12) == 1
    assert archived_offsets(tmp_path) == {("clicks-x", 0): 6}


def test_a_restart_skips_what_the_files_hold(tmp_path: Path) -> None:
    """A kill between the rename and the commit: the records are re-read, not re-written."""
    first = writer(tmp_path)
    for offset in range(5):
        first.add("clicks-x", 0, offset, b"u1", click(offset))
    first.flush_all()
    first.add("clicks-x", 0, 5, b"u1", click(5))  # open part lost with the process
    folder = tmp_path / "day=2026-09-21"
    (folder / ".part-clicks-x-0-5-9.parquet.tmp").write_bytes(b"half")
    (folder / ".part-clicks-x-7-0-3.parquet.tmp").write_bytes(b"another owner's write")

    second = writer(tmp_path)
    second.assign([("clicks-x", 0), ("clicks-x", 1)])
    for offset in range(2, 8):  # redelivered from an older committed offset
        second.add("clicks-x", 0, offset, b"u1", click(offset))
    second.flush_all()
    assert second.stats.skipped == 3
    ids = [r["event_id"] for r in rows(tmp_path)]
    assert ids == [f"e{n}" for n in range(8)]
    # The stale temporary file is gone; a partition this writer does not own is left.
    assert [p.name for p in folder.glob(".*.tmp")] == [".part-clicks-x-7-0-3.parquet.tmp"]
    assert second.to_commit() == {("clicks-x", 0): 8}


def test_retention_deletes_day_folders_older_than_the_window(tmp_path: Path) -> None:
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC).timestamp()
    for day in ("2026-10-31", "2026-11-01", "2026-11-02", "2026-12-02"):
        (tmp_path / f"day={day}").mkdir()
        (tmp_path / f"day={day}" / "part-a-0-0-0.parquet").write_bytes(b"x")
    (tmp_path / "day=garbage").mkdir()
    (tmp_path / "notes").mkdir()
    removed = remove_expired(tmp_path, 30, now=now)
    assert [p.name for p in removed] == ["day=2026-10-31", "day=2026-11-01"]
    left = sorted(os.listdir(tmp_path))
    assert left == ["day=2026-11-02", "day=2026-12-02", "day=garbage", "notes"]


@pytest.mark.parametrize("missing", [True, False])
def test_scan_of_an_empty_or_missing_root(tmp_path: Path, missing: bool) -> None:
    root = tmp_path / "archive"
    if not missing:
        root.mkdir()
    assert archived_offsets(root) == {}
    assert remove_expired(root, 1) == []


def test_buffered_rows_are_bounded_over_all_partitions(tmp_path: Path) -> None:
    """Catching up on many partitions must not buffer without bound: past the cap the
    largest open part is written at once (and its offsets become committable)."""
    w = writer(tmp_path, flush_records=1000, flush_interval_s=600.0, max_buffered=10)
    for offset in range(8):
        assert w.add("clicks-x", 0, offset, b"u1", click(offset))
    for offset in range(3):
        assert w.add("clicks-x", 1, offset, b"u1", click(100 + offset))
    assert w.buffered == 11 - 8  # partition 0 (the largest) was written
    assert w.stats.archived == 8 and w.to_commit()[("clicks-x", 0)] == 8
    w.flush_all()
    assert w.buffered == 0 and w.stats.archived == 11
    assert len(rows(tmp_path)) == 11


def test_pseudonymous_mode_archives_pseudonyms_not_user_ids(tmp_path: Path) -> None:
    from streams.privacy import UserKeys

    keys = UserKeys("shop-key", "log-key")
    w = writer(tmp_path, users=keys)
    w.add("clicks-x", 0, 0, b"alice", click(1, user="alice"))
    w.flush_all()
    [row] = rows(tmp_path)
    assert row["user_id"] == keys.state("alice") != "alice"
    assert not any(b"alice" in p.read_bytes() for p in tmp_path.rglob("*.parquet"))
