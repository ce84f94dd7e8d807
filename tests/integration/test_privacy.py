"""Privacy through a live worker: erasure, restore after erasure, TTL, pseudonymous mode."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from deploy.lab.scratch import WorkerProcess, settings_env
from streams.client import Pseudonyms, event_from_dict
from streams.events import Event
from streams.privacy import UserKeys
from streams.topics import changelog_topic

from .conftest import Deployment

pytestmark = pytest.mark.integration

NOW = time.time()


def clicks(users: list[str], per_user: int, ts: float = NOW - 600) -> list[Event]:
    # Event ids are the shop's and pass through unchanged (the README says so): these
    # hold no user id.
    return [
        event_from_dict(
            {
                "event_type": "click",
                "event_id": f"ev-{abs(hash((u, i, ts)))}",
                "user_id": u,
                "item_id": f"item-{i % 30}",
                "ts": ts + i,
            }
        )
        for u in users
        for i in range(per_user)
    ]


def send_and_wait(deployment: Deployment, events: list[Event]) -> None:
    with deployment.producer() as producer:
        for ev in events:
            producer.send(ev)
    wanted = {e.event_id for e in events}
    deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: wanted <= {r["trigger_event_id"] for r in rs},
    )


def last_by_key(deployment: Deployment, topic: str) -> dict[bytes, bytes | None]:
    """The latest value per key of a topic (what compaction keeps), read from offset 0."""
    out: dict[bytes, bytes | None] = {}
    for msg in deployment.read_topic(topic, lambda ms: False, timeout_s=3):
        out[msg.key()] = msg.value()
    return out


def metric(worker: WorkerProcess, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", worker.metrics_text(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(condition: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def forget(
    deployment: Deployment, user: str, **settings: Any
) -> subprocess.CompletedProcess[bytes]:
    """``recstream forget USER`` as an operator runs it, against this deployment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env.update(
        settings_env(
            kafka_bootstrap_servers=deployment.scratch.bootstrap_servers,
            partitions=deployment.scratch.partitions,
            **deployment.scratch.topic_settings(),
            **settings,
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "forget", user, "--wait", "60"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_forget_erases_a_user_for_good_across_restore_and_replay(
    deployment: Deployment, tmp_path: Path
) -> None:
    worker = deployment.start_worker()
    users = [f"shopper-{i}" for i in range(6)]
    events = clicks(users, 3)
    send_and_wait(deployment, events)
    gone, kept = users[0], users[1]
    status, kept_before = worker.lookup(f"/users/{kept}/profile")
    assert status == 200

    result = forget(deployment, gone)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    audit = orjson.loads(result.stdout.strip().splitlines()[-1])
    pseudonym = UserKeys("", "recstream").audit(gone)
    assert audit["pseudonym"] == pseudonym and audit["profile_found"] is True
    assert audit["erased_at"] >= audit["requested_at"] > 0
    assert gone.encode() not in result.stdout  # the audit names the user by pseudonym only

    for path in (f"/users/{gone}/profile", f"/users/{gone}/recommendations"):
        assert worker.lookup(path) == (404, {"error": "not_found"})
    assert worker.lookup(f"/users/{kept}/profile") == (200, kept_before)
    # Tombstones: the changelog (the durable profile) and the latest-list topic.
    changelog = last_by_key(deployment, changelog_topic(deployment.app_id))
    assert changelog[orjson.dumps(gone)] is None and changelog[orjson.dumps(kept)] is not None
    latest = last_by_key(deployment, deployment.topics.recommendations_latest)
    assert latest[gone.encode()] is None and latest[kept.encode()] is not None
    audit_topic = last_by_key(deployment, deployment.topics.erasure_audit)
    assert list(audit_topic) == [pseudonym.encode()]

    # Bad control records are dead-lettered; the worker goes on.
    with deployment.producer() as producer:
        producer.send_raw(deployment.topics.user_erasure, b"someone", b"{not json")
        producer.send_raw(
            deployment.topics.user_erasure, b"someone", orjson.dumps({"user_id": "other"})
        )
    dead = deployment.read_json(deployment.topics.dead_letter, lambda rs: len(rs) >= 2)
    assert sorted(d["reason_code"] for d in dead) == ["invalid_json", "key_mismatch"]
    assert all(d["topic"] == deployment.topics.user_erasure for d in dead)

    # A replay of the user's old events does not bring the user back.
    with deployment.producer() as producer:
        for ev in events:
            if ev.user_id == gone:
                producer.send(ev)
    wait_for(lambda: metric(worker, "recstream_events_of_erased_users_total") >= 3)
    assert worker.lookup(f"/users/{gone}/profile")[0] == 404

    # Nor does a restore from the changelog onto an empty disk.
    assert worker.stop() == 0
    shutil.rmtree(deployment.workdir / "state")
    restored = deployment.start_worker()
    assert restored.lookup(f"/users/{gone}/profile") == (404, {"error": "not_found"})
    assert restored.lookup(f"/users/{gone}/recommendations")[0] == 404
    # The erasure marker (restored too: it keeps replays out) is no profile to look up.
    marker = UserKeys("", "recstream").marker(gone)
    assert restored.lookup(f"/users/{marker}/profile") == (404, {"error": "not_found"})
    assert restored.lookup(f"/users/{kept}/profile") == (200, kept_before)
    assert metric(restored, "recstream_erasures_total") == 0  # nothing erased twice
    assert restored.proc is not None and restored.proc.poll() is None


def test_pseudonymous_mode_keeps_raw_ids_out_of_topics_and_state_and_ttl_expires(
    deployment: Deployment,
) -> None:
    key = "shop-secret-key"
    worker = deployment.start_worker(
        privacy_user_key=key, privacy_profile_ttl_days=5.0, privacy_sweep_interval_s=1.0
    )
    active = [f"RAWID-active-{i}" for i in range(4)]
    inactive = ["RAWID-inactive-0"]
    send_and_wait(deployment, clicks(active, 3) + clicks(inactive, 2, ts=NOW - 10 * 86400))
    names = Pseudonyms(key)

    # The shop asks by its own id; the answer names the user by pseudonym, which the
    # shop maps back with the client helper.
    status, rec = worker.lookup(f"/users/{active[0]}/recommendations")
    assert status == 200 and rec["user_id"] == names.of(active[0])
    assert names.mapping(active)[rec["user_id"]] == active[0]
    # The inactive user's profile expires (event time older than the TTL).
    wait_for(lambda: worker.lookup(f"/users/{inactive[0]}/profile")[0] == 404)
    assert metric(worker, "recstream_profiles_expired_total") >= 1
    assert worker.lookup(f"/users/{active[1]}/profile")[0] == 200

    result = forget(deployment, active[2], privacy_user_key=key)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert orjson.loads(result.stdout.strip().splitlines()[-1])["pseudonym"] == names.of(active[2])
    assert worker.stop() == 0

    # No raw id anywhere recstream writes: output topics, changelog, audit...
    t = deployment.topics
    written = [t.recommendations, t.recommendations_latest, t.erasure_audit]
    written.append(changelog_topic(deployment.app_id))
    seen_keys = set()
    for topic in written:
        for msg in deployment.read_topic(topic, lambda ms: False, timeout_s=3):
            blob = (msg.key() or b"") + (msg.value() or b"")
            assert b"RAWID" not in blob, (topic, blob[:200])
            seen_keys.add(msg.key())
    assert {names.of(u).encode() for u in active} <= seen_keys
    # ... and the state on disk: every RocksDB key and value, and every file's bytes.
    from rocksdict import AccessType, Options, Rdict

    state = deployment.workdir / "state"
    dbs = sorted(state.glob("v1/tables/*.db"))
    assert dbs
    for db_path in dbs:
        db = Rdict(str(db_path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for k, v in db.items():
                assert b"RAWID" not in bytes(k) + bytes(v)
        finally:
            db.close()
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"RAWID" not in data and base64.b64encode(b"RAWID") not in data, path
