"""The whole pipeline through a real Kafka protocol: events -> profile -> model -> topic."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from deploy.lab.scratch import WorkerProcess
from models.synthetic import SyntheticShop
from streams.client import event_from_dict
from streams.events import Event, EventType
from streams.profile import Profile, ProfileLimits, apply_event
from streams.topics import changelog_topic

from .conftest import PARTITIONS, Deployment

pytestmark = pytest.mark.integration

REC_FIELDS = {
    "user_id",
    "items",
    "model_version",
    "strategy",
    "trigger_event_id",
    "trigger_event_type",
    "event_ts",
    "produced_ts",
}


def shop_events(shop: SyntheticShop, n: int) -> list[Event]:
    return [event_from_dict(dataclasses.asdict(e)) for e in shop.events[:n]]


def reference_profiles(events: list[Event]) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    for ev in events:
        apply_event(profiles.setdefault(ev.user_id, Profile()), ev, ProfileLimits())
    return profiles


def unique_by_trigger(recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["trigger_event_id"]: r for r in recs}


@pytest.mark.parametrize("batch_feed", [True, False], ids=["batch-feed", "faust-stream"])
def test_every_event_gets_a_recommendation_without_purchased_items(
    deployment: Deployment, shop: SyntheticShop, batch_feed: bool
) -> None:
    events = shop_events(shop, 400)
    assert {e.event_type for e in events} == set(EventType)
    worker = deployment.start_worker(batch_feed=batch_feed)
    fed = "through the batch feed" in worker.log_tail(2000)
    assert fed == batch_feed, "RECSTREAM_BATCH_FEED picks the path of the input records"
    with deployment.producer() as producer:
        for ev in events:
            producer.send(ev)

    recs = unique_by_trigger(
        deployment.read_json(
            deployment.topics.recommendations,
            lambda rs: len(unique_by_trigger(rs)) >= len(events),
        )
    )
    assert set(recs) == {e.event_id for e in events}

    strategies = set()
    for ev in events:
        rec = recs[ev.event_id]
        assert REC_FIELDS <= rec.keys()
        assert rec["user_id"] == ev.user_id
        assert rec["trigger_event_type"] == ev.event_type.value
        assert rec["model_version"] == "test-model-1"
        assert rec["event_ts"] == pytest.approx(ev.ts)
        assert rec["produced_ts"] >= rec["event_ts"]
        assert len(rec["items"]) == 20
        items = [i["item_id"] for i in rec["items"]]
        assert len(set(items)) == 20
        scores = [i["score"] for i in rec["items"]]
        assert scores == sorted(scores, reverse=True)
        strategies.add(rec["strategy"])
    assert "sequential" in strategies

    # Once a purchase has been processed, the item never comes back for that user.
    purchased = {u: p.purchased_items() for u, p in reference_profiles(events).items()}
    buyers = sorted(u for u, items in purchased.items() if items)
    assert buyers, "the synthetic stream should contain purchases"
    followups = [
        event_from_dict(
            {
                "event_type": "browse",
                "event_id": f"after-{u}",
                "user_id": u,
                "item_id": next(iter(purchased[u])),
                "ts": 1_790_000_000,
            }
        )
        for u in buyers
    ]
    with deployment.producer() as producer:
        for ev in followups:
            producer.send(ev)
    recs = unique_by_trigger(
        deployment.read_json(
            deployment.topics.recommendations,
            lambda rs: {f.event_id for f in followups} <= unique_by_trigger(rs).keys(),
        )
    )
    for ev in followups:
        items = {i["item_id"] for i in recs[ev.event_id]["items"]}
        assert not items & purchased[ev.user_id], f"{ev.user_id} was recommended a purchased item"


def test_unknown_user_and_items_get_the_popularity_fallback(deployment: Deployment) -> None:
    deployment.start_worker()
    ev = event_from_dict(
        {
            "event_type": "click",
            "event_id": "cold-1",
            "user_id": "brand-new-user",
            "item_id": "item-not-in-catalog",
            "ts": 1_790_000_000,
        }
    )
    with deployment.producer() as producer:
        producer.send(ev)
    recs = deployment.read_json(deployment.topics.recommendations, lambda rs: len(rs) >= 1)
    assert recs[0]["trigger_event_id"] == "cold-1"
    assert recs[0]["strategy"] == "popular"
    assert len(recs[0]["items"]) == 20


def test_malformed_events_go_to_the_dead_letter_topic_and_later_events_flow(
    deployment: Deployment, shop: SyntheticShop
) -> None:
    worker = deployment.start_worker()
    good = shop_events(shop, 60)
    t = deployment.topics
    bad: list[tuple[str, bytes | None, bytes, str]] = [
        (t.clicks, b"u-bad", b"{not json", "invalid_json"),
        (t.browses, b"u-bad", b"\xff\xfe\xfa", "invalid_utf8"),
        (
            t.purchases,
            b"u-bad",
            orjson.dumps(
                {"event_id": "x", "user_id": "u-bad", "item_id": "i", "ts": 1_790_000_000}
            ),
            "schema_violation",
        ),
        (
            t.clicks,
            b"u-bad",
            orjson.dumps(
                {"event_id": "y", "user_id": "u-bad", "item_id": "i", "ts": 1_790_000_000_000}
            ),
            "invalid_timestamp",
        ),
        (
            t.clicks,
            b"someone-else",
            orjson.dumps(
                {"event_id": "z", "user_id": "u-bad", "item_id": "i", "ts": 1_790_000_000}
            ),
            "key_mismatch",
        ),
        (t.clicks, b"u-bad", b"[]", "not_an_object"),
    ]
    with deployment.producer() as producer:
        for i, ev in enumerate(good):
            producer.send(ev)
            if i < len(bad):
                topic, key, value, _ = bad[i]
                producer.send_raw(topic, key, value)

    dead = deployment.read_json(t.dead_letter, lambda rs: len(rs) >= len(bad))
    assert sorted(d["reason_code"] for d in dead) == sorted(code for *_, code in bad)
    by_value = {base64.b64decode(d["value_base64"]): d for d in dead}
    for topic, key, value, code in bad:
        d = by_value[value]  # the original bytes, unchanged
        assert d["topic"] == topic and d["reason_code"] == code and d["reason"]
        assert base64.b64decode(d["key_base64"]) == key
        assert d["offset"] >= 0 and d["partition"] in (0, 1)

    recs = unique_by_trigger(
        deployment.read_json(t.recommendations, lambda rs: len(unique_by_trigger(rs)) >= len(good))
    )
    assert {e.event_id for e in good} <= set(recs)
    assert worker.proc is not None and worker.proc.poll() is None, "worker died on bad input"
    metrics = worker.metrics_text()
    assert 'recstream_events_invalid_total{reason="invalid_json"} 1.0' in metrics
    memtables = re.search(r'recstream_table_memory_bytes\{kind="memtables"\} (\S+)', metrics)
    assert memtables and float(memtables.group(1)) > 0  # the profiles' RocksDB memory


def fetch_profiles(worker: WorkerProcess, users: set[str]) -> dict[str, Any]:
    out = {}
    for user in users:
        status, body = worker.lookup(f"/users/{user}/profile")
        assert status == 200, body
        out[user] = body["profile"]
    return out


def persisted_offsets(state_dir: Path) -> dict[int, int]:
    from rocksdict import AccessType, Rdict

    out = {}
    for db_path in sorted(state_dir.glob("v1/tables/profiles-*.db")):
        db = Rdict(str(db_path), access_type=AccessType.read_only())
        try:
            raw = db.get(b"__faust\0offset__")
        finally:
            db.close()
        if raw is not None:
            out[int(db_path.stem.rsplit("-", 1)[1])] = int(raw)
    return out


def changelog_last_offsets(deployment: Deployment) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**deployment.client_config, "group.id": "watermarks"})
    try:
        out = {}
        for p in range(PARTITIONS):
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(changelog_topic(deployment.app_id), p), timeout=10
            )
            if high > 0:
                out[p] = high - 1
        return out
    finally:
        consumer.close()


@pytest.mark.parametrize("changelog_producer", ["librdkafka", "faust"])
def test_profiles_are_restored_from_the_changelog_after_losing_local_state(
    deployment: Deployment, shop: SyntheticShop, changelog_producer: str
) -> None:
    events = shop_events(shop, 300)
    users = {e.user_id for e in events}
    first = deployment.start_worker(changelog_producer=changelog_producer)
    with deployment.producer() as producer:
        for ev in events:
            producer.send(ev)
    deployment.read_json(
        deployment.topics.recommendations, lambda rs: len(unique_by_trigger(rs)) >= len(events)
    )
    before = fetch_profiles(first, users)
    expected = {u: p.to_dict() for u, p in reference_profiles(events).items()}
    # The lists each user was recommended (``recs``, ``latest``) come from the scorer,
    # not from the events; they are checked below, restored from the changelog like
    # the rest.
    scored = ("recs", "latest")
    assert {u: {k: v for k, v in p.items() if k not in scored} for u, p in before.items()} == {
        u: {k: v for k, v in p.items() if k not in scored}
        for u, p in json.loads(json.dumps(expected)).items()
    }
    assert all(p["recs"] and p["latest"]["items"] for p in before.values())

    assert first.stop() == 0
    state_dir = deployment.workdir / "state"
    assert state_dir.exists()
    # Each partition's RocksDB remembers the last changelog offset it holds (written
    # on delivery of the librdkafka changelog records), so a restart with its local
    # state reads only what is newer.
    assert persisted_offsets(state_dir) == changelog_last_offsets(deployment)
    shutil.rmtree(state_dir)

    second = deployment.start_worker(changelog_producer=changelog_producer)
    after = fetch_profiles(second, users)
    assert after == before
