"""Erasure in the archive without Kafka: parts rewritten, buffers cleaned, markers kept."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq

from streams.archive import (
    MARKERS_FILE,
    SCHEMA,
    ArchiverMetrics,
    ArchiveWriter,
    archived_offsets,
    erase_from_parts,
)
from streams.control import erasure_request_bytes
from streams.events import EventType
from streams.privacy import UserKeys

TOPICS = {"clicks-x": EventType.CLICK, "browses-x": EventType.BROWSE, "buy-x": EventType.PURCHASE}
ERASURE = "erasure-x"
DAY1 = 1_790_000_000.0  # 2026-09-21
DAY2 = DAY1 + 86_400
ERASED_AT = DAY2 + 3_600  # the clock when the request is done (after every event above)


def click(event_id: str, user: str, ts: float = DAY1) -> bytes:
    return orjson.dumps({"event_id": event_id, "user_id": user, "item_id": "i", "ts": ts})


def writer(root: Path, **kw: object) -> ArchiveWriter:
    opts: dict[str, object] = {
        "flush_records": 1000,
        "flush_interval_s": 60.0,
        "erasure_topic": ERASURE,
        **kw,
    }
    return ArchiveWriter(root, TOPICS, **opts)  # type: ignore[arg-type]


def rows(root: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for path in sorted(root.glob("day=*/part-*.parquet")):
        out.extend(pq.read_table(path).to_pylist())
    return out


def files(root: Path) -> dict[str, tuple[int, int]]:
    """Part file -> (inode, mtime ns): a rewrite changes the inode."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.glob("day=*/part-*.parquet"))
    }


def archive_two_users(w: ArchiveWriter) -> None:
    """Alice and bob in parts of two days, two partitions, two topics; some buffered."""
    offset = 0
    for day in (DAY1, DAY2):
        for user in ("alice", "bob", "alice"):
            w.add("clicks-x", 0, offset, user.encode(), click(f"c{offset}", user, day))
            offset += 1
    w.add("clicks-x", 1, 0, b"bob", click("solo-bob", "bob"))  # a part without alice
    browse = {"event_id": "b0", "user_id": "alice", "item_id": "i", "ts": DAY1, "dwell_ms": 5}
    w.add("browses-x", 0, 0, b"alice", orjson.dumps(browse))
    w.flush_all()
    # Still buffered (open parts) when the request comes:
    w.add("clicks-x", 0, offset, b"alice", click("open-alice", "alice", DAY2))
    w.add("clicks-x", 0, offset + 1, b"bob", click("open-bob", "bob", DAY2))


def test_an_erasure_removes_the_users_rows_from_every_part_and_the_open_parts(
    tmp_path: Path,
) -> None:
    metrics = ArchiverMetrics()
    w = writer(tmp_path, metrics=metrics)
    w.assign([("clicks-x", 0), ("clicks-x", 1), ("browses-x", 0), (ERASURE, 0)])
    archive_two_users(w)
    before_rows = rows(tmp_path)
    before_files = files(tmp_path)
    offsets = archived_offsets(tmp_path)

    w.add(ERASURE, 0, 7, b"alice", erasure_request_bytes("alice", ERASED_AT))
    assert (ERASURE, 0) not in w.to_commit()  # read, not done: nothing to commit yet
    assert w.erase_pending(now=ERASED_AT) == 1
    assert w.to_commit()[(ERASURE, 0)] == 8

    w.flush_all()
    after = rows(tmp_path)
    assert not [r for r in after if r["user_id"] == "alice"]
    bob_before = [r for r in before_rows if r["user_id"] == "bob"]
    assert [r for r in after if r["user_id"] == "bob" and r["event_id"] != "open-bob"] == bob_before
    assert "open-bob" in {r["event_id"] for r in after}
    # Part names (the offsets the restart logic reads) do not change; the browse part,
    # all alice, stays as an empty file; bob's solo part is not rewritten.
    after_files = files(tmp_path)
    assert set(before_files) <= set(after_files)
    assert archived_offsets(tmp_path) == {**offsets, ("clicks-x", 0): 7}
    empty = tmp_path / "day=2026-09-21" / "part-browses-x-0-0-0.parquet"
    assert pq.read_table(empty).num_rows == 0
    assert pq.read_table(empty).schema.equals(SCHEMA, check_metadata=False)
    solo = "day=2026-09-21/part-clicks-x-1-0-0.parquet"
    assert after_files[solo] == before_files[solo]
    assert not list(tmp_path.rglob("*.tmp"))
    assert w.stats.erasures == 1 and w.stats.erased_rows == 6  # 4 + browse + open part
    assert metrics.erasures._value.get() == 1
    assert metrics.erased_rows._value.get() == 6
    assert metrics.rewritten._value.get() == 3  # two clicks parts and the browse part


