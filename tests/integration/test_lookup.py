"""The lookup API through two real workers: any worker answers for any user."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
import pytest

from deploy.lab.scratch import WorkerProcess
from streams.api import user_partition
from streams.client import event_from_dict
from streams.events import Event

from .conftest import PARTITIONS, Deployment

pytestmark = pytest.mark.integration


def user_events(users: int, per_user: int) -> list[Event]:
    return [
        event_from_dict(
            {
                "event_type": "click",
                "event_id": f"e-{u}-{i}",
                "user_id": f"shopper-{u}",
                "item_id": f"item-{(u * 7 + i) % 40}",
                "ts": 1_790_000_000 + u + 10 * i,
            }
        )
        for u in range(users)
        for i in range(per_user)
    ]


def answer_until(
    worker: WorkerProcess, path: str, ok: Any, timeout_s: float = 60.0
) -> tuple[int, Any]:
    """The first answer that ``ok(status, body)`` accepts (a rebalance answers 503)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = worker.lookup(path)
        if ok(status, body) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.2)


def test_any_worker_answers_for_any_user_and_strangers_get_nothing(
    deployment: Deployment,
) -> None:
    token = "lookup-test-token"
    first = deployment.start_worker(api_token=token)
    second = deployment.start_worker(api_token=token)
    events = user_events(users=12, per_user=3)
    users = sorted({e.user_id for e in events})
    assert {user_partition(u, PARTITIONS) for u in users} == set(range(PARTITIONS))
    with deployment.producer() as producer:
        for ev in events:
            producer.send(ev)
    deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: {r["trigger_event_id"] for r in rs} >= {e.event_id for e in events},
    )
    for worker in (first, second):
        worker.wait_ready(60)

    last = {u: max((e for e in events if e.user_id == u), key=lambda e: e.ts) for u in users}
    for user in users:
        answers = []
        for worker in (first, second):
            status, body = answer_until(
                worker,
                f"/users/{user}/recommendations",
                lambda s, b, u=user: s == 200 and b["trigger_event_id"] == last[u].event_id,
            )
            assert status == 200, body
            answers.append(body)
        # One owner answered both: the other worker forwarded the request.
        assert answers[0] == answers[1]
        rec = answers[0]
        assert rec["user_id"] == user and rec["model_version"] == "test-model-1"
        assert len(rec["items"]) == 20 and rec["produced_ts"] >= rec["event_ts"]
        status, body = second.lookup(f"/users/{user}/profile")
        assert status == 200 and body["user_id"] == user
        assert [r[0] for r in body["profile"]["recent"]] == [
            e.item_id for e in events if e.user_id == user
        ]

    # The compacted topic holds each user's lists, keyed by user; its last record per
    # user is the latest list.
    latest = deployment.read_topic(
        deployment.topics.recommendations_latest, lambda ms: len(ms) >= len(events)
    )
    last_by_key: dict[bytes, dict[str, Any]] = {}
    for msg in latest:
        last_by_key[msg.key()] = orjson.loads(msg.value())
    assert {k.decode() for k in last_by_key} == set(users)
    assert all(v["user_id"] == k.decode() for k, v in last_by_key.items())

    # Authentication: nothing without the token, and no user data in the errors.
    user = users[0]
    for worker in (first, second):
        for path in (f"/users/{user}/recommendations", f"/users/{user}/profile"):
            assert worker.lookup(path, token="") == (401, {"error": "unauthorized"})
            assert worker.lookup(path, token="wrong-token") == (403, {"error": "forbidden"})
        status, body = answer_until(worker, "/users/nobody-we-know/profile", lambda s, b: s != 503)
        assert (status, body) == (404, {"error": "not_found"})
        assert worker.ready()  # /readyz, /healthz and /metrics need no token
        metrics = worker.metrics_text()
        # Each worker answered some users itself and forwarded the others.
        for outcome in ("local", "forwarded"):
            line = f'recstream_lookups_total{{endpoint="recommendations",outcome="{outcome}"}}'
            assert re.search(re.escape(line) + r" [1-9]", metrics), outcome
        assert 'recstream_lookups_total{endpoint="profile",outcome="forbidden"} 1.0' in metrics
