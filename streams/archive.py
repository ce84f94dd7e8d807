"""The archiver: every event the worker accepts, in a day-partitioned Parquet log.

A separate consumer group (``<app_id>-archiver``) reads the three input topics,
decodes each record with the worker's own :func:`streams.events.decode_event` and
writes the accepted events under ``<root>/day=YYYY-MM-DD/`` (UTC day of the event
time ``ts``) as ``part-<topic>-<partition>-<first offset>-<last offset>.parquet``.
Rejected records are counted and skipped (the worker has dead-lettered them). The
decoder's future-timestamp check runs against the record's Kafka timestamp rather
than the wall clock, so a record re-read after a restart or a long lag gets the same
verdict (the worker checks against its clock, which is that timestamp plus its lag).

The file format (:data:`SCHEMA`, the folder and file names) is a contract with the
training-data reader; do not change it.

Restart safety (no loss, no duplicates across SIGKILL):

* a part holds a *contiguous run* of one partition's accepted records of one day: a
  partition's open part is cut when the day changes, so the parts of a partition,
  written in offset order, always cover every accepted record up to the highest
  ``last offset`` on disk;
* a part is written to a temporary name, fsync'd, renamed and its folder fsync'd;
  only then is the offset after it committed;
* a kill can fall between the rename and the commit, so on every assignment the
  part files are scanned for the highest archived offset of each partition and the
  records at or below it are skipped: the files are the truth, the committed offset
  is a hint.

Erasure: the archiver also consumes the ``user-erasure`` control topic (requests keyed
by user id; the range assignor gives it the partition of the user's events). For each
request it removes the user's rows with an event time at or before the erasure, under
the id the archive stores (the pseudonym in pseudonymous mode), from the open parts
in memory and from every part file that holds any (:class:`PartEraser`: a file is
rewritten under its own name, atomically, so its offsets still say what is archived;
in slices between polls, so archiving goes on), and remembers the erasure
(:class:`ErasureMarkers`, a file in the archive root) so that the user's older events
read later (a lagging partition, a replay) are not archived either. The request's
offset is committed only after all of that is durable; a kill before the commit
re-runs it, which changes nothing the second time. One archiver per archive: a second
one rewriting the same files could undo the other's erasure.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client import Counter as PromCounter

from streams.config import StreamConfig
from streams.control import ErasureRequest, decode_control
from streams.events import BrowseEvent, Event, EventType, InvalidEvent, PurchaseEvent, decode_event
from streams.privacy import UserKeys

__all__ = [
    "COMPRESSION",
    "MARKERS_FILE",
    "SCHEMA",
    "ArchiveStats",
    "ArchiveWriter",
    "Archiver",
    "ArchiverMetrics",
    "ErasureMarkers",
    "PartErasure",
    "PartEraser",
    "PartName",
    "archived_offsets",
    "day_of",
    "erase_from_parts",
    "event_row",
    "remove_expired",
    "serve_metrics",
    "write_part",
]

log = logging.getLogger("recstream.archive")

#: The archive's columns (the contract with the training-data reader).
SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("ts", pa.float64(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("order_id", pa.string()),
        pa.field("quantity", pa.int64()),
        pa.field("price", pa.float64()),
        pa.field("dwell_ms", pa.int64()),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
    ]
)

#: Parquet codec: zstd was 2x smaller than snappy for the same write speed
#: (docs/BENCHMARKS.md, "Archive format").
COMPRESSION = "zstd"

_DAY_PREFIX = "day="
#: Seconds of part-file erasure work per turn of the archiver's loop: the consumer
#: keeps polling (``max.poll.interval.ms``) and archiving while a large archive is
#: scanned.
_ERASURE_SLICE_S = 0.5
_PART_RE = re.compile(
    r"^part-(?P<topic>.+)-(?P<partition>\d+)-(?P<first>\d+)-(?P<last>\d+)\.parquet$"
)
_TMP_SUFFIX = ".tmp"
#: A rewrite's temporary file: not a new part's, which a new owner of the partition
#: deletes on assignment (the rewrite may still be running then).
_ERASE_TMP_SUFFIX = ".erase.tmp"


@dataclass(frozen=True, slots=True)
class PartName:
    """The name of a part file: ``part-<topic>-<partition>-<first>-<last>.parquet``."""

    topic: str
    partition: int
    first: int
    last: int

    @property
    def filename(self) -> str:
        """The file name (topic names may contain ``-``; the three numbers end it)."""
        return f"part-{self.topic}-{self.partition}-{self.first}-{self.last}.parquet"

    @classmethod
    def parse(cls, filename: str) -> PartName | None:
        """The part a file name names, or None for anything else (temporary files...)."""
        match = _PART_RE.match(filename)
        if match is None:
            return None
        return cls(match["topic"], int(match["partition"]), int(match["first"]), int(match["last"]))


def day_of(ts: float) -> str:
    """The UTC day of a Unix time, ``YYYY-MM-DD``."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def _day_folders(root: Path) -> Iterable[tuple[dt.date, Path]]:
    if not root.is_dir():
        return
    for entry in os.scandir(root):
        if not entry.is_dir() or not entry.name.startswith(_DAY_PREFIX):
            continue
        try:
            day = dt.date.fromisoformat(entry.name[len(_DAY_PREFIX) :])
        except ValueError:
            continue
        yield day, Path(entry.path)