def test_the_users_older_events_read_later_are_not_archived_and_newer_ones_are(
    tmp_path: Path,
) -> None:
    w = writer(tmp_path)
    w.add(ERASURE, 0, 0, b"alice", erasure_request_bytes("alice", ERASED_AT))
    w.erase_pending(now=ERASED_AT)
    assert not w.add("clicks-x", 0, 0, b"alice", click("late", "alice", DAY1))  # a replay
    assert w.to_commit()[("clicks-x", 0)] == 1  # the dropped event moves the offset on
    assert w.add("clicks-x", 0, 1, b"alice", click("back", "alice", ERASED_AT + 1))
    assert w.add("clicks-x", 0, 2, b"bob", click("bob", "bob", DAY1))
    assert w.stats.of_erased == 1
    w.flush_all()
    assert sorted(str(r["event_id"]) for r in rows(tmp_path)) == ["back", "bob"]

    # A restarted archiver remembers: the marker is a file in the archive root.
    again = writer(tmp_path)
    assert not again.add("clicks-x", 1, 0, b"alice", click("late-2", "alice", DAY2))
    marker = (tmp_path / MARKERS_FILE).read_bytes()
    assert b"alice" not in marker
    assert orjson.loads(marker)["erased"] == {UserKeys("", "recstream").audit("alice"): ERASED_AT}


def test_a_crash_between_the_rewrite_and_the_commit_reruns_the_erasure_harmlessly(
    tmp_path: Path,
) -> None:
    first = writer(tmp_path)
    archive_two_users(first)
    first.add(ERASURE, 0, 0, b"alice", erasure_request_bytes("alice", ERASED_AT))
    first.erase_pending(now=ERASED_AT)
    first.flush_all()
    done = rows(tmp_path)
    stamps = files(tmp_path)
    # Killed before the commit: everything is read again from the committed offsets.
    second = writer(tmp_path)
    second.assign([("clicks-x", 0), ("clicks-x", 1), ("browses-x", 0), (ERASURE, 0)])
    archive_two_users(second)
    second.add(ERASURE, 0, 0, b"alice", erasure_request_bytes("alice", ERASED_AT))
    assert second.erase_pending(now=ERASED_AT + 60) == 1
    second.flush_all()
    assert rows(tmp_path) == done
    assert files(tmp_path) == stamps  # no file rewritten the second time
    # Every record re-read is below a part's last offset (alice's open-part event too:
    # bob's later one was written), so all are skipped and none rewritten.
    assert second.stats.erased_rows == 0 and second.stats.skipped == 10


