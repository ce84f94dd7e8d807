"""The Parquet event archive reader and the held-out-days split."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.archive import archive_days, archive_split, day_start, read_archive
from models.datasets import DataFormatError
from models.splits import cutoff_split

#: The archiver's column contract (streams/archive.py writes exactly this).
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_type", pa.string()),
        ("ts", pa.float64()),
        ("channel", pa.string()),
        ("order_id", pa.string()),
        ("quantity", pa.int64()),
        ("price", pa.float64()),
        ("dwell_ms", pa.int64()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)


def event(
    event_id: str,
    user: str,
    item: str,
    ts: float,
    event_type: str = "browse",
    channel: str = "web",
    **extra: Any,
) -> dict[str, Any]:
    """One archive row; optional columns default to null."""
    row: dict[str, Any] = {
        "event_id": event_id,
        "user_id": user,
        "item_id": item,
        "event_type": event_type,
        "ts": ts,
        "channel": channel,
        "order_id": None,
        "quantity": None,
        "price": None,
        "dwell_ms": None,
        "topic": f"{event_type}s",
        "partition": 0,
        "offset": 0,
    }
    row.update(extra)
    return row


def write_archive(root: Path, rows: Sequence[dict[str, Any]], part: int = 0) -> Path:
    """Write rows into ``root/day=<UTC day of ts>/part-<part>.parquet`` (archiver layout)."""
    by_day: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        day = datetime.fromtimestamp(row["ts"], UTC).strftime("%Y-%m-%d")
        by_day.setdefault(day, []).append(row)
    for day, day_rows in by_day.items():
        folder = root / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist(day_rows, schema=SCHEMA), folder / f"part-{part:05d}.parquet"
        )
    return root


D1 = day_start("2026-11-28")
D2 = day_start("2026-11-29")
D3 = day_start("2026-11-30")


def test_reader_selects_newest_days_dedups_and_sorts(tmp_path: Path) -> None:
    rows = [
        event("a", "u1", "i1", D1 + 10),
        event("b", "u2", "i2", D2 + 50, "purchase", "app", order_id="o1", quantity=2, price=9.5),
        event("c", "u1", "i3", D2 + 20, dwell_ms=1200),
        event("d", "u1", "i4", D3 + 5, "click", "store"),
        event("e", "u2", "i5", D3 + 1),
    ]
    write_archive(tmp_path, rows)
    # A redelivered event archived twice, in another file of the same day.
    write_archive(tmp_path, [event("d", "u1", "i4", D3 + 5, "click", "store")], part=1)
    (tmp_path / "not-a-day").mkdir()
    assert archive_days(tmp_path) == ["2026-11-28", "2026-11-29", "2026-11-30"]

    everything = read_archive(tmp_path)
    assert [(it.user_id, it.item_id) for it in everything] == [
        ("u1", "i1"),
        ("u1", "i3"),
        ("u1", "i4"),
        ("u2", "i2"),
        ("u2", "i5"),
    ]
    newest = read_archive(tmp_path, days=2)
    assert [it.item_id for it in newest] == ["i3", "i4", "i2", "i5"]
    purchase = next(it for it in newest if it.item_id == "i2")
    assert (purchase.event_type, purchase.channel, purchase.ts) == ("purchase", "app", D2 + 50)
    with pytest.raises(ValueError):
        read_archive(tmp_path, days=0)


def test_reader_ties_in_stream_order_and_skips_unknown_types(tmp_path: Path) -> None:
    rows = [
        event("x2", "u1", "late", D1 + 1, offset=7),
        event("x1", "u1", "early", D1 + 1, offset=3),
        event("x3", "u1", "odd", D1 + 2, "wishlist"),
    ]
    write_archive(tmp_path, rows)
    assert [it.item_id for it in read_archive(tmp_path)] == ["early", "late"]


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such archive"):
        read_archive(tmp_path / "missing")
    assert read_archive(tmp_path) == []
    folder = tmp_path / "day=2026-11-28"
    folder.mkdir()
    pq.write_table(pa.table({"event_id": ["a"]}), folder / "part-0.parquet")
    with pytest.raises(DataFormatError, match="missing column"):
        read_archive(tmp_path)


def test_cutoff_split_keeps_the_future_out_of_training() -> None:
    from models.interactions import Interaction

    log = [Interaction(f"u{n % 3}", f"i{n}", "browse", float(n)) for n in range(30)]
    split = cutoff_split(log, 20.0, valid_fraction=0.25, max_cases=None)
    assert max(it.ts for it in split.train) < 15.0  # 20 past events, the newest 5 validate
    assert [c.target for c in split.test] == [f"i{n}" for n in range(20, 30)]
    assert [c.target for c in split.valid] == [f"i{n}" for n in range(15, 20)]
    # A held-out case sees everything of its user before it, held-out events included.
    last = split.test[-1]
    assert last.history[-1][0] == "i26" and len(last.history) == 9


def test_archive_split_holds_out_the_newest_days(tmp_path: Path) -> None:
    rows = [
        event(f"e{d}{n}", f"u{n % 4}", f"i{(d * 7 + n) % 11}", day + 100.0 * n)
        for d, day in enumerate((D1, D2, D3))
        for n in range(12)
    ]
    write_archive(tmp_path, rows)
    split = archive_split(tmp_path, holdout_days=1, valid_fraction=0.2, max_cases=None)
    assert split.train and split.valid and split.test
    assert all(it.ts < D3 for it in split.train)
    assert len(split.test) == 12  # every held-out event of a known user
    assert "2026-11-30..2026-11-30" in split.protocol
    # --days 2: the oldest day is not read at all.
    two = archive_split(tmp_path, days=2, holdout_days=1, valid_fraction=0.0, max_cases=None)
    assert all(D2 <= it.ts < D3 for it in two.train) and not two.valid
    with pytest.raises(ValueError, match="at least one more day"):
        archive_split(tmp_path, days=2, holdout_days=2)


def test_fixture_schema_is_the_archivers() -> None:
    from streams.archive import SCHEMA as ARCHIVER_SCHEMA

    assert [(f.name, f.type) for f in SCHEMA] == [(f.name, f.type) for f in ARCHIVER_SCHEMA]


def test_archive_split_skips_the_day_still_filling_and_later_days(tmp_path: Path) -> None:
    rows = [
        event(f"e{d}{n}", f"u{n % 4}", f"i{(d * 7 + n) % 11}", day + 100.0 * n)
        for d, day in enumerate((D1, D2, D3))
        for n in range(12)
    ]
    write_archive(tmp_path, rows)
    # On 2026-11-30 at 03:00 UTC, that day's folder is incomplete: 11-29 is held out.
    split = archive_split(tmp_path, holdout_days=1, max_cases=None, now=D3 + 3 * 3600)
    assert "2026-11-29..2026-11-29" in split.protocol
    assert all(it.ts < D2 for it in split.train)
    assert len(split.test) == 12  # the events of 11-29, every user known from 11-28
    # A folder dated after "now" (clocks ahead) is never read: on 11-29 only 11-28 is
    # complete, too little to hold a day out.
    with pytest.raises(ValueError, match="at least one more day"):
        archive_split(tmp_path, holdout_days=1, max_cases=None, now=D2 + 60)


def test_the_reader_after_an_erasure_reads_no_row_of_the_user(tmp_path: Path) -> None:
    """The archiver erases by rewriting parts; one left without rows stays as an empty
    file, which the reader reads like any other."""
    from streams.archive import erase_from_parts

    rows = [event("a", "u1", "i1", D1 + 10), event("b", "u2", "i2", D1 + 20)]
    write_archive(tmp_path, [*rows, event("c", "u1", "i3", D2 + 5)])
    erase_from_parts(tmp_path, {"u1": D3})
    assert pq.read_table(tmp_path / "day=2026-11-29" / "part-00000.parquet").num_rows == 0
    assert archive_days(tmp_path) == ["2026-11-28", "2026-11-29"]
    assert [(it.user_id, it.item_id) for it in read_archive(tmp_path)] == [("u2", "i2")]
