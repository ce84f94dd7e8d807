"""`recstream archive` on a real broker: SIGKILLed twice mid-stream, every event once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition

from deploy.lab.brokers import Broker
from deploy.lab.scratch import FAST_GROUP_SETTINGS, ScratchDeployment, free_port, lab_settings
from streams.archive import SCHEMA, day_of
from streams.client import EventProducer
from streams.control import erasure_request_bytes
from streams.events import EventType

from .conftest import PARTITIONS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


class ArchiverProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deploy.cli", "archive"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def archived(root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(root.glob("day=*/part-*.parquet")):
        table = pq.read_table(path)
        assert table.schema.equals(SCHEMA, check_metadata=False), path
        for row in table.to_pylist():
            row["_day"] = path.parent.name
            rows.append(row)
    return rows


def make_events(batch: int, n: int, now: float) -> tuple[list[tuple[str, str, bytes]], set[str]]:
    """(kind, key, value) records: mostly valid, over two UTC days, some invalid."""
    records: list[tuple[str, str, bytes]] = []
    valid: set[str] = set()
    for i in range(n):
        user = f"u{i % 37}"
        event_id = f"b{batch}-{i}"
        ts = now - (86_400 if i % 3 == 0 else 60) - i
        base: dict[str, Any] = {"event_id": event_id, "user_id": user, "item_id": f"sku-{i % 11}"}
        kind = ("click", "browse", "purchase")[i % 3]
        event: dict[str, Any] = {**base, "ts": ts}
        if kind == "browse" and i % 2:
            event["dwell_ms"] = 100 + i
        if kind == "purchase":
            event.update(order_id=f"o{i}", price=1.5, quantity=1 + i % 3)
        key = user
        if i % 10 == 9:  # invalid: each of these is dead-lettered by the worker
            event["event_id"] = f"bad-{event_id}"
            broken = i // 10 % 3
            if broken == 0:
                records.append((kind, key, b"{not json"))
                continue
            if broken == 1:
                key = "someone-else"
            else:
                event["ts"] = now + 10 * 86_400
        else:
            valid.add(event_id)
        records.append((kind, key, orjson.dumps(event)))
    return records, valid


def committed(
    client_config: dict[str, str], group_id: str, tps: list[TopicPartition]
) -> dict[tuple[str, int], int]:
    consumer = Consumer({**client_config, "group.id": group_id})
    try:
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(tps, 10)}
    finally:
        consumer.close()


def wait_for(check: Any, timeout_s: float, what: str, proc: ArchiverProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        assert proc.alive(), proc.log_path.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{proc.log_path.read_text()[-3000:]}")


def test_archive_survives_sigkill_without_loss_or_duplicates(
    broker: Broker, tmp_path: Path
) -> None:
    scratch = ScratchDeployment.create(broker, "archive", PARTITIONS)
    root = tmp_path / "archive"
    settings = lab_settings(
        kafka_bootstrap_servers=scratch.bootstrap_servers,
        app_id=scratch.app_id,
        topic_clicks=scratch.topics.clicks,
        topic_browses=scratch.topics.browses,
        topic_purchases=scratch.topics.purchases,
        topic_recommendations=scratch.topics.recommendations,
        topic_dead_letter=scratch.topics.dead_letter,
        topic_user_erasure=scratch.topics.user_erasure,
        archive_dir=root,
        archive_flush_records=25,
        archive_flush_interval_s=0.5,
        fetch_max_wait_ms=50,
        log_level="INFO",
        **FAST_GROUP_SETTINGS,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"
    proc = ArchiverProcess(env, tmp_path / "archiver.log")
    topic_of = {
        "click": scratch.topics.clicks,
        "browse": scratch.topics.browses,
        "purchase": scratch.topics.purchases,
    }
    now = time.time()
    expected: dict[str, str] = {}  # event_id -> event type
    producer = EventProducer(scratch.client_config, scratch.topics)

    def send(batch: int) -> None:
        records, valid = make_events(batch, 150, now)
        for kind, key, value in records:
            producer.send_raw(topic_of[kind], key, value)
            payload = orjson.loads(value) if value.startswith(b'{"') else {}
            if payload.get("event_id") in valid:
                expected[payload["event_id"]] = kind
        producer.flush()

    for batch in range(3):
        proc.start()
        send(batch)
        if batch < 2:
            # Mid-stream: some of this batch is on disk, not all of it.
            enough = len(expected) - 100
            wait_for(lambda n=enough: len(archived(root)) >= n, 40, f"batch {batch} in part", proc)
            assert proc.signal(signal.SIGKILL) == -signal.SIGKILL
    wait_for(
        lambda: {r["event_id"] for r in archived(root)} >= set(expected), 40, "every event", proc
    )
    assert proc.signal(signal.SIGTERM) == 0
    # A graceful stop commits everything it read (rejects included).
    tps = [TopicPartition(t, p) for t in topic_of.values() for p in range(PARTITIONS)]
    probe = Consumer({**scratch.client_config, "group.id": f"probe-{scratch.tag}"})
    try:
        ends = {(tp.topic, tp.partition): probe.get_watermark_offsets(tp, 10)[1] for tp in tps}
    finally:
        probe.close()
    assert committed(scratch.client_config, f"{scratch.app_id}-archiver", tps) == ends

    # The committed offset is only a hint: a group without one (a new app id) reads
    # everything again, and the files say it is all archived already.
    port = free_port()
    again = settings.replace(app_id=f"{scratch.app_id}-again", archive_metrics_port=port)
    proc = ArchiverProcess({**env, **again.to_env()}, tmp_path / "archiver-again.log")
    before = len(archived(root))
    proc.start()
    wait_for(
        lambda: committed(scratch.client_config, f"{again.stream.app_id}-archiver", tps) == ends,
        40,
        "a re-read of everything",
        proc,
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        page = resp.read().decode()
    metrics = dict(line.split(" ", 1) for line in page.splitlines() if line[:1] != "#")
    assert float(metrics["recstream_archive_events_total"]) == 0
    assert float(metrics["recstream_archive_skipped_total"]) >= 400  # of 450 records
    assert proc.signal(signal.SIGTERM) == 0
    assert len(archived(root)) == before
    stats = proc.log_path.read_text().rsplit("archiver stopped: ", 1)[1]
    assert stats.startswith("archived=0 parts=0 skipped=")  # rejects past the last part re-decode
    rows = archived(root)
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicates in the archive"
    assert set(ids) == set(expected)
    assert not [i for i in ids if i.startswith("bad-")]
    for row in rows:
        assert row["event_type"] == expected[row["event_id"]]
        assert row["topic"] == topic_of[row["event_type"]]
        assert row["_day"] == f"day={day_of(row['ts'])}"
        assert 0 <= row["partition"] < PARTITIONS
        is_purchase = row["event_type"] == "purchase"
        assert (row["order_id"] is not None) == is_purchase
        assert (row["price"] is not None) == is_purchase
        if row["event_type"] != "browse":
            assert row["dwell_ms"] is None
    assert len({r["_day"] for r in rows}) >= 2
    assert any(r["dwell_ms"] is not None for r in rows)
    assert not list(root.glob("day=*/.*.tmp"))


def archiver_settings(scratch: ScratchDeployment, root: Path, **changes: Any) -> Any:
    base: dict[str, Any] = {
        "kafka_bootstrap_servers": scratch.bootstrap_servers,
        "app_id": scratch.app_id,
        **scratch.topic_settings(),
        "archive_dir": root,
        "archive_flush_records": 25,
        "archive_flush_interval_s": 0.3,
        "fetch_max_wait_ms": 50,
        "log_level": "INFO",
        **FAST_GROUP_SETTINGS,
    }
    return lab_settings(**{**base, **changes})


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        page = resp.read().decode()
    return {
        name: float(value)
        for name, value in (line.split(" ", 1) for line in page.splitlines() if line[:1] != "#")
    }


def test_forget_reaches_the_archive_and_a_replay_does_not_bring_the_user_back(
    broker: Broker, tmp_path: Path
) -> None:
    """Events of alice and bob archived; `recstream forget alice`; no row of alice in any
    part file, bob's rows as they were; alice's old events replayed are not archived;
    and a re-run of the request (a kill before its commit: here a fresh consumer group
    reading everything again) changes nothing."""
    scratch = ScratchDeployment.create(broker, "archive-erasure", PARTITIONS)
    root = tmp_path / "archive"
    port = free_port()
    settings = archiver_settings(scratch, root, archive_metrics_port=port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"
    topics = scratch.topics
    now = time.time()

    def events(user: str, tag: str, n: int) -> list[tuple[str, bytes]]:
        out = []
        for i in range(n):
            kind = ("click", "browse", "purchase")[i % 3]
            event: dict[str, Any] = {
                "event_id": f"{tag}-{i}",
                "user_id": user,
                "item_id": f"sku-{i % 7}",
                "ts": now - 7_200 - 86_400 * (i % 2) + i,  # two UTC days, before the erasure
            }
            if kind == "purchase":
                event.update(order_id=f"o-{tag}-{i}", price=2.0, quantity=1)
            out.append((topics.for_type(EventType(kind)), orjson.dumps(event)))
        return out

    alice, bob = events("alice", "alice", 30), events("bob", "bob", 30)
    producer = EventProducer(scratch.client_config, topics)

    def send(user: str, records: list[tuple[str, bytes]]) -> None:
        for topic, value in records:
            producer.send_raw(topic, user, value)
        assert producer.flush() == 0

    proc = ArchiverProcess(env, tmp_path / "archiver.log")
    proc.start()
    for i in range(0, 30, 10):  # interleaved, so parts hold both users
        send("alice", alice[i : i + 10])
        send("bob", bob[i : i + 10])
    wait_for(lambda: len(archived(root)) == 60, 40, "every event archived", proc)
    bob_rows = sorted((r for r in archived(root) if r["user_id"] == "bob"), key=str)
    assert len(bob_rows) == 30

    forget = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "forget", "alice", "--wait", "0"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert forget.returncode == 0, forget.stderr.decode()[-2000:]
    wait_for(lambda: scrape(port).get("recstream_archive_erasures_total") == 1, 40, "erasure", proc)
    rows = archived(root)
    assert not [r for r in rows if r["user_id"] == "alice"]
    assert sorted((r for r in rows if r["user_id"] == "bob"), key=str) == bob_rows
    every_file = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in every_file if b"alice" in p.read_bytes()]  # markers hold no id
    assert "erased 1 user(s) from the archive" in proc.log_path.read_text()

    # A replay of alice's old events (a producer re-sending, a reprocessing job), then
    # one new event of bob: read in full, none of alice's archived.
    send("alice", alice)
    send("bob", [(topics.clicks, click_of("bob", "bob-late", now - 60))])
    tps = [
        TopicPartition(t, p)
        for t in (*topics.inputs(), topics.user_erasure)
        for p in range(PARTITIONS)
    ]
    # Partitions that got no record have no offset to commit.
    ends = {k: v for k, v in high_watermarks(scratch.client_config, tps).items() if v > 0}
    tps = [tp for tp in tps if (tp.topic, tp.partition) in ends]
    group = f"{scratch.app_id}-archiver"
    wait_for(lambda: committed(scratch.client_config, group, tps) == ends, 40, "replay read", proc)
    rows = archived(root)
    assert not [r for r in rows if r["user_id"] == "alice"]
    assert "bob-late" in {r["event_id"] for r in rows}
    assert scrape(port)["recstream_archive_events_of_erased_users_total"] == 30
    assert proc.signal(signal.SIGKILL) == -signal.SIGKILL

    # The request delivered again, with everything else (a new group: no offsets): it is
    # done again, rewrites nothing, and the archive is unchanged.
    before = files_and_rows(root)
    port2 = free_port()
    again = settings.replace(app_id=f"{scratch.app_id}-again", archive_metrics_port=port2)
    proc = ArchiverProcess({**env, **again.to_env()}, tmp_path / "archiver-again.log")
    proc.start()
    wait_for(
        lambda: committed(scratch.client_config, f"{again.stream.app_id}-archiver", tps) == ends,
        40,
        "a re-read of everything",
        proc,
    )
    metrics = scrape(port2)
    assert metrics["recstream_archive_erasures_total"] == 1
    assert metrics["recstream_archive_rewritten_parts_total"] == 0
    assert metrics["recstream_archive_events_total"] == 0
    assert proc.signal(signal.SIGTERM) == 0
    assert files_and_rows(root) == before
    ids = [r["event_id"] for r in archived(root)]
    assert len(ids) == len(set(ids)) == 31  # bob's 30 and his late one, once each


def click_of(user: str, event_id: str, ts: float) -> bytes:
    return orjson.dumps({"event_id": event_id, "user_id": user, "item_id": "sku-1", "ts": ts})


def high_watermarks(
    client_config: dict[str, str], tps: list[TopicPartition]
) -> dict[tuple[str, int], int]:
    probe = Consumer({**client_config, "group.id": f"probe-{time.monotonic_ns()}"})
    try:
        return {(tp.topic, tp.partition): probe.get_watermark_offsets(tp, 10)[1] for tp in tps}
    finally:
        probe.close()


def files_and_rows(root: Path) -> dict[str, tuple[int, list[dict[str, Any]]]]:
    """Part file -> (inode, rows): a rewrite would change the inode."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, pq.read_table(p).to_pylist())
        for p in sorted(root.glob("day=*/part-*.parquet"))
    }


