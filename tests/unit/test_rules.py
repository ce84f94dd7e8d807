"""Item rules (availability, blocklist, categories) and the diversity cap, without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any
from unittest.mock import create_autospec

import orjson
import pytest
from confluent_kafka import Message

from models.scorer import HistoryItem, Intent, Reason, Recommendation
from streams.events import InvalidEvent, ReasonCode
from streams.rules import ItemRule, ItemRules, RulesConsumer, decode_rule, diversify
from tests.unit.test_pipeline_inprocess import Harness, click, harness, send, until

__all__ = ["harness"]  # the fixture, imported for these tests


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        (None, b"{}", ReasonCode.SCHEMA_VIOLATION),
        (b"sku-1", b"{nope", ReasonCode.INVALID_JSON),
        (b"sku-1", b"[]", ReasonCode.NOT_AN_OBJECT),
        (b"sku-1", b'{"blocked": "yes"}', ReasonCode.SCHEMA_VIOLATION),
        (b"sku-1", b'{"available": 0}', ReasonCode.SCHEMA_VIOLATION),
        (b"sku-1", b"x" * 5000, ReasonCode.TOO_LARGE),
    ],
)
def test_bad_rules_are_rejected_with_a_reason(
    key: bytes | None, value: bytes, code: ReasonCode
) -> None:
    decoded = decode_rule(key, value)
    assert isinstance(decoded, InvalidEvent) and decoded.code == code


def test_rules_decode_and_tombstones_delete() -> None:
    assert decode_rule(b"sku-1", b'{"blocked": true}') == ItemRule(blocked=True)
    assert decode_rule(b"sku-1", b'{"available": false, "category": "c"}') == ItemRule(
        available=False, category="c"
    )
    assert decode_rule(b"sku-1", None) is None
    rules = ItemRules()
    rules.apply("a", ItemRule(blocked=True, category="x"))
    rules.apply("b", ItemRule(available=False))
    rules.apply("c", ItemRule(category="y"))
    assert rules.hidden == {"a", "b"} and rules.categories == {"a": "x", "c": "y"}
    before = rules.hidden
    rules.apply("b", ItemRule())  # back in stock
    rules.apply("a", None)  # rule deleted
    assert rules.hidden == frozenset() and rules.categories == {"c": "y"}
    assert before == {"a", "b"}  # replaced, never mutated (the inference thread reads it)


def test_diversify_caps_each_category_and_keeps_the_order() -> None:
    rec = Recommendation(
        items=[("a1", 9.0), ("a2", 8.0), ("a3", 7.0), ("b1", 6.0), ("n1", 5.0), ("b2", 4.0)],
        strategy="sequential",
    )
    cats = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "b2": "b"}
    out = diversify(rec, cats, cap=2, k=4)
    assert out.items == [("a1", 9.0), ("a2", 8.0), ("b1", 6.0), ("n1", 5.0)]
    assert out.strategy == "sequential"
    assert [i for i, _ in diversify(rec, cats, cap=1, k=10).items] == ["a1", "b1", "n1"]
    assert out.reasons is None


def test_diversify_keeps_each_items_own_reason() -> None:
    items = [("a1", 9.0), ("a2", 8.0), ("a3", 7.0), ("b1", 6.0), ("n1", 5.0)]
    reasons = [
        Reason("similar_to_viewed", "h1"),
        Reason("matches_search"),
        Reason("similar_to_viewed", "h2"),
        Reason("similar_to_viewed", "h3"),
        Reason("matches_search"),
    ]
    rec = Recommendation(items=items, strategy="sequential", reasons=reasons)
    out = diversify(rec, {"a1": "a", "a2": "a", "a3": "a", "b1": "b"}, cap=1, k=3)
    assert [i for i, _ in out.items] == ["a1", "b1", "n1"]
    assert out.reasons == [reasons[0], reasons[3], reasons[4]]


def message(key: bytes | None, value: bytes | None, partition: int, offset: int) -> Any:
    msg = create_autospec(Message, instance=True, spec_set=True)
    msg.error.return_value = None
    msg.key.return_value = key
    msg.value.return_value = value
    msg.partition.return_value = partition
    msg.offset.return_value = offset
    return msg


def test_rules_consumer_applies_dead_letters_and_is_loaded_at_the_start_end_offsets() -> None:
    rules = ItemRules()
    dead: list[tuple[Any, InvalidEvent]] = []
    consumer = RulesConsumer(
        {"bootstrap.servers": "127.0.0.1:1"}, "item-rules", rules, lambda m, i: dead.append((m, i))
    )
    try:
        consumer._ends = {0: 2, 1: 1}  # what _assign found at start
        consumer.handle([message(b"a", b'{"blocked": true}', 0, 0)])
        assert rules.hidden == {"a"} and not rules.loaded
        consumer.handle([message(b"b", b"{bad", 0, 1), message(b"c", b"{}", 1, 0)])
        assert [i.code for _, i in dead] == [ReasonCode.INVALID_JSON]
        assert rules.loaded and len(rules) == 2
    finally:
        consumer.close()


class CapturingScorer:
    """Ranks sku-0..sku-9 in order, minus each row's exclude set; remembers the sets."""

    provider = "cpu"
    model_version = "capturing-1"

    def __init__(self) -> None:
        self.excludes: list[set[str]] = []
        self.ks: list[int] = []

    def recommend(
        self,
        histories: Sequence[Sequence[HistoryItem]],
        exclude: Sequence[Collection[str]],
        k: int,
        *,
        intents: Sequence[Intent | None] | None = None,
        hidden: Collection[str] = frozenset(),
    ) -> list[Recommendation]:
        exclude = [set(e) | set(hidden) for e in exclude]
        self.ks.append(k)
        out = []
        for ex in exclude:
            self.excludes.append(set(ex))
            items = [(f"sku-{i}", 10.0 - i) for i in range(10) if f"sku-{i}" not in ex]
            out.append(Recommendation(items=items[:k], strategy="sequential"))
        return out