def archived_offsets(
    root: Path, clean: Collection[tuple[str, int]] = ()
) -> dict[tuple[str, int], int]:
    """The highest archived offset of each (topic, partition), from the part file names.

    Args:
        root: the archive root.
        clean: partitions whose temporary files (of a write a crash interrupted) are
            deleted on the way; only partitions this process now owns, so another
            archiver's write in progress is never touched.
    """
    highest: dict[tuple[str, int], int] = {}
    for _, folder in _day_folders(root):
        for entry in os.scandir(folder):
            if entry.name.endswith(_TMP_SUFFIX):
                stale = PartName.parse(entry.name[1 : -len(_TMP_SUFFIX)])
                if stale is not None and (stale.topic, stale.partition) in clean:
                    Path(entry.path).unlink(missing_ok=True)
                continue
            part = PartName.parse(entry.name)
            if part is not None:
                key = (part.topic, part.partition)
                highest[key] = max(highest.get(key, -1), part.last)
    return highest


def remove_expired(root: Path, retention_days: int, now: float | None = None) -> list[Path]:
    """Delete the day folders dated more than ``retention_days`` before today (UTC).

    Returns:
        The folders deleted.
    """
    today = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date()
    oldest_kept = today - dt.timedelta(days=retention_days)
    removed = []
    for day, folder in sorted(_day_folders(root)):
        if day < oldest_kept:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def event_row(
    event: Event, topic: str, partition: int, offset: int, user_id: str | None = None
) -> dict[str, Any]:
    """One archive row (:data:`SCHEMA`) of an accepted event.

    ``user_id`` replaces the event's (the pseudonym, in pseudonymous mode).
    """
    purchase = event if isinstance(event, PurchaseEvent) else None
    return {
        "event_id": event.event_id,
        "user_id": event.user_id if user_id is None else user_id,
        "item_id": event.item_id,
        "event_type": event.event_type.value,
        "ts": event.ts,
        "channel": event.channel.value,
        "order_id": purchase.order_id if purchase else None,
        "quantity": purchase.quantity if purchase else None,
        "price": purchase.price if purchase else None,
        "dwell_ms": event.dwell_ms if isinstance(event, BrowseEvent) else None,
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_part(root: Path, day: str, rows: list[dict[str, Any]]) -> Path:
    """Durably write one part: temporary name, fsync, rename, fsync of the folder.

    Args:
        root: the archive root.
        day: the UTC day of every row (``YYYY-MM-DD``).
        rows: rows of one (topic, partition), in offset order.

    Returns:
        The part's path.
    """
    first, last = rows[0], rows[-1]
    name = PartName(first["topic"], first["partition"], first["offset"], last["offset"])
    folder = root / f"{_DAY_PREFIX}{day}"
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        _fsync_dir(folder.parent)  # the new folder's entry must survive a crash too
    final = folder / name.filename
    _replace_durably(final, pa.Table.from_pylist(rows, schema=SCHEMA))
    _fsync_dir(folder)
    return final


def _replace_durably(final: Path, table: pa.Table, suffix: str = _TMP_SUFFIX) -> None:
    """Write ``table`` to a temporary name beside ``final``, fsync it, rename it over.

    The rename is atomic: a reader sees the old file or the new one, never a mix (one
    that has the old file open keeps reading it). The caller fsyncs the folder.
    """
    tmp = final.parent / f".{final.name}{suffix}"
    with open(tmp, "wb") as out:
        pq.write_table(table, out, compression=COMPRESSION)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, final)


@dataclass(frozen=True, slots=True)
class PartErasure:
    """What :func:`erase_from_parts` did."""

    scanned: int  # part files looked at
    read: int  # of them, files whose user column was read (statistics did not rule them out)
    rewritten: tuple[Path, ...]  # files that held rows of an erased user
    rows: int  # rows removed