def test_an_archiver_killed_mid_erasure_does_it_again_after_the_restart(
    broker: Broker, tmp_path: Path
) -> None:
    """SIGKILL while the part files are being rewritten (one event per part, so the job
    takes a while): the request's offset is not committed, and the restarted archiver
    (same group) does the erasure again and completes it."""
    scratch = ScratchDeployment.create(broker, "archive-erasure-kill", PARTITIONS)
    root = tmp_path / "archive"
    settings = archiver_settings(scratch, root, archive_flush_records=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"
    now = time.time()
    producer = EventProducer(scratch.client_config, scratch.topics)
    for i in range(600):
        user = "alice" if i % 2 else "bob"
        producer.send_raw(scratch.topics.clicks, user, click_of(user, f"e{i}", now - 3_600 + i))
    assert producer.flush() == 0
    proc = ArchiverProcess(env, tmp_path / "archiver.log")
    proc.start()
    wait_for(lambda: len(list(root.glob("day=*/part-*.parquet"))) == 600, 60, "parts", proc)
    bob = sorted((r for r in archived(root) if r["user_id"] == "bob"), key=str)

    topic = scratch.topics.user_erasure
    producer.send_raw(topic, "alice", erasure_request_bytes("alice", time.time()))
    assert producer.flush() == 0
    wait_for(lambda: "erasing 1 user(s)" in proc.log_path.read_text(), 30, "the erasure", proc)
    assert proc.signal(signal.SIGKILL) == -signal.SIGKILL
    group = f"{scratch.app_id}-archiver"
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    ends = high_watermarks(scratch.client_config, parts)
    [(key, end)] = [(k, v) for k, v in ends.items() if v > 0]
    tp = TopicPartition(*key)
    assert committed(scratch.client_config, group, [tp])[key] < end  # killed before the commit
    assert [r for r in archived(root) if r["user_id"] == "alice"]  # ...and mid-job

    proc = ArchiverProcess(env, tmp_path / "archiver-2.log")
    proc.start()
    wait_for(lambda: committed(scratch.client_config, group, [tp])[key] == end, 60, "redo", proc)
    assert proc.signal(signal.SIGTERM) == 0
    rows = archived(root)
    assert not [r for r in rows if r["user_id"] == "alice"]
    assert sorted((r for r in rows if r["user_id"] == "bob"), key=str) == bob
    assert len(list(root.glob("day=*/part-*.parquet"))) == 600  # names (offsets) kept
    assert not list(root.glob("day=*/.*.tmp"))
    assert "erased 1 user(s) from the archive" in proc.log_path.read_text()