def test_a_rule_read_mid_stream_applies_from_the_next_batch_and_lists_stay_k_long(
    harness: Harness,
) -> None:
    h = harness
    scorer = CapturingScorer()
    h.pipeline.set_scorer(scorer)
    k = h.config.scoring.top_k

    def items(i: int) -> list[str]:
        return [x["item_id"] for x in h.recommendations[i].json()["items"]]

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: len(h.recommendations) == 1)
        assert items(0)[:2] == ["sku-0", "sku-1"]
        h.pipeline.rules.apply("sku-0", ItemRule(blocked=True))
        h.pipeline.rules.apply("sku-1", ItemRule(available=False))
        await send(agent, "clicks", click("e2"), offset=1)
        await until(lambda: len(h.recommendations) == 2)
        assert "sku-0" not in items(1) and "sku-1" not in items(1)
        assert len(items(1)) == min(k, 8)  # masked before the top-K: as long as it can be
        assert {"sku-0", "sku-1"} <= scorer.excludes[-1]

    h.run(body)


def test_the_category_cap_is_applied_to_a_wider_candidate_list(harness: Harness) -> None:
    h = harness
    scorer = CapturingScorer()
    h.pipeline.set_scorer(scorer)
    h.pipeline.config = h.config.model_copy(
        update={"scoring": h.config.scoring.model_copy(update={"category_cap": 1, "top_k": 3})}
    )
    for i in range(10):
        h.pipeline.rules.apply(f"sku-{i}", ItemRule(category="even" if i % 2 == 0 else "odd"))
    h.pipeline.rules.apply("sku-5", ItemRule())  # no category: not capped

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: len(h.recommendations) == 1)
        got = [x["item_id"] for x in h.recommendations[0].json()["items"]]
        assert got == ["sku-0", "sku-1", "sku-5"]
        assert scorer.ks == [12]  # 4 x top_k candidates

    h.run(body)


def test_one_failing_record_does_not_cost_the_rest_of_its_polled_batch() -> None:
    """A full producer queue (BufferError from the DLQ) once, and a record that always
    fails: the rest of the batch is applied, the first retried, the second skipped."""
    rules = ItemRules()
    attempts: dict[bytes, int] = {}

    def dead_letter(msg: Any, _invalid: InvalidEvent) -> None:
        key = msg.key()
        attempts[key] = attempts.get(key, 0) + 1
        if key == b"full" and attempts[key] == 1:
            raise BufferError("Local: Queue full")
        if key == b"poison":
            raise RuntimeError("always")

    consumer = RulesConsumer({"bootstrap.servers": "127.0.0.1:1"}, "item-rules", rules, dead_letter)
    blocked = orjson.dumps({"blocked": True})
    batch = [
        message(b"a", blocked, 0, 0),
        message(b"full", b"{", 0, 1),
        message(b"b", blocked, 0, 2),
        message(b"poison", b"{", 0, 3),
        message(b"c", blocked, 0, 4),
    ]
    consumer._assigned = True
    try:
        asyncio.run(consumer.apply(batch, retry_s=0.0))
    finally:
        consumer.close()
    assert rules.hidden == {"a", "b", "c"}
    assert attempts == {b"full": 2, b"poison": 3}
