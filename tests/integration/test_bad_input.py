"""Fuzzed input through a live worker: nothing crashes it, every record is accounted for."""

from __future__ import annotations

import base64
import hashlib
import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.events import EventType, InvalidEvent, decode_event

from .conftest import Deployment

pytestmark = pytest.mark.integration

FIELDS = [
    "event_id",
    "user_id",
    "item_id",
    "ts",
    "channel",
    "order_id",
    "price",
    "quantity",
    "dwell_ms",
    "type",
]
scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
)
json_like = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, object]:
    """A plausible event with some fields broken, dropped or absurd."""
    event: dict[str, object] = {
        "event_id": f"fz-{draw(st.uuids()).hex[:12]}",
        "user_id": draw(st.sampled_from(["fz-a", "fz-b", "fz-c"])),
        "item_id": draw(st.sampled_from(["sku-00001", "sku-00002", "no-such-item", "x" * 200])),
        "ts": draw(
            st.one_of(
                st.just(1_790_000_000.0),
                st.floats(-1e15, 1e15),
                st.sampled_from(["NaN", "1e400", "2026-13-40T99:00:00Z", "2026-01-01T00:00:00Z"]),
            )
        ),
        "order_id": "o-1",
        "price": draw(st.one_of(st.just(3.5), st.floats(), st.text(max_size=4))),
        "quantity": draw(st.one_of(st.just(1), st.integers(-5, 10**9))),
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            event[name] = draw(json_like)
    if draw(st.integers(0, 9)) == 0:
        event["type"] = draw(st.sampled_from(["refund", "click", "purchase", 7]))
    return event


def _dumps(value: object) -> bytes:
    # json, not orjson: big integers and NaN/Infinity tokens are part of the fuzz.
    return json.dumps(value).encode()


payloads = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.text(min_size=1, max_size=40).map(str.encode),
    json_like.map(_dumps),
    near_valid().map(_dumps),
    st.integers(70_000, 300_000).map(lambda n: b"{" + b" " * n + b"}"),
)


def key_for(value: bytes) -> bytes:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return b"fz-a"
    user = data.get("user_id") if isinstance(data, dict) else None
    return user.encode() if isinstance(user, str) else b"fz-a"


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.lists(st.tuples(st.sampled_from(list(EventType)), payloads), min_size=20, max_size=60)
)
def test_fuzzed_records_land_in_the_dlq_with_a_reason_and_valid_ones_flow(
    deployment: Deployment, batch: list[tuple[EventType, bytes]]
) -> None:
    worker = deployment.workers[0] if deployment.workers else deployment.start_worker()
    topics = deployment.topics
    marker = f"marker-{len(batch)}-{abs(hash(tuple(p for _, p in batch))) % 10**9}"
    expected_dlq: dict[str, str] = {}  # sha256 of the value -> reason code
    expected_recs: set[str] = set()
    with deployment.producer() as producer:
        for event_type, value in batch:
            key = key_for(value)
            verdict = decode_event(event_type, value, key)
            if isinstance(verdict, InvalidEvent):
                expected_dlq[hashlib.sha256(value).hexdigest()] = verdict.code.value
            else:
                expected_recs.add(verdict.event_id)
            producer.send_raw(topics.for_type(event_type), key, value)
        # A valid event after the garbage proves the stream still flows.
        producer.send_raw(
            topics.clicks,
            b"fz-a",
            orjson.dumps(
                {"event_id": marker, "user_id": "fz-a", "item_id": "sku-00003", "ts": 1_790_000_000}
            ),
        )
    expected_recs.add(marker)
    recs = deployment.read_json(
        topics.recommendations, lambda rs: expected_recs <= {r["trigger_event_id"] for r in rs}
    )
    assert expected_recs <= {r["trigger_event_id"] for r in recs}
    dead = deployment.read_json(
        topics.dead_letter,
        lambda ds: set(expected_dlq) <= {d["value_sha256"] for d in ds},
        timeout_s=30,
    )
    by_sha = {d["value_sha256"]: d for d in dead}
    for sha, code in expected_dlq.items():
        envelope = by_sha[sha]
        assert envelope["reason_code"] == code and envelope["reason"]
        original = base64.b64decode(envelope["value_base64"])
        if envelope["value_truncated"]:
            assert len(original) < envelope["value_size"]
        else:
            assert hashlib.sha256(original).hexdigest() == sha  # the bytes, unchanged
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    log_text = worker.log_path.read_text(errors="replace")
    assert "fz-a" not in log_text and "fz-b" not in log_text, "a user id reached the log"
    assert "sku-00001" not in log_text, "an event payload reached the log"
    metrics = worker.metrics_text()
    invalid_total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("recstream_events_invalid_total{")
    )
    assert invalid_total >= len(expected_dlq)
    assert not math.isnan(invalid_total)
