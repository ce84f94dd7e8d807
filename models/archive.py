"""Read the Parquet event archive the archiver writes, and split it for a retrain.

Layout (the archiver's contract, ``streams/archive.py``)::

    DIR/
      day=2026-11-30/            # one folder per UTC day of the *event* time
        part-00000.parquet       # columns below; any number of part-*.parquet files
      day=2026-12-01/
        ...

Columns: ``event_id, user_id, item_id, event_type, channel, topic`` (string), ``ts``
(float64 Unix seconds), ``order_id`` (string | null), ``quantity``, ``dwell_ms``
(int64 | null), ``price`` (float64 | null), ``partition`` (int32), ``offset`` (int64).
The model needs only user, item, type, ts and channel; the rest is for other readers.

The archive is written at least once (a redelivered event is archived twice), so
`read_archive` de-duplicates by ``event_id``. An erasure rewrites the part files that
hold the user (same name, the rows removed; a part may be left empty) and renames each
over the old one atomically: a reader running meanwhile reads each file either whole
as it was or whole as it is now, and a run that read a file before the erasure still
holds the user's rows in memory until it ends. `archive_split` holds out the newest
day folders: the model trains (and early-stops) on the earlier days only and is
evaluated on the held-out days, as the retraining gate requires.

Only this module imports pyarrow, and only inside the readers.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from models.datasets import DataFormatError
from models.interactions import CHANNELS, EVENT_TYPES, Interaction
from models.splits import SplitData, cutoff_split

__all__ = ["archive_days", "archive_split", "day_start", "read_archive"]

logger = logging.getLogger("recstream.models.archive")

_DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")
#: Columns the model reads; the reader needs no others.
_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts", "channel", "partition", "offset")


def archive_days(root: Path) -> list[str]:
    """The ``YYYY-MM-DD`` days that have a ``day=`` folder under `root`, oldest first.

    Raises:
        DataFormatError: If `root` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: no such archive directory")
    days = []
    for path in root.iterdir():
        match = _DAY_DIR.match(path.name)
        if match and path.is_dir():
            day_start(match.group(1))  # rejects impossible dates like 2026-02-31
            days.append(match.group(1))
    return sorted(days)


def day_start(day: str) -> float:
    """Unix seconds of 00:00 UTC of ``YYYY-MM-DD``.

    Raises:
        DataFormatError: If `day` is not a valid date.
    """
    try:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise DataFormatError(f"invalid archive day {day!r}: {exc}") from exc


def _select_days(root: Path, days: int | None, before: str | None = None) -> list[str]:
    available = archive_days(root)
    if before is not None:
        # ISO dates compare as strings; later folders are still filling (today) or come
        # from clocks running ahead.
        available = [day for day in available if day < before]
    if days is not None:
        if days < 1:
            raise ValueError("days must be >= 1")
        available = available[-days:]
    return available


def read_archive(root: Path, days: int | None = None) -> list[Interaction]:
    """Interactions of the newest `days` day folders of the archive at `root`.

    Rows are de-duplicated by ``event_id`` (the first copy read wins; copies of one
    event are identical) and returned sorted by (user, ts), ties in stream order
    (partition, offset). Rows whose event type or channel the model does not know are
    skipped with a warning, as are rows without a user, item or ts (the archiver
    archives what the worker accepted, so this means a newer contract).

    Args:
        root: The archive directory (``DIR/day=YYYY-MM-DD/part-*.parquet``).
        days: Read only the newest N day folders (None = all).

    Returns:
        The interactions (empty for an empty archive).

    Raises:
        DataFormatError: If `root` is missing or a file lacks a required column.
        ValueError: If `days` < 1.
    """
    return _read_days(Path(root), _select_days(Path(root), days))


def _read_days(root: Path, days: Sequence[str]) -> list[Interaction]:
    import pyarrow.parquet as pq

    seen: set[str] = set()
    rows: list[tuple[str, float, int, int, Interaction]] = []
    skipped = 0
    for day in days:
        for path in sorted((root / f"day={day}").glob("part-*.parquet")):
            table = pq.read_table(path)
            missing = [c for c in _COLUMNS if c not in table.column_names]
            if missing:
                raise DataFormatError(f"{path}: missing column(s) {', '.join(missing)}")
            cols = {c: table.column(c).to_pylist() for c in _COLUMNS}
            for n in range(table.num_rows):
                event_id = cols["event_id"][n]
                if event_id in seen:
                    continue
                seen.add(event_id)
                event_type, channel = cols["event_type"][n], cols["channel"][n] or "web"
                user, item, ts = cols["user_id"][n], cols["item_id"][n], cols["ts"][n]
                known = event_type in EVENT_TYPES and channel in CHANNELS
                if not known or not user or not item or ts is None:
                    skipped += 1
                    continue
                it = Interaction(str(user), str(item), str(event_type), float(ts), str(channel))
                order = (cols["partition"][n] or 0, cols["offset"][n] or 0)
                rows.append((it.user_id, it.ts, *order, it))
    if skipped:
        logger.warning(
            "skipped %d archived events with an unknown type/channel or no user/item/ts", skipped
        )
    rows.sort(key=lambda r: r[:4])
    return [r[4] for r in rows]


def archive_split(
    root: Path,
    *,
    days: int | None = None,
    holdout_days: int = 1,
    valid_fraction: float = 0.1,
    max_cases: int | None = 20_000,
    seed: int = 0,
    now: float | None = None,
) -> SplitData:
    """Read the newest `days` complete day folders and hold out the newest `holdout_days`.

    Only days before the current UTC day count: today's folder is still filling (a
    nightly job at 03:00 would otherwise hold out three quiet hours), and a folder
    dated later comes from events with clocks ahead.

    Training and validation (early stopping) use the earlier days only; every event of
    the held-out days whose user has an earlier event is a test case, predicted from all
    of that user's events before it (earlier days and earlier held-out events). See
    `models.splits.cutoff_split`.

    Args:
        root: The archive directory.
        days: Day folders to read, newest first counted (None = all).
        holdout_days: Newest day folders held out for the test (the retraining gate).
        valid_fraction: Share of the earlier days' events (the newest) for validation.
        max_cases: Seeded cap on validation and on test cases.
        seed: Sampling seed.
        now: Current Unix time (tests); days on or after its UTC day are skipped.

    Returns:
        The split; `test` holds the held-out cases.

    Raises:
        ValueError: If fewer than `holdout_days` + 1 day folders are selected, or the
            split leaves no training data.
    """
    root = Path(root)
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))
    selected = _select_days(root, days, before=today)
    if holdout_days < 1:
        raise ValueError("holdout_days must be >= 1")
    if len(selected) <= holdout_days:
        raise ValueError(
            f"{root} has {len(selected)} day folder(s) selected; holding out {holdout_days} "
            "needs at least one more day to train on"
        )
    held = selected[-holdout_days:]
    cutoff = day_start(held[0])
    split = cutoff_split(
        _read_days(root, selected),
        cutoff,
        valid_fraction=valid_fraction,
        max_cases=max_cases,
        seed=seed,
    )
    split.protocol = (
        f"archive {selected[0]}..{selected[-1]} ({len(selected)} days): held-out days "
        f"{held[0]}..{held[-1]} are the test; {split.protocol}"
    )
    return split