def test_pseudonymous_mode_erases_the_pseudonym_of_the_requested_id(tmp_path: Path) -> None:
    keys = UserKeys("shop-key", "log-key")
    w = writer(tmp_path, users=keys)
    w.add("clicks-x", 0, 0, b"alice", click("a", "alice"))
    w.add("clicks-x", 0, 1, b"bob", click("b", "bob"))
    w.flush_all()
    assert {r["user_id"] for r in rows(tmp_path)} == {keys.state("alice"), keys.state("bob")}
    w.add(ERASURE, 0, 0, b"alice", erasure_request_bytes("alice", ERASED_AT))
    w.erase_pending(now=ERASED_AT)
    assert [r["user_id"] for r in rows(tmp_path)] == [keys.state("bob")]
    assert not any(b"alice" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert not w.add("clicks-x", 0, 2, b"alice", click("late", "alice"))


def test_other_control_records_are_taken_without_an_erasure(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.add("clicks-x", 0, 0, b"alice", click("a", "alice"))
    w.flush_all()
    expiry = orjson.dumps({"schema_version": 1, "expire": "alice", "before": DAY1})
    w.add(ERASURE, 1, 0, b"alice", expiry)  # the workers' TTL sweep: not for the archive
    w.add(ERASURE, 1, 1, b"mallory", erasure_request_bytes("alice", ERASED_AT))  # wrong key
    w.add(ERASURE, 1, 2, b"alice", b"{not json")
    assert w.erase_pending(now=ERASED_AT) == 0
    assert w.to_commit()[(ERASURE, 1)] == 3
    assert [r["event_id"] for r in rows(tmp_path)] == ["a"]
    assert w.stats.rejected == {"key_mismatch": 1, "invalid_json": 1}
    assert not (tmp_path / MARKERS_FILE).exists()


def test_a_revocation_writes_markers_at_once_and_leaves_the_files_uncommitted(
    tmp_path: Path,
) -> None:
    """A revocation must be quick: the requests taken reach the markers and the open
    parts, not the files; so their offsets stay uncommitted (lost ones are dropped)."""
    w = writer(tmp_path)
    w.assign([("clicks-x", 0), (ERASURE, 0), (ERASURE, 1)])
    w.add("clicks-x", 0, 0, b"alice", click("a", "alice"))
    w.add("clicks-x", 0, 1, b"bob", click("b", "bob"))
    w.flush_all()
    w.add("clicks-x", 0, 2, b"alice", click("open", "alice"))
    w.add(ERASURE, 0, 0, b"alice", erasure_request_bytes("alice", ERASED_AT))
    w.add(ERASURE, 1, 0, b"bob", erasure_request_bytes("bob", ERASED_AT))
    w.revoke([(ERASURE, 1)], flush=False)  # another member owns it now and does it
    w.revoke([("clicks-x", 0), (ERASURE, 0)], flush=True)
    assert (ERASURE, 0) not in w.to_commit() and (ERASURE, 1) not in w.to_commit()
    assert sorted(str(r["event_id"]) for r in rows(tmp_path)) == ["a", "b"]  # not "open"
    assert writer(tmp_path).markers.erased_at(UserKeys("", "recstream").audit("alice"))
    assert not writer(tmp_path).markers.erased_at(UserKeys("", "recstream").audit("bob"))
    assert w.erase_pending() == 1  # the job goes on until the partitions are forgotten
    assert w.to_commit()[(ERASURE, 0)] == 1
    assert [r["user_id"] for r in rows(tmp_path)] == ["bob"]


def test_part_files_are_erased_in_slices_and_committed_after_the_last(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.assign([(ERASURE, 0)])
    for offset in range(40):  # 40 parts of a day each, half of them alice's
        user = "alice" if offset % 2 else "bob"
        ts = DAY1 + offset * 86_400
        w.add("clicks-x", 0, offset, user.encode(), click(f"e{offset}", user, ts))
    w.flush_all()
    w.add(ERASURE, 0, 0, b"alice", erasure_request_bytes("alice", ERASED_AT))
    later = DAY1 + 50 * 86_400
    slices = 0
    while not w.erase_pending(now=later, budget_s=0.0):
        slices += 1
        if slices == 3:  # meanwhile: archiving goes on, a second request waits its turn
            assert not w.add("clicks-x", 0, 40, b"alice", click("late", "alice", DAY1))
            assert w.add("clicks-x", 0, 41, b"carol", click("carol", "carol", DAY1))
            w.add(ERASURE, 0, 1, b"carol", erasure_request_bytes("carol", later))
        assert (ERASURE, 0) not in w.to_commit()
    assert slices == 40  # budget 0: one file per turn (then one that finds no more)
    assert w.to_commit()[(ERASURE, 0)] == 1  # carol's request is in the next job
    assert w.erase_pending(now=later) == 1
    assert w.to_commit()[(ERASURE, 0)] == 2
    w.flush_all()
    assert {r["user_id"] for r in rows(tmp_path)} == {"bob"}


def test_markers_expire_after_their_window(tmp_path: Path) -> None:
    w = writer(tmp_path, marker_days=2.0)
    w.add(ERASURE, 0, 0, b"alice", erasure_request_bytes("alice", DAY1))
    w.erase_pending(now=DAY1)
    assert w.markers.expire(DAY1 + 86_400) == 0
    assert w.markers.expire(DAY1 + 3 * 86_400) == 1
    assert writer(tmp_path).add("clicks-x", 0, 0, b"alice", click("a", "alice", DAY1 - 1))


def test_parts_whose_statistics_rule_the_users_out_are_not_read(tmp_path: Path) -> None:
    w = writer(tmp_path)
    for n, user in enumerate(["a1", "a2", "m1", "m2", "z1", "z2"]):
        w.add("clicks-x", n // 2, n % 2, user.encode(), click(f"e{n}", user))
    w.flush_all()
    done = erase_from_parts(tmp_path, {"m2": ERASED_AT, "absent": ERASED_AT})
    # a1..a2 and z1..z2 cannot hold "absent" or "m2" (min/max); m1..m2 is read.
    assert (done.scanned, done.read, done.rows) == (3, 1, 1)
    assert [p.name for p in done.rewritten] == ["part-clicks-x-1-0-1.parquet"]
    assert erase_from_parts(tmp_path, {"m2": ERASED_AT}).rewritten == ()


def test_rows_after_the_erasure_time_are_kept(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.add("clicks-x", 0, 0, b"alice", click("old", "alice", DAY1))
    w.add("clicks-x", 0, 1, b"alice", click("new", "alice", DAY2))
    w.flush_all()
    done = erase_from_parts(tmp_path, {"alice": DAY1 + 1})
    assert done.rows == 1 and [r["event_id"] for r in rows(tmp_path)] == ["new"]


def test_a_reader_sees_the_old_file_or_the_new_one_never_a_mix(tmp_path: Path) -> None:
    """The rewrite renames a complete file over the old one: a reader that opened the old
    one (a training run) reads it whole; one opening after gets the new one."""
    w = writer(tmp_path, flush_records=10_000)
    for n in range(5_000):
        user = "alice" if n % 2 else "bob"
        w.add("clicks-x", 0, n, user.encode(), click(f"e{n}", user))
    w.flush_all()
    [path] = tmp_path.glob("day=*/part-*.parquet")
    with open(path, "rb") as opened:
        erase_from_parts(tmp_path, {"alice": ERASED_AT})
        old = pq.read_table(opened)
    assert old.num_rows == 5_000 and old.column("user_id").to_pylist().count("alice") == 2_500
    new = pq.read_table(path)
    assert new.num_rows == 2_500 and set(new.column("user_id").to_pylist()) == {"bob"}


def test_a_stale_temporary_file_of_a_rewrite_is_removed_by_the_next(tmp_path: Path) -> None:
    """A rewrite's temporary file is not a new part's: an assignment leaves it (the
    rewrite may still be running); the next erasure job removes a crash's leftover."""
    w = writer(tmp_path)
    w.add("clicks-x", 0, 0, b"alice", click("a", "alice"))
    w.flush_all()
    [path] = tmp_path.glob("day=*/part-*.parquet")
    stale = path.parent / f".{path.name}.erase.tmp"
    stale.write_bytes(b"half a rewrite")  # killed mid-rewrite: the part itself is whole
    again = writer(tmp_path)
    again.assign([("clicks-x", 0)])
    assert stale.exists() and archived_offsets(tmp_path) == {("clicks-x", 0): 0}
    assert erase_from_parts(tmp_path, {"nobody": ERASED_AT}).rewritten == ()
    assert not stale.exists()
    assert pq.read_table(path).num_rows == 1