def _may_hold(stats: pq.Statistics | None, users: list[str]) -> bool:
    """Whether a row group's user-id statistics leave room for one of ``users`` (sorted)."""
    if stats is None or not stats.has_min_max:
        return True
    first = bisect.bisect_left(users, stats.min)
    return first < len(users) and users[first] <= stats.max


def _erased_mask(table: pa.Table, users: pa.Array, erased_at: pa.Array) -> pa.ChunkedArray:
    """True for each row of an erased user whose event time is at or before its erasure."""
    at = pc.take(erased_at, pc.index_in(table["user_id"], value_set=users))
    return pc.fill_null(pc.less_equal(table["ts"], at), False)


def _erased_row(row: Mapping[str, Any], erased: Mapping[str, float]) -> bool:
    """Whether an archive row is of an erased user and at or before the erasure."""
    at = erased.get(row["user_id"])
    return at is not None and float(row["ts"]) <= at


class PartEraser:
    """Rewrites every part file holding rows of ``erased`` users without those rows.

    Only files that hold such a row are rewritten, each under its own name (so the
    offsets in the names still say what is archived; a part left without rows stays, as
    an empty file): a temporary file, fsync, an atomic rename, the folder's fsync.
    Finding them reads each file's footer, whose per-row-group statistics of
    ``user_id`` rule out the files whose id range misses every erased user, and
    otherwise the two columns ``user_id`` and ``ts`` (about 1 ms for a part of 5,000
    rows). Doing it twice changes nothing the second time.

    It works in slices (:meth:`run` with a budget), so that the archiver's loop keeps
    polling and archiving while a large archive is scanned. Files written after it
    started hold no row it removes (those rows were dropped before they were
    buffered); folders deleted meanwhile (retention) are passed over.

    Args:
        root: the archive root.
        erased: the id the archive stores (the pseudonym in pseudonymous mode) -> the
            erasure time; the user's rows with ``ts`` at or before it are removed.
    """

    def __init__(self, root: Path, erased: Mapping[str, float]) -> None:
        self._users = sorted(erased)
        self._value_set = pa.array(self._users, pa.string())
        self._erased_at = pa.array([erased[u] for u in self._users], pa.float64())
        self._files = self._walk(root)
        self.scanned = self.read = self.rows = 0
        self.rewritten: list[Path] = []

    @staticmethod
    def _walk(root: Path) -> Iterator[Path]:
        for _, folder in sorted(_day_folders(root)):
            # Stale temporary files of a rewrite a crash interrupted (one archiver per
            # archive: no other rewrite is in progress).
            for stale in folder.glob(f".part-*.parquet{_ERASE_TMP_SUFFIX}"):
                stale.unlink(missing_ok=True)
            yield from sorted(folder.glob("part-*.parquet"))

    def run(self, budget_s: float | None = None) -> bool:
        """Work through the files for about ``budget_s`` (None: to the end).

        Returns:
            True once every file is done (all rewrites durable).
        """
        deadline = None if budget_s is None else time.monotonic() + budget_s
        while True:  # one file at least per call, so that every call makes progress
            path = next(self._files, None)
            if path is None:
                return True
            try:
                self._erase_from(path)
            except FileNotFoundError:
                pass  # its day folder expired meanwhile
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def result(self) -> PartErasure:
        """What was done so far."""
        return PartErasure(self.scanned, self.read, tuple(self.rewritten), self.rows)

    def _erase_from(self, path: Path) -> None:
        self.scanned += 1
        with pq.ParquetFile(path) as parquet:
            column = parquet.schema_arrow.get_field_index("user_id")
            meta = parquet.metadata
            groups = [
                g
                for g in range(meta.num_row_groups)
                if _may_hold(meta.row_group(g).column(column).statistics, self._users)
            ]
            if not groups:
                return
            self.read += 1
            probe = parquet.read_row_groups(groups, columns=["user_id", "ts"])
            if not pc.any(_erased_mask(probe, self._value_set, self._erased_at)).as_py():
                return
            table = parquet.read()
        kept = table.filter(pc.invert(_erased_mask(table, self._value_set, self._erased_at)))
        _replace_durably(path, kept.cast(SCHEMA), _ERASE_TMP_SUFFIX)
        _fsync_dir(path.parent)
        self.rows += table.num_rows - kept.num_rows
        self.rewritten.append(path)


