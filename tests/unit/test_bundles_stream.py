"""Bundles in the stream, without a broker: pairing, counting, publishing, attaching."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from models.bundles import CoPurchaseCounts, latest_pairs
from streams.acks import InOrderAcks
from streams.app import create_app
from streams.bundles import (
    BundleItem,
    BundleRecord,
    Bundles,
    CoPurchase,
    CoPurchaseModel,
    bundle_bytes,
    co_purchase_records,
    decode_bundle,
    decode_co_purchase,
    fold_co_purchase,
    publishable,
)
from streams.config import BundleConfig, ScoringConfig, StreamConfig, WebConfig
from streams.events import InvalidEvent, ReasonCode
from streams.topics import BUNDLE_COUNTS_TABLE, changelog_topic
from tests.unit.test_pipeline_inprocess import NOW, FakeClock, FakeSink, click, send, until
from tests.unit.test_pipeline_v2_inprocess import ExplainingScorer


def test_pairs_are_grouped_into_one_record_per_anchor() -> None:
    pairs = [("a", "x", 5.0), ("x", "a", 5.0), ("b", "x", 5.0), ("x", "b", 5.0)]
    records = {k: orjson.loads(v) for k, v in co_purchase_records(pairs, "p9").items()}
    assert records["x"] == {
        "schema_version": 1,
        "anchor_item_id": "x",
        "partners": ["a", "b"],
        "ts": 5.0,
        "event_id": "p9",
    }
    assert records["a"]["partners"] == ["x"] and set(records) == {"a", "b", "x"}
    for key, value in co_purchase_records(pairs, "p9").items():
        assert isinstance(decode_co_purchase(key.encode(), value), CoPurchase)


def test_a_purchase_counts_once_per_anchor_and_the_seen_ids_are_bounded() -> None:
    record = CoPurchase(anchor_item_id="x", partners=["a", "b", "a", "x"], ts=NOW, event_id="p1")
    fold = functools.partial(fold_co_purchase, horizon_s=100.0, cap=2)
    stored, counted = fold(None, record, CoPurchaseCounts())
    assert counted and stored is not None
    assert orjson.loads(stored)["partners"] == {"a": 1.0, "b": 1.0}  # each partner once
    again, counted = fold(stored, record, CoPurchaseCounts())
    assert not counted and again == stored  # redelivered: counted once
    for n in (2, 3):
        later = record.model_copy(update={"event_id": f"p{n}", "partners": ["a"], "ts": NOW})
        stored, counted = fold(stored, later, CoPurchaseCounts())
        assert counted and stored is not None
    state = orjson.loads(stored)
    assert state["partners"] == {"a": 3.0, "b": 1.0} and len(state["seen"]) == 2
    # p1 was forgotten (the cap): its time is the floor, so its replay still counts once.
    assert state["floor"] == NOW
    assert fold(stored, record, CoPurchaseCounts()) == (stored, False)


def test_replays_of_a_busy_item_count_once_by_time_horizon_not_by_the_last_ids() -> None:
    """200 interleaved records of two anchors (100 each, more than the old 64 ids),
    then all of them redelivered: the counts do not move."""
    fold = functools.partial(fold_co_purchase, horizon_s=3600.0, cap=1024)
    records = [
        CoPurchase(
            anchor_item_id=anchor, partners=[f"q{n % 7}"], ts=NOW + n, event_id=f"p{n}-{anchor}"
        )
        for n in range(100)
        for anchor in ("x", "y")
    ]
    state: dict[str, bytes | None] = {"x": None, "y": None}

    def replay(batch: list[CoPurchase]) -> int:
        counted = 0
        for r in batch:
            state[r.anchor_item_id], fresh = fold(state[r.anchor_item_id], r, CoPurchaseCounts())
            counted += fresh
        return counted

    assert replay(records) == 200
    before = dict(state)
    assert replay(records) == 0 and state == before
    # Older than the horizon behind x's newest: forgotten, so not counted (a replay or not).
    late = CoPurchase(anchor_item_id="x", partners=["q1"], ts=NOW - 7200, event_id="late")
    assert replay([late]) == 1  # never seen, after the floor: counted
    assert replay([late]) == 0  # and its replay is refused by the floor it set
    assert orjson.loads(state["x"] or b"{}")["floor"] == NOW - 7200


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        (None, b"{}", ReasonCode.SCHEMA_VIOLATION),
        (b"x", b"{", ReasonCode.INVALID_JSON),
        (b"x", b"[]", ReasonCode.NOT_AN_OBJECT),
        (
            b"x",
            orjson.dumps({"anchor_item_id": "x", "items": "no", "updated_ts": 1}),
            ReasonCode.SCHEMA_VIOLATION,
        ),
        (
            b"y",
            orjson.dumps({"anchor_item_id": "x", "items": [], "updated_ts": 1}),
            ReasonCode.KEY_MISMATCH,
        ),
    ],
)
def test_bad_bundle_records_are_rejected(key: bytes | None, value: bytes, code: ReasonCode) -> None:
    decoded = decode_bundle(key, value)
    assert isinstance(decoded, InvalidEvent) and decoded.code is code
    assert decode_bundle(b"x", None) is None  # a tombstone
    empty = decode_co_purchase(b"x", None)
    assert isinstance(empty, InvalidEvent) and empty.code is ReasonCode.EMPTY


def test_a_bundle_leaves_out_purchased_hidden_items_and_the_anchor() -> None:
    bundles = Bundles()
    items = [
        {"item_id": i, "score": s} for i, s in [("b", 5), ("x", 4), ("c", 3), ("d", 2), ("e", 1)]
    ]
    bundles.apply("x", BundleRecord(anchor_item_id="x", items=items, updated_ts=NOW))  # type: ignore[arg-type]
    got = bundles.for_item("x", frozenset({"b"}), frozenset({"d"}), size=2)
    assert got == [("c", 3.0), ("e", 1.0)]
    assert bundles.for_item("unknown", frozenset(), frozenset(), 2) == []
    bundles.apply("x", None)
    assert len(bundles) == 0


def purchase(event_id: str, item: str, order: str, ts: float) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "user_id": "u1",
            "item_id": item,
            "ts": ts,
            "type": "purchase",
            "order_id": order,
            "price": 3.0,
        }
    )


@dataclass
class BundleHarness:
    app: Any
    config: StreamConfig
    sink: FakeSink
    scorer: ExplainingScorer

    def on(self, topic: str) -> list[Any]:
        return self.sink.on(topic)

    def run(self, agent_name: str, body: Callable[[Any], Awaitable[None]]) -> None:
        agent = self.app.agents[agent_name]

        async def main() -> None:
            async with agent.test_context() as test_agent:
                await asyncio.wait_for(body(test_agent), 20)

        asyncio.run(main())


@pytest.fixture
def bundled() -> BundleHarness:
    config = StreamConfig(
        app_id=f"bundles-{uuid.uuid4().hex[:8]}",
        store="memory://",
        scoring=ScoringConfig(max_batch=8, max_wait_ms=10.0),
        bundles=BundleConfig(size=2, window_s=600.0, min_support=2),
        web=WebConfig(enabled=False),
    )
    scorer = ExplainingScorer()
    sink = FakeSink()
    app = create_app(
        config, scorer, output=sink, co_purchases=CoPurchaseModel(CoPurchaseCounts, latest_pairs)
    )  # type: ignore[arg-type]
    app.pipeline.acks = InOrderAcks(clock=FakeClock())
    return BundleHarness(app, config, sink, scorer)


def test_a_purchase_emits_its_pairs_keyed_by_anchor_and_is_acked_after_them(
    bundled: BundleHarness,
) -> None:
    h = bundled
    topic = h.config.topics.co_purchases

    async def body(agent: Any) -> None:
        await send(agent, "purchases", purchase("p1", "sku-1", "o1", NOW - 100), offset=1)
        await until(lambda: len(h.on(h.config.topics.recommendations)) == 1)
        assert h.on(topic) == []  # the first purchase has no partner
        # Another order, 1000 s later: outside the 600 s window, no pair.
        await send(agent, "purchases", purchase("p2", "sku-5", "o2", NOW + 900), offset=2)
        await until(lambda: len(h.on(h.config.topics.recommendations)) == 2)
        # Same order as p1: a pair, both directions.
        event = await send(agent, "purchases", purchase("p3", "sku-2", "o1", NOW - 50), offset=3)

        await until(lambda: len(h.on(topic)) == 2)
        await send(agent, "purchases", purchase("p3", "sku-2", "o1", NOW - 50), offset=4)  # replay
        await until(lambda: len(h.on(h.config.topics.recommendations)) == 4)
        assert len(h.on(topic)) == 4
        for record in h.sink.records:
            if record.topic != topic:
                record.deliver()
        assert not event.message.acked  # its co-purchase records are not delivered yet
        h.sink.deliver_all()
        assert event.message.acked

    h.run("score_user_events", body)
    records = {(r.key, orjson.loads(r.value)["partners"][0]) for r in h.on(topic)}
    assert records == {(b"sku-1", "sku-2"), (b"sku-2", "sku-1")}
    first, replayed = h.on(topic)[:2], h.on(topic)[2:]
    assert [r.value for r in first] == [r.value for r in replayed]  # same records again
    assert all(b"u1" not in (r.value or b"") for r in h.on(topic))  # no user id


def test_counts_publish_each_changed_items_top_bundle_and_replays_count_once(
    bundled: BundleHarness,
) -> None:
    h = bundled
    values = [
        co_purchase_records([("sku-1", "sku-101", NOW)], "p1")["sku-1"],
        co_purchase_records([("sku-1", "sku-102", NOW)], "p2")["sku-1"],
        co_purchase_records([("sku-1", "sku-101", NOW)], "p3")["sku-1"],
        co_purchase_records([("sku-1", "sku-101", NOW)], "p3")["sku-1"],  # redelivered
        b"{not json",
    ]
    events = []

    async def body(agent: Any) -> None:
        for offset, value in enumerate(values):
            events.append(
                await send(agent, h.config.topics.co_purchases, value, key=b"sku-1", offset=offset)
            )
        await until(lambda: len(h.on(h.config.topics.dead_letter)) == 1)
        h.sink.deliver_all()
        assert all(e.message.acked for e in events)

    h.run("count_co_purchases", body)
    published = [r.value and orjson.loads(r.value) for r in h.on(h.config.topics.bundles)]
    # Minimum support 2: no partner of one purchase is published (tombstones) until
    # sku-101's second purchase; sku-102 (one purchase) stays out.
    assert [p and [(i["item_id"], i["score"]) for i in p["items"]] for p in published] == [
        None,
        None,
        [("sku-101", 2.0)],
        [("sku-101", 2.0)],  # the replay publishes, does not count
    ]
    changelog = h.on(changelog_topic(h.config.app_id, BUNDLE_COUNTS_TABLE))
    assert len(changelog) == 4 and changelog[-1].key is not None
    assert orjson.loads(h.on(h.config.topics.dead_letter)[0].value)["reason_code"] == "invalid_json"


def test_a_list_carries_the_trigger_items_bundle_and_says_bought_together(
    bundled: BundleHarness,
) -> None:
    h = bundled
    bundles = h.app.pipeline.bundles
    items = [
        {"item_id": i, "score": s} for i, s in [("sku-9", 6.0), ("sku-101", 5.0), ("sku-77", 4.0)]
    ]
    bundles.apply("sku-1", BundleRecord(anchor_item_id="sku-1", items=items, updated_ts=NOW))  # type: ignore[arg-type]
    from streams.rules import ItemRule

    h.app.pipeline.rules.apply("sku-77", ItemRule(blocked=True))

    async def body(agent: Any) -> None:
        await send(agent, "purchases", purchase("p1", "sku-9", "o1", NOW - 100), offset=1)
        await send(agent, "clicks", click("e2", item="sku-1"), offset=2)
        await until(lambda: len(h.on(h.config.topics.recommendations)) == 2)

    h.run("score_user_events", body)
    after_purchase, after_click = (r.json() for r in h.on(h.config.topics.recommendations))
    assert "bundle" not in after_purchase  # sku-9 has no bundle
    # sku-9 was bought, sku-77 is blocked: the bundle keeps sku-101 only.
    assert after_click["bundle"] == {
        "anchor_item_id": "sku-1",
        "items": [{"item_id": "sku-101", "score": 5.0}],
    }
    reasons = {i["item_id"]: i["reason"] for i in after_click["items"]}
    assert reasons["sku-101"] == {"code": "bought_together", "item_id": "sku-1"}
    assert reasons["sku-100"] == {"code": "similar_to_viewed", "item_id": "sku-1"}


def test_with_output_schema_version_1_the_released_v1_client_reads_the_worker_list() -> None:
    import json

    import jsonschema

    from streams.messages import RecommendationMessage
    from streams.schema_files import SCHEMA_DIR
    from tests.unit.test_schemas import V1RecommendationMessage

    config = StreamConfig(
        app_id=f"v1-out-{uuid.uuid4().hex[:8]}",
        store="memory://",
        scoring=ScoringConfig(max_batch=8, max_wait_ms=10.0, output_schema_version=1),
        web=WebConfig(enabled=False),
    )
    sink = FakeSink()
    app = create_app(config, ExplainingScorer(), output=sink)  # type: ignore[arg-type]
    app.pipeline.acks = InOrderAcks(clock=FakeClock())
    items = [BundleItem(item_id="sku-101", score=2.0)]
    app.pipeline.bundles.apply(
        "sku-1", BundleRecord(anchor_item_id="sku-1", items=items, updated_ts=NOW)
    )
    h = BundleHarness(app, config, sink, ExplainingScorer())

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1", item="sku-1"), offset=1)
        await until(lambda: len(h.on(config.topics.recommendations)) == 1)

    h.run("score_user_events", body)
    doc = h.on(config.topics.recommendations)[0].json()
    assert doc["schema_version"] == 1 and doc["bundle"]["anchor_item_id"] == "sku-1"
    assert {i["reason"]["code"] for i in doc["items"]} == {"similar_to_viewed", "bought_together"}
    schema = json.loads((SCHEMA_DIR / "recommendation.v1.json").read_text())
    jsonschema.validate(doc, schema)
    assert V1RecommendationMessage.model_validate(doc).items[0].item_id == "sku-100"
    assert RecommendationMessage.model_validate(doc).bundle is not None


def test_a_bundle_needs_min_support_and_fades_at_read_time_then_is_tombstoned() -> None:
    half_life = 14 * 86400.0
    config = BundleConfig(min_support=3, min_score=0.05)
    counts, stored = CoPurchaseCounts(half_life_s=half_life), None
    for n in range(3):
        record = CoPurchase(anchor_item_id="a", partners=["b"], ts=NOW + n, event_id=f"p{n}")
        stored, _ = fold_co_purchase(stored, record, counts, horizon_s=86400.0, cap=64)
        top, ts = publishable(
            stored, "a", counts, n=10, min_support=config.min_support, min_score=config.min_score
        )
        assert (top == []) == (n < 2)  # one shopper's pair is not shown: 3 purchases are
    assert ts == NOW + 2 and top == [("b", pytest.approx(3.0, rel=1e-4))]
    bundles = Bundles(half_life_s=half_life, min_score=config.min_score)
    bundles.apply("a", BundleRecord.model_validate(orjson.loads(bundle_bytes("a", top, ts))))
    none: frozenset[str] = frozenset()
    assert bundles.for_item("a", none, none, 5, now=ts - 60) == [("b", pytest.approx(3.0))]
    [(_, faded)] = bundles.for_item("a", none, none, 5, now=ts + half_life)
    assert faded == pytest.approx(1.5, rel=1e-4)  # decayed from updated_ts at read time
    assert bundles.for_item("a", none, none, 5, now=ts + 7 * half_life) == []  # 3/128
    # The next co-purchase of the anchor, months later: the old partner fell below
    # min_score and the new one lacks support: a tombstone (nothing to publish).
    later = CoPurchase(anchor_item_id="a", partners=["c"], ts=ts + 7 * half_life, event_id="p9")
    stored, _ = fold_co_purchase(stored, later, counts, horizon_s=86400.0, cap=64)
    assert publishable(stored, "a", counts, n=10, min_support=3, min_score=0.05)[0] == []


def test_bought_together_does_not_overwrite_matches_search(bundled: BundleHarness) -> None:
    from tests.unit.text_fakes import FakeEncoder

    h = bundled
    h.app.pipeline.text_encoder = FakeEncoder()
    items = [BundleItem(item_id="sku-101", score=5.0)]
    h.app.pipeline.bundles.apply(
        "sku-1", BundleRecord(anchor_item_id="sku-1", items=items, updated_ts=NOW)
    )
    query = {"event_id": "s1", "user_id": "u1", "query": "gloss", "ts": NOW - 50}

    async def body(agent: Any) -> None:
        await send(agent, "searches", orjson.dumps({**query, "type": "search"}), offset=1)
        await until(lambda: len(h.on(h.config.topics.recommendations)) == 1)
        await send(agent, "clicks", click("e2", item="sku-1"), offset=2)
        await until(lambda: len(h.on(h.config.topics.recommendations)) == 2)

    h.run("score_user_events", body)
    after_click = h.on(h.config.topics.recommendations)[1].json()
    assert after_click["bundle"]["items"] == [{"item_id": "sku-101", "score": 5.0}]
    reasons = {i["item_id"]: i["reason"]["code"] for i in after_click["items"]}
    assert reasons["sku-101"] == "matches_search"  # the search put it there


def test_the_largest_records_the_writers_make_are_read_back() -> None:
    # 256-character ids (the limit) of 4-byte UTF-8 characters: the widest there are.
    wide = [f"{n:03d}" + "\U0001f600" * 253 for n in range(600)]
    full = bundle_bytes("a", [(i, 1000.0 - n) for n, i in enumerate(wide[:200])], NOW)
    record = decode_bundle(b"a", full)  # size 50 x candidate pool 4: 200 items fit
    assert isinstance(record, BundleRecord) and len(record.items) == 200
    [value] = co_purchase_records([("a", i, NOW) for i in wide], "p1").values()
    copurchase = decode_co_purchase(b"a", value)  # 600 partners: trimmed to fit
    assert isinstance(copurchase, CoPurchase) and 100 < len(copurchase.partners) < 500
    assert copurchase.partners[0] == wide[100]  # the latest 500, the first that fit
