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