def erase_from_parts(root: Path, erased: Mapping[str, float]) -> PartErasure:
    """Remove the rows of ``erased`` users from every part file, at once (:class:`PartEraser`)."""
    eraser = PartEraser(root, erased)
    eraser.run()
    return eraser.result()


#: The file in the archive root that remembers erasures (no user id in it).
MARKERS_FILE = "erasure-markers.json"


class ErasureMarkers:
    """Erased users whose older events the archive must not take, kept for a window.

    Keys are the users' audit pseudonyms (:meth:`streams.privacy.UserKeys.audit`, the
    name the erasure audit uses; never an id), values the erasure time. They live in
    :data:`MARKERS_FILE` in the archive root, rewritten atomically on every change, so
    a restarted archiver still drops a replay of an erased user's old events. A marker
    is kept ``days`` (``RECSTREAM_PRIVACY_ERASURE_MARKER_DAYS``, at least the input
    topics' retention), as the worker keeps its own.

    Args:
        root: the archive root.
        days: how long a marker is kept.
    """

    def __init__(self, root: Path, days: float) -> None:
        self.path = root / MARKERS_FILE
        self.days = days
        self._erased: dict[str, float] = {}
        if self.path.is_file():
            document = orjson.loads(self.path.read_bytes())
            self._erased = {str(k): float(v) for k, v in document["erased"].items()}

    def __len__(self) -> int:
        return len(self._erased)

    def erased_at(self, pseudonym: str) -> float | None:
        """When the user was erased, or None."""
        return self._erased.get(pseudonym)

    def add(self, erased: Mapping[str, float], now: float) -> None:
        """Remember erasures (pseudonym -> time) and drop expired markers; durably."""
        for key, at in erased.items():
            self._erased[key] = max(at, self._erased.get(key, at))
        self.expire(now, save=False)
        self._save()

    def expire(self, now: float, *, save: bool = True) -> int:
        """Drop the markers older than the window; returns how many were dropped."""
        cutoff = now - self.days * 86_400.0
        old = [key for key, at in self._erased.items() if at < cutoff]
        for key in old:
            del self._erased[key]
        if old and save:
            self._save()
        return len(old)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.parent / f".{self.path.name}{_TMP_SUFFIX}"
        with open(tmp, "wb") as out:
            out.write(orjson.dumps({"schema_version": 1, "erased": self._erased}))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)


@dataclass
class ArchiveStats:
    """What an archiver has done since it started."""

    archived: int = 0
    skipped: int = 0
    parts: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    erasures: int = 0  # erasure requests done
    erased_rows: int = 0  # rows removed from part files and open parts
    of_erased: int = 0  # events not archived: their user was erased after them

    def line(self) -> str:
        """A one-line summary for the log."""
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items()))
        return (
            f"archived={self.archived} parts={self.parts} skipped={self.skipped} "
            f"rejected={rejected}"
            + (f" ({reasons})" if reasons else "")
            + f" erasures={self.erasures} erased_rows={self.erased_rows} "
            f"of_erased={self.of_erased}"
        )


