"""Crash drill: stream events while SIGKILLing workers, then prove nothing was lost.

The same code runs as an integration test (10k events) and as a benchmark command
(``recstream chaos --events 100000``). After the drill:

* every valid input event must have at least one recommendation (by
  ``trigger_event_id``), and
* every profile held by the final worker must equal a reference computed by
  folding the same events (so no event was applied twice or lost).
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from deploy.lab.brokers import Broker
from deploy.lab.readback import poll_batch, topic_reader
from deploy.lab.scratch import ScratchDeployment, WorkerProcess
from streams.client import EventProducer
from streams.events import Event
from streams.profile import Profile, ProfileLimits, apply_event

__all__ = ["DrillReport", "crash_drill", "reference_profiles"]


@dataclass
class DrillReport:
    """What a crash drill did and found."""

    events: int
    users: int
    kills: int = 0
    restarts_without_state: int = 0
    seconds: float = 0.0
    recommendations: int = 0
    duplicate_recommendations: int = 0
    missing_recommendations: list[str] = field(default_factory=list)
    profile_mismatches: list[str] = field(default_factory=list)
    first_mismatch: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost and every profile exact."""
        return not self.missing_recommendations and not self.profile_mismatches

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (lists shortened)."""
        return {
            "events": self.events,
            "users": self.users,
            "kills": self.kills,
            "restarts_without_state": self.restarts_without_state,
            "seconds": round(self.seconds, 1),
            "recommendations": self.recommendations,
            "duplicate_recommendations": self.duplicate_recommendations,
            "missing_recommendations": len(self.missing_recommendations),
            "profile_mismatches": len(self.profile_mismatches),
            "first_mismatch": self.first_mismatch,
            "ok": self.ok,
        }


def reference_profiles(events: list[Event], limits: ProfileLimits) -> dict[str, Profile]:
    """Fold the events per user: what every profile must equal."""
    profiles: dict[str, Profile] = {}
    for ev in events:
        apply_event(profiles.setdefault(ev.user_id, Profile()), ev, limits)
    return profiles


def _fetch_profile(worker: WorkerProcess, user: str) -> Any:
    status, body = worker.lookup(f"/users/{urllib.parse.quote(user, safe='')}/profile")
    if status == 404:
        return None
    if status != 200:
        raise RuntimeError(f"profile lookup answered {status}: {body}")
    return body["profile"]


def _without_recommendations(profile: Any) -> Any:
    """A profile without the lists it was recommended (``recs``, ``latest``): those
    depend on the scorer, not on the events alone, so the reference fold cannot know them."""
    if isinstance(profile, dict):
        profile = {k: v for k, v in profile.items() if k not in ("recs", "latest")}
    return profile


def crash_drill(
    broker: Broker,
    model_dir: Path,
    workdir: Path,
    events: list[Event],
    *,
    kills: int = 4,
    rate: float = 800.0,
    partitions: int = 4,
    seed: int = 0,
    wipes: list[bool] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> DrillReport:
    """Stream ``events`` at ``rate``/s while killing the worker ``kills`` times.

    Each kill is a SIGKILL at a random moment; about half of the restarts also
    delete the worker's RocksDB directory, forcing a restore from the changelog.
    """
    rng = random.Random(seed)
    dep = ScratchDeployment.create(broker, "drill", partitions)
    topics, tag, client = dep.topics, dep.tag, dep.client_config
    state_dir = workdir / tag / "state"  # fresh per drill: topics are new too
    settings = dep.worker_settings(
        model_dir,
        state_dir,
        intra_op_threads=1,
        fetch_max_wait_ms=50,
        log_level="INFO",
    )
    users = sorted({e.user_id for e in events})
    report = DrillReport(events=len(events), users=len(users))
    started = time.monotonic()
    sent = threading.Event()

    def produce() -> None:
        with EventProducer(client, topics) as producer:
            t0 = time.monotonic()
            for i, ev in enumerate(events):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                producer.send(ev)
        sent.set()

    workers: list[WorkerProcess] = []

    def start_worker() -> WorkerProcess:
        worker = WorkerProcess(settings, workdir / tag / f"worker-{len(workers)}.log").start()
        workers.append(worker)
        worker.wait_ready(120)
        return worker

    # Recommendations are counted while they arrive: the embedded broker keeps only
    # the newest 5 MiB per partition, so reading the topic from offset 0 at the end
    # would miss early records on a long drill.
    expected = {e.event_id for e in events}
    triggers: dict[str, int] = {}
    stop_reading = threading.Event()

    def read_recommendations() -> None:
        consumer = topic_reader(client, topics.recommendations, partitions)
        try:
            while not stop_reading.is_set():
                for msg in poll_batch(consumer, 1000, 0.1):
                    if msg.error():
                        continue
                    tid = orjson.loads(msg.value() or b"{}").get("trigger_event_id")
                    triggers[tid] = triggers.get(tid, 0) + 1
        finally:
            consumer.close()

    reader_thread = threading.Thread(target=read_recommendations, daemon=True)
    reader_thread.start()
    worker = start_worker()
    producer_thread = threading.Thread(target=produce, daemon=True)
    producer_thread.start()
    stream_s = len(events) / rate
    for k in range(kills):
        time.sleep(rng.uniform(0.3, 1.0) * stream_s / max(1, kills))
        worker.kill()
        report.kills += 1
        wipe = rng.random() < 0.5 if wipes is None else wipes[k % len(wipes)]
        if wipe and state_dir.exists():
            shutil.rmtree(state_dir)
            report.restarts_without_state += 1
        log(f"kill {k + 1}/{kills}: SIGKILL, restart {'without' if wipe else 'with'} local state")
        worker = start_worker()
    producer_thread.join()
    deadline = time.monotonic() + 300
    while not expected <= triggers.keys() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_reading.set()
    reader_thread.join(5)
    report.recommendations = sum(triggers.values())
    report.duplicate_recommendations = sum(n - 1 for n in triggers.values())
    report.missing_recommendations = sorted(expected - triggers.keys())
    reference = reference_profiles(events, ProfileLimits())
    for user in users:
        held = _without_recommendations(_fetch_profile(worker, user))
        expected_profile = _without_recommendations(
            json.loads(json.dumps(reference[user].to_dict()))
        )
        if held != expected_profile:
            report.profile_mismatches.append(user)
            if not report.first_mismatch:
                report.first_mismatch = {"user": user, "held": held, "expected": expected_profile}
    report.seconds = time.monotonic() - started
    for w in workers:
        w.stop(timeout_s=20)
    return report