class ArchiverMetrics:
    """The archiver's Prometheus counters (its own registry; a separate process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.archived = PromCounter(
            "recstream_archive_events_total", "Events written to the archive.", registry=r
        )
        self.rejected = PromCounter(
            "recstream_archive_rejected_total",
            "Input records the decoder rejects (not archived; the worker dead-letters them).",
            ["reason"],
            registry=r,
        )
        self.skipped = PromCounter(
            "recstream_archive_skipped_total",
            "Records re-read after a restart that the part files already hold.",
            registry=r,
        )
        self.parts = PromCounter("recstream_archive_parts_total", "Part files written.", registry=r)
        self.bytes = PromCounter(
            "recstream_archive_written_bytes_total", "Bytes of part files written.", registry=r
        )
        self.erasures = PromCounter(
            "recstream_archive_erasures_total",
            "Erasure requests done: the user's rows removed from the archive, durably.",
            registry=r,
        )
        self.erased_rows = PromCounter(
            "recstream_archive_erased_rows_total",
            "Rows of erased users removed from part files and open parts.",
            registry=r,
        )
        self.rewritten = PromCounter(
            "recstream_archive_rewritten_parts_total",
            "Part files rewritten without an erased user's rows.",
            registry=r,
        )
        self.of_erased = PromCounter(
            "recstream_archive_events_of_erased_users_total",
            "Events not archived because their user was erased at or after their time.",
            registry=r,
        )


@dataclass
class _Partition:
    """One assigned partition: its open part and how far it has been read."""

    topic: str
    partition: int
    archived: int  # highest offset the part files hold (-1: none)
    position: int | None = None  # next offset after the last record seen
    committed: int | None = None
    day: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    opened: float = 0.0  # monotonic time of the open part's first row

    def safe_offset(self) -> int | None:
        """The offset to commit: every accepted record before it is on disk."""
        if self.rows:
            return int(self.rows[0]["offset"])
        return self.position


@dataclass
class _ControlPartition:
    """One assigned partition of the erasure topic: how far it is read and done."""

    read: int | None = None  # next offset after the last record taken
    done: int | None = None  # next offset after the last request done durably
    committed: int | None = None


@dataclass(frozen=True, slots=True)
class _Request:
    partition: tuple[str, int]
    user_id: str


@dataclass
class _ErasureJob:
    """The part-file rewrite of the erasures taken before it started."""

    eraser: PartEraser
    targets: list[tuple[_ControlPartition, int]]  # offsets to commit when it is done
    names: list[str]  # audit pseudonyms, for the log
    started: float = field(default_factory=time.monotonic)


class ArchiveWriter:
    """The archiver without Kafka: decode, buffer, cut parts, write, say what to commit.

    Args:
        root: the archive root.
        inputs: input topic name -> the event type it carries.
        flush_records: a partition's open part is written at this many rows...
        flush_interval_s: ...or when its first row is this old (seconds).
        max_buffered: rows buffered over all open parts at most; past it the largest
            part is written at once (bounds memory when catching up on many partitions).
        metrics: counters to feed (optional).
        users: the names of users: :meth:`~streams.privacy.UserKeys.state` is the id
            the archive stores (the pseudonym in pseudonymous mode),
            :meth:`~streams.privacy.UserKeys.audit` the key of erasure markers; by
            default ids are stored as they are.
        erasure_topic: the control topic whose erasure requests are done here (None:
            none).
        marker_days: how long an erasure keeps the user's older events out.
    """

    def __init__(
        self,
        root: Path,
        inputs: Mapping[str, EventType],
        *,
        flush_records: int,
        flush_interval_s: float,
        max_buffered: int = 200_000,
        metrics: ArchiverMetrics | None = None,
        users: UserKeys | None = None,
        erasure_topic: str | None = None,
        marker_days: float = 14.0,
    ) -> None:
        self.root = root
        self.inputs = dict(inputs)
        self.users = users or UserKeys("", "recstream")
        self.erasure_topic = erasure_topic
        self.flush_records = flush_records
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.buffered = 0  # rows in all open parts
        self.metrics = metrics
        self.stats = ArchiveStats()
        self.markers = ErasureMarkers(root, marker_days)
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._control: dict[tuple[str, int], _ControlPartition] = {}
        self._pending: list[_Request] = []  # requests taken, markers not yet written
        self._next: dict[str, float] = {}  # users whose part files wait for the next job
        self._next_names: list[str] = []
        self._job: _ErasureJob | None = None

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Start owning partitions: read the part files for what is already archived."""
        wanted = [key for key in partitions if key not in self._parts and key not in self._control]
        for key in wanted:
            if key[0] == self.erasure_topic:
                self._control[key] = _ControlPartition()
        keys = [key for key in wanted if key[0] != self.erasure_topic]
        if not keys:
            return
        highest = archived_offsets(self.root, clean=set(keys))
        for key in keys:
            self._parts[key] = _Partition(key[0], key[1], highest.get(key, -1))
            log.info("assigned %s[%d]; archived through offset %d", *key, highest.get(key, -1))

    def revoke(self, partitions: Iterable[tuple[str, int]], *, flush: bool) -> None:
        """Stop owning partitions, writing their open parts first when ``flush``.

        With ``flush`` the erasure requests taken reach the markers and the open parts
        first (no file work: a revocation must be quick; a request whose part files
        are not done yet keeps its offset uncommitted, and whoever reads it next does it
        again); without (partitions lost to another member) the requests are dropped
        with the open parts.
        """
        keys = list(partitions)
        if flush:
            self._take_pending(time.time())
            self._settle()
        else:
            self._pending = [r for r in self._pending if r.partition not in keys]
        for key in keys:
            if key in self._control:
                if not flush:
                    del self._control[key]
                continue
            part = self._parts.get(key)
            if part is None:
                continue
            if flush:
                self._flush(part)
            else:
                self.buffered -= len(part.rows)
                self._parts.pop(key, None)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop partitions' state (after their last commit)."""
        for key in partitions:
            self._control.pop(key, None)
            part = self._parts.pop(key, None)
            if part is not None:
                self.buffered -= len(part.rows)

    def add(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        now: float | None = None,
    ) -> bool:
        """Take one record; True when it was accepted (buffered for the archive).

        ``now`` is the clock the decoder checks future timestamps against (the record's
        timestamp, so a record re-read after a restart gets the same verdict). A record
        of the erasure topic is taken as a request (:meth:`request`).
        """
        if topic == self.erasure_topic:
            self.request(partition, offset, key, value)
            return False
        part = self._parts.get((topic, partition))
        if part is None:
            self.assign([(topic, partition)])
            part = self._parts[(topic, partition)]
        if offset <= part.archived or (part.position is not None and offset < part.position):
            part.position = max(part.position or 0, offset + 1)
            self.stats.skipped += 1
            if self.metrics:
                self.metrics.skipped.inc()
            return False
        decoded = decode_event(self.inputs[topic], value, key, now=now)
        if isinstance(decoded, InvalidEvent):
            part.position = offset + 1
            self.stats.rejected[decoded.code.value] += 1
            if self.metrics:
                self.metrics.rejected.labels(decoded.code.value).inc()
            return False
        if self._erased_after(decoded):
            part.position = offset + 1
            self.stats.of_erased += 1
            if self.metrics:
                self.metrics.of_erased.inc()
            return False
        day = day_of(decoded.ts)
        if part.rows and day != part.day:
            self._flush(part)  # a part is one day's contiguous run: cut it here
        if not part.rows:
            part.day = day
            part.opened = time.monotonic()
        user = self.users.state(decoded.user_id)
        part.rows.append(event_row(decoded, topic, partition, offset, user))
        self.buffered += 1
        part.position = offset + 1
        if len(part.rows) >= self.flush_records:
            self._flush(part)
        elif self.buffered > self.max_buffered:
            self._flush(max(self._parts.values(), key=lambda p: len(p.rows)))
        return True

    def _erased_after(self, event: Event) -> bool:
        """Whether the event's user was erased at or after the event's time."""
        if not len(self.markers):
            return False
        erased_at = self.markers.erased_at(self.users.audit(event.user_id))
        return erased_at is not None and event.ts <= erased_at

    def request(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Take one record of the erasure topic; an erasure is done by :meth:`erase_pending`.

        Profile expiries (the workers' TTL sweep shares the topic) need nothing here; bad
        records are counted as rejects (the workers dead-letter them).
        """
        assert self.erasure_topic is not None
        key_ = (self.erasure_topic, partition)
        control = self._control.setdefault(key_, _ControlPartition())
        decoded = decode_control(value, key)
        if isinstance(decoded, InvalidEvent):
            self.stats.rejected[decoded.code.value] += 1
            if self.metrics:
                self.metrics.rejected.labels(decoded.code.value).inc()
        elif isinstance(decoded, ErasureRequest):
            self._pending.append(_Request(key_, decoded.user_id))
        control.read = offset + 1

    def erase_pending(self, now: float | None = None, budget_s: float | None = None) -> int:
        """Go on with the erasures taken; their offsets become committable when done.

        Each step is durable before the next: the markers (the users' older events
        read from now on are not archived), the rows in open parts (both at once, for
        every request taken), then the part files (:class:`PartEraser`, one job at a
        time over all requests taken before it started, worked on for at most
        ``budget_s`` per call; None: to the end). A crash anywhere leaves the requests
        uncommitted, and doing them again is harmless.

        Returns:
            The number of erasure requests completed by this call.
        """
        self._take_pending(time.time() if now is None else now)
        if self._job is None and self._next:
            # Every request read so far is in this job or an earlier one.
            targets = [(c, c.read) for c in self._control.values() if c.read is not None]
            self._job = _ErasureJob(PartEraser(self.root, self._next), targets, self._next_names)
            self._next, self._next_names = {}, []
        completed = 0
        if self._job is not None and self._job.eraser.run(budget_s):
            completed = self._complete(self._job)
            self._job = None
        self._settle()
        return completed

    def _settle(self) -> None:
        """With no erasure unfinished, every control record read is done."""
        if self._job is None and not self._next:
            for control in self._control.values():
                control.done = control.read

    def _take_pending(self, now: float) -> None:
        """Markers and open parts for the requests taken; their files are queued."""
        requests, self._pending = self._pending, []
        if not requests:
            return
        user_ids = [r.user_id for r in requests]
        names = [self.users.audit(u) for u in user_ids]
        self.markers.add(dict.fromkeys(names, now), now)
        # Rows at or before the erasure go, later ones (the user came back) stay: the
        # markers' rule. A marker's time can be later than ``now`` (a second request
        # for the user), never earlier.
        erased = {
            self.users.state(u): self.markers.erased_at(self.users.audit(u)) or now
            for u in user_ids
        }
        buffered = 0
        for part in self._parts.values():
            kept = [row for row in part.rows if not _erased_row(row, erased)]
            buffered += len(part.rows) - len(kept)
            part.rows = kept
        self.buffered -= buffered
        self.stats.erased_rows += buffered
        if self.metrics:
            self.metrics.erased_rows.inc(buffered)
        for user, at in erased.items():
            self._next[user] = max(at, self._next.get(user, at))
        self._next_names.extend(names)
        log.info(
            "erasing %d user(s) from the archive (%s): %d buffered rows removed, part files next",
            len(names),
            ", ".join(sorted(set(names))),
            buffered,
        )

    def _complete(self, job: _ErasureJob) -> int:
        for control, offset in job.targets:
            if control.done is None or offset > control.done:
                control.done = offset
        done = job.eraser.result()
        self.stats.erasures += len(job.names)
        self.stats.erased_rows += done.rows
        if self.metrics:
            self.metrics.erasures.inc(len(job.names))
            self.metrics.erased_rows.inc(done.rows)
            self.metrics.rewritten.inc(len(done.rewritten))
        log.info(
            "erased %d user(s) from the archive (%s): %d rows from %d of %d part files "
            "(%d read) in %.2f s",
            len(job.names),
            ", ".join(sorted(set(job.names))),
            done.rows,
            len(done.rewritten),
            done.scanned,
            done.read,
            time.monotonic() - job.started,
        )
        return len(job.names)

    def flush_due(self, now: float | None = None) -> int:
        """Write the open parts whose first row is at least ``flush_interval_s`` old."""
        now = time.monotonic() if now is None else now
        due = [
            p for p in self._parts.values() if p.rows and now - p.opened >= self.flush_interval_s
        ]
        for part in due:
            self._flush(part)
        return len(due)

    def flush_all(self) -> None:
        """Write every open part (shutdown), after the erasures taken reach them.

        A part-file job still running is left: its requests stay uncommitted and are
        done again after the restart.
        """
        self._take_pending(time.time())
        self._settle()
        for part in self._parts.values():
            if part.rows:
                self._flush(part)

    def _flush(self, part: _Partition) -> None:
        rows, part.rows = part.rows, []
        if not rows:  # an erasure emptied it
            return
        self.buffered -= len(rows)
        path = write_part(self.root, part.day, rows)
        part.archived = max(part.archived, int(rows[-1]["offset"]))
        self.stats.archived += len(rows)
        self.stats.parts += 1
        if self.metrics:
            self.metrics.archived.inc(len(rows))
            self.metrics.parts.inc()
            self.metrics.bytes.inc(path.stat().st_size)

    def to_commit(self) -> dict[tuple[str, int], int]:
        """Offsets safe to commit that are ahead of the last commit."""
        out = {}
        for key, part in self._parts.items():
            safe = part.safe_offset()
            if safe is not None and (part.committed is None or safe > part.committed):
                out[key] = safe
        for key, control in self._control.items():
            if control.done is not None and (
                control.committed is None or control.done > control.committed
            ):
                out[key] = control.done
        return out

    def committed(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Record that ``offsets`` were committed."""
        for key, offset in offsets.items():
            part = self._parts.get(key)
            if part is not None:
                part.committed = offset
            control = self._control.get(key)
            if control is not None:
                control.committed = offset


class Archiver:
    """The ``recstream archive`` process: a consumer group feeding an :class:`ArchiveWriter`.

    It consumes the ``user-erasure`` topic too and does its erasure requests in the
    archive (:meth:`ArchiveWriter.erase_pending`).

    Args:
        stream: the stream configuration (cluster, topics, app id, consumer timings,
            privacy: pseudonym keys and how long erasure markers are kept).
        root: the archive root.
        retention_days: day folders older than this are deleted.
        flush_records: rows per part at most.
        flush_interval_s: longest a row waits in an open part, seconds.
        max_buffered: rows buffered over all partitions at most (memory bound).
        retention_interval_s: how often expired day folders are looked for, seconds.
        metrics: counters to feed (optional).
    """

    def __init__(
        self,
        stream: StreamConfig,
        root: Path,
        *,
        retention_days: int,
        flush_records: int,
        flush_interval_s: float,
        max_buffered: int = 200_000,
        retention_interval_s: float = 3600.0,
        metrics: ArchiverMetrics | None = None,
    ) -> None:
        self.stream = stream
        self.root = root
        self.retention_days = retention_days
        self.retention_interval_s = retention_interval_s
        self.writer = ArchiveWriter(
            root,
            stream.topics.inputs(),
            flush_records=flush_records,
            flush_interval_s=flush_interval_s,
            max_buffered=max_buffered,
            metrics=metrics,
            # Pseudonymous mode reaches the archive too: the training log then holds
            # the same pseudonyms as the profiles, and erasure markers are keyed by
            # the audit's pseudonyms.
            users=UserKeys(
                stream.data_privacy.user_key.get_secret_value(),
                stream.privacy.pseudonym_key.get_secret_value(),
            ),
            erasure_topic=stream.topics.user_erasure,
            marker_days=stream.data_privacy.erasure_marker_days,
        )
        self.group_id = f"{stream.app_id}-archiver"
        self._consumer: Consumer | None = None

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka settings of the archiver's consumer."""
        timings = self.stream.consumer
        return {
            **self.stream.kafka.client_config(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Range gives one member partition p of every topic: an erasure request
            # (keyed by the user) reaches the member that buffers the user's events.
            "partition.assignment.strategy": "range",
            "session.timeout.ms": int(timings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(timings.heartbeat_interval_s * 1000),
            "fetch.wait.max.ms": timings.fetch_max_wait_ms,
        }

    def run(self, stop: Callable[[], bool]) -> ArchiveStats:
        """Archive until ``stop()`` is true, then write the open parts, commit and leave."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._expire()
        consumer = self._consumer = Consumer(self.consumer_config())
        consumer.subscribe(
            [*self.writer.inputs, self.stream.topics.user_erasure],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        next_expiry = time.monotonic() + self.retention_interval_s
        next_log = time.monotonic() + 30.0
        next_commit = 0.0
        parts_committed = 0
        try:
            while not stop():
                for msg in consumer.consume(500, timeout=0.2):
                    self._take(msg)
                erased = self.writer.erase_pending(budget_s=_ERASURE_SLICE_S)
                self.writer.flush_due()
                now = time.monotonic()
                # Commit after every new part (cut by age, size or day) and every erasure,
                # and at least every flush interval: partitions that only saw rejects or
                # skips move on too.
                if erased or self.writer.stats.parts != parts_committed or now >= next_commit:
                    parts_committed = self.writer.stats.parts
                    next_commit = now + self.writer.flush_interval_s
                    self._commit()
                if now >= next_expiry:
                    self._expire()
                    next_expiry = now + self.retention_interval_s
                if now >= next_log:
                    log.info("archive: %s", self.writer.stats.line())
                    next_log = now + 30.0
            self.writer.flush_all()
            self._commit()
        finally:
            # Everything is written and committed: the revocation close() triggers has
            # nothing left to do (and a commit from inside close() can fail).
            self._consumer = None
            consumer.close()
        log.info("archiver stopped: %s", self.writer.stats.line())
        return self.writer.stats

    def _take(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal():
                raise RuntimeError(f"fatal consumer error: {err}")
            log.warning("consumer error: %s", err)
            return
        kind, stamp = msg.timestamp()
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        now = stamp / 1000 if kind != TIMESTAMP_NOT_AVAILABLE and stamp > 0 else None
        self.writer.add(topic, partition, offset, msg.key(), msg.value(), now)

    def _commit(self) -> None:
        offsets = self.writer.to_commit()
        if not offsets or self._consumer is None:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            # Only a hint is lost: the part files say what is archived.
            log.warning("offset commit failed (retried at the next flush): %s", exc)
            return
        self.writer.committed(offsets)

    def _expire(self) -> None:
        for folder in remove_expired(self.root, self.retention_days):
            log.info("retention: deleted %s", folder)
        if dropped := self.writer.markers.expire(time.time()):
            log.info("retention: dropped %d expired erasure marker(s)", dropped)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.writer.assign((tp.topic, tp.partition) for tp in partitions)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._consumer is None:  # closing: already flushed and committed
            return
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.writer.revoke(keys, flush=True)
        try:
            self._commit()
        finally:
            self.writer.forget(keys)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own them already: writing now could duplicate its parts.
        self.writer.revoke([(tp.topic, tp.partition) for tp in partitions], flush=False)


def serve_metrics(metrics: ArchiverMetrics, port: int) -> None:
    """Serve ``/metrics`` of the archiver's registry on ``port`` (a daemon thread)."""
    start_http_server(port, registry=metrics.registry)
