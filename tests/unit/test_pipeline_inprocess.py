"""The scoring agent in-process: Faust's test context, a memory:// table, no broker.

The agent runs through ``agent.test_context()`` (the faust testing guide) with a fake
scorer and an in-memory output sink standing in for librdkafka. The sink keeps every
record with its delivery callback, so a test decides when (and whether) each record
counts as durably written, and can watch acks follow deliveries.

``AgentTestWrapper.put`` stamps every message with one topic name (``<internal>`` for
an agent reading several topics), so :func:`send` builds the message itself, with
the input topic, partition and offset of a real record, and puts it on the test
context's channel.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faust
import orjson
import pytest
from faust.types import EventT, Message

from models.scorer import HistoryItem, Intent, Recommendation, Scorer
from streams.acks import InOrderAcks
from streams.agents import Pipeline
from streams.app import create_app
from streams.config import ScoringConfig, StreamConfig, WebConfig
from streams.events import ReasonCode
from streams.output import OutputSink
from streams.topics import changelog_topic
from streams.web import liveness

NOW = time.time()


class FakeScorer:
    """A :class:`~models.scorer.Scorer` recommending the same two items; can be made to fail."""

    provider = "cpu"

    def __init__(self, model_version: str = "fake-model-7") -> None:
        self.model_version = model_version
        self.fail: BaseException | None = None
        self.batches: list[int] = []
        self.excluded: list[set[str]] = []

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
        self.batches.append(len(histories))
        self.excluded.extend(set(e) for e in exclude)
        if self.fail is not None:
            raise self.fail
        return [
            Recommendation(items=[("sku-100", 2.0), ("sku-101", 1.0)], strategy="sequential")
            for _ in histories
        ]


@dataclass
class Record:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    on_delivered: Callable[[int], Any]
    delivered: bool = False

    def deliver(self, offset: int = 0) -> None:
        assert not self.delivered, "delivered twice"
        self.delivered = True
        self.on_delivered(offset)

    def json(self) -> dict[str, Any]:
        assert self.value is not None
        doc: dict[str, Any] = orjson.loads(self.value)
        return doc


class FakeSink:
    """An :class:`~streams.output.OutputSink` keeping records until a test delivers them."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.fail_topics: set[str] = set()
        self.room = asyncio.Event()
        self.room.set()
        self.started = self.stopped = False

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        on_delivered: Callable[[int], Any],
        partition: int | None = None,
    ) -> None:
        if topic in self.fail_topics:
            raise RuntimeError(f"cannot write to {topic}")
        self.records.append(Record(topic, key, value, partition, on_delivered))

    def start(self) -> None:
        self.started = True

    async def stop(self, timeout_s: float = 30.0) -> None:
        self.stopped = True

    async def wait_for_room(self) -> None:
        await self.room.wait()

    def on(self, topic: str) -> list[Record]:
        return [r for r in self.records if r.topic == topic]

    def deliver_all(self) -> None:
        for r in self.records:
            if not r.delivered:
                r.deliver()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    app: faust.App
    config: StreamConfig
    pipeline: Pipeline
    profiles: Any
    scorer: FakeScorer
    sink: FakeSink
    clock: FakeClock

    @property
    def changelog(self) -> str:
        return changelog_topic(self.config.app_id)

    @property
    def recommendations(self) -> list[Record]:
        return self.sink.on(self.config.topics.recommendations)

    @property
    def dead_letters(self) -> list[Record]:
        return self.sink.on(self.config.topics.dead_letter)

    def run(self, body: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``body(agent)`` inside the agent's test context."""
        agent = self.app.agents["score_user_events"]

        async def main() -> None:
            async with agent.test_context() as test_agent:
                await asyncio.wait_for(body(test_agent), 20)
            assert self.sink.started and self.sink.stopped

        asyncio.run(main())


@pytest.fixture
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    policy = getattr(request, "param", "exclude-purchased")  # indirect parametrisation
    config = StreamConfig(
        app_id=f"inproc-{uuid.uuid4().hex[:8]}",
        store="memory://",
        scoring=ScoringConfig(
            max_batch=8, max_wait_ms=30.0, inference_thread=True, history_policy=policy
        ),
        web=WebConfig(enabled=False),
    )
    scorer = FakeScorer()
    assert isinstance(scorer, Scorer)
    sink = FakeSink()
    sink_port: OutputSink = sink  # the fake satisfies the protocol
    # The production wiring, with the memory:// store and the in-memory sink; nothing
    # is started, so the broker address is never contacted.
    app = create_app(config, scorer, output=sink_port)
    pipeline = app.pipeline
    profiles = pipeline.profiles
    clock = FakeClock()
    pipeline.acks = InOrderAcks(clock=clock)
    yield Harness(app, config, pipeline, profiles, scorer, sink, clock)


async def send(
    agent: Any,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None = b"u1",
    partition: int = 0,
    offset: int = 0,
) -> EventT[Any]:
    """Put one input record, as consumed from ``topic``, on the test context's channel."""
    channel = agent.stream().channel
    message = Message(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=NOW,
        timestamp_type=0,
        headers=None,
        key=key,
        value=value,
        checksum=None,
        generation_id=agent.app.consumer_generation_id,
    )
    event: EventT[Any] = await channel.decode(message)
    await channel.put(event)
    return event


def click(event_id: str, user: str = "u1", item: str = "sku-1") -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "user_id": user, "item_id": item, "ts": NOW - 5, "type": "click"}
    )


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def test_valid_event_updates_profile_and_produces_one_recommendation(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        event = await send(agent, "clicks", click("e1", item="sku-9"), partition=2, offset=41)
        await until(lambda: len(h.recommendations) == 1)
        await asyncio.sleep(0.05)  # nothing else follows
        [rec] = h.recommendations
        assert rec.key == b"u1"
        doc = rec.json()
        assert doc["model_version"] == "fake-model-7"
        assert doc["trigger_event_id"] == "e1" and doc["trigger_event_type"] == "click"
        assert [i["item_id"] for i in doc["items"]] == ["sku-100", "sku-101"]
        # The profile holds the click and the list it was recommended, written once:
        # one changelog record went to the sink on the input's partition (the
        # librdkafka writer, not Faust's producer).
        profile = orjson.loads(h.profiles.get("u1"))
        assert [r[0] for r in profile["recent"]] == ["sku-9"]
        assert profile["recs"] == [
            [NOW - 5, "fake-model-7", "control", ["sku-100", "sku-101"], [], "none"]
        ]
        [written] = h.sink.on(h.changelog)
        assert written.partition == 2
        assert orjson.loads(written.value or b"") == profile
        # The same list is the user's latest (for the lookup API) and goes to the
        # compacted latest-list topic, keyed by user.
        assert profile["latest"] == doc
        [latest] = h.sink.on(h.config.topics.recommendations_latest)
        assert latest.key == b"u1" and latest.json() == doc
        assert h.dead_letters == []
        assert len(h.sink.records) == 3
        # Acked only once all three records are delivered, the latest list included.
        for record in h.sink.records:
            if record is not latest:
                record.deliver()
        assert not event.message.acked
        latest.deliver()
        assert event.message.acked and h.pipeline.acks.pending == 0

    h.run(body)


@pytest.mark.parametrize(
    ("topic", "value", "key", "code"),
    [
        ("clicks", b'{"event_id":', b"u1", ReasonCode.INVALID_JSON),
        ("clicks", b"", b"u1", ReasonCode.EMPTY),
        (
            "purchases",  # no order_id, no price
            orjson.dumps({"event_id": "p1", "user_id": "u1", "item_id": "sku-1", "ts": NOW}),
            b"u1",
            ReasonCode.SCHEMA_VIOLATION,
        ),
        ("purchases", click("e1"), b"u1", ReasonCode.TYPE_MISMATCH),
        ("clicks", click("e1", user="u2"), b"u1", ReasonCode.KEY_MISMATCH),
        ("not-an-input", click("e1"), b"u1", ReasonCode.UNKNOWN_TOPIC),
    ],
    ids=lambda v: v.value if isinstance(v, ReasonCode) else "",
)
def test_bad_record_is_dead_lettered_with_its_reason_code(
    harness: Harness, topic: str, value: bytes, key: bytes, code: ReasonCode
) -> None:
    h = harness

    async def body(agent: Any) -> None:
        event = await send(agent, topic, value, key=key, partition=1, offset=9)
        await until(lambda: len(h.dead_letters) == 1)
        [dead] = h.dead_letters
        doc = dead.json()
        assert doc["reason_code"] == code.value
        assert (doc["topic"], doc["partition"], doc["offset"]) == (topic, 1, 9)
        assert dead.key == key
        assert h.recommendations == [] and h.sink.on(h.changelog) == []
        assert not event.message.acked
        dead.deliver()
        assert event.message.acked

    h.run(body)


def test_exception_in_handle_is_dead_lettered_and_the_next_event_is_processed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    table_get = h.profiles.get

    def get(key: str, default: Any = None) -> Any:
        if key == "u-boom":
            raise RuntimeError("profile store unavailable")
        return table_get(key, default)

    monkeypatch.setattr(h.profiles, "get", get)

    async def body(agent: Any) -> None:
        bad = await send(agent, "clicks", click("e1", user="u-boom"), key=b"u-boom", offset=0)
        good = await send(agent, "clicks", click("e2", user="u2"), key=b"u2", offset=1)
        await until(lambda: len(h.dead_letters) == 1 and len(h.recommendations) == 1)
        doc = h.dead_letters[0].json()
        assert doc["reason_code"] == ReasonCode.PROCESSING_ERROR.value
        assert "profile store unavailable" in doc["reason"]
        assert h.recommendations[0].json()["trigger_event_id"] == "e2"
        h.sink.deliver_all()
        assert bad.message.acked and good.message.acked

    h.run(body)


def test_scorer_failure_dead_letters_every_event_of_the_batch_and_the_agent_goes_on(
    harness: Harness,
) -> None:
    h = harness
    h.scorer.fail = RuntimeError("onnxruntime exploded")

    async def body(agent: Any) -> None:
        events = [
            await send(
                agent, "clicks", click(f"e{i}", user=f"u{i}"), key=f"u{i}".encode(), offset=i
            )
            for i in range(3)
        ]
        await until(lambda: len(h.dead_letters) == 3)
        assert h.scorer.batches == [3], "the three events were one batch"
        for record, i in zip(h.dead_letters, range(3), strict=True):
            doc = record.json()
            assert doc["reason_code"] == ReasonCode.PROCESSING_ERROR.value
            assert doc["reason"].startswith("scoring failed:")
            assert "onnxruntime exploded" in doc["reason"]
            assert doc["offset"] == i
        assert h.recommendations == []
        # Their profile updates stand (the changelog records were written).
        assert len(h.sink.on(h.changelog)) == 3
        h.scorer.fail = None
        after = await send(agent, "clicks", click("e9", user="u9"), key=b"u9", offset=3)
        await until(lambda: len(h.recommendations) == 1)
        assert h.recommendations[0].json()["trigger_event_id"] == "e9"
        h.sink.deliver_all()
        assert all(e.message.acked for e in [*events, after])

    h.run(body)


def test_events_are_acked_in_offset_order_only_after_all_their_outputs_are_delivered(
    harness: Harness,
) -> None:
    h = harness

    async def body(agent: Any) -> None:
        users = ["a", "b", "c"]
        events = [
            await send(agent, "clicks", click(f"e-{u}", user=u), key=u.encode(), offset=i)
            for i, u in enumerate(users)
        ]
        await until(lambda: len(h.recommendations) == 3)

        def outputs(user: str) -> list[Record]:
            recs = [r for r in h.recommendations if r.key == user.encode()]
            latest = h.sink.on(h.config.topics.recommendations_latest)
            recs += [r for r in latest if r.key == user.encode()]
            logs = [r for r in h.sink.on(h.changelog) if orjson.loads(r.key or b"") == user]
            assert len(recs) == 2 and len(logs) == 1  # the update and its list, written once
            return [*recs, *logs]

        def acked() -> list[bool]:
            return [e.message.acked for e in events]

        rec_a, latest_a, log_a = outputs("a")
        for record in outputs("c"):  # the last event finishes first
            record.deliver()
        assert acked() == [False, False, False]
        rec_a.deliver()  # recommendations delivered, the changelog record not yet
        latest_a.deliver()
        assert acked() == [False, False, False]
        log_a.deliver()  # the profile's record also holds the ack
        assert acked() == [True, False, False]  # c waits for b
        assert h.pipeline.acks.pending == 2
        for record in outputs("b"):
            record.deliver()
        assert acked() == [True, True, True]
        assert h.pipeline.acks.pending == 0

    h.run(body)


def test_agent_waits_for_room_in_the_output_before_the_next_event(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        h.sink.room.clear()  # the output's backlog is over its bound
        await send(agent, "clicks", click("e1"), offset=0)
        await asyncio.sleep(0.1)
        assert h.sink.records == [] and h.pipeline.acks.pending == 0
        h.sink.room.set()
        await until(lambda: len(h.recommendations) == 1)

    h.run(body)


def test_failed_dead_letter_write_leaves_the_event_unacked_until_liveness_fails(
    harness: Harness,
) -> None:
    """The stuck-event defect: the partition is held back and /healthz turns to 503."""
    h = harness
    h.sink.fail_topics.add(h.config.topics.dead_letter)
    bound = h.config.web.max_unacked_age_s

    async def body(agent: Any) -> None:
        stuck = await send(agent, "clicks", b"not json", partition=0, offset=0)
        behind = await send(agent, "clicks", click("e1"), partition=0, offset=1)
        other = await send(
            agent, "clicks", click("e2", user="u2"), key=b"u2", partition=1, offset=0
        )
        await until(lambda: len(h.recommendations) == 2)
        h.sink.deliver_all()
        assert other.message.acked  # other partitions go on
        assert not stuck.message.acked and not behind.message.acked
        assert h.pipeline.acks.pending == 2
        assert h.dead_letters == []

        acks = h.pipeline.acks
        h.clock.now += bound / 2
        assert acks.oldest_age() == pytest.approx(bound / 2)
        alive, body_ok = liveness(acks, bound)
        assert alive and body_ok["status"] == "ok"
        h.clock.now += bound / 2 + 1
        assert acks.oldest_age() == pytest.approx(bound + 1)
        alive, body_stuck = liveness(acks, bound)
        assert not alive
        assert body_stuck == {
            "status": "stuck",
            "oldest_unacked_age_s": round(bound + 1, 1),
            "bound_s": bound,
        }

    h.run(body)


def test_liveness_without_acks_or_with_nothing_pending_is_ok() -> None:
    assert liveness(None, 1.0) == (True, {"status": "ok", "oldest_unacked_age_s": 0.0})
    clock = FakeClock()
    acks = InOrderAcks(clock=clock)
    clock.now += 1e6
    assert liveness(acks, 1.0)[0]


@pytest.mark.parametrize(
    ("harness", "excluded"),
    [
        ("exclude-purchased", {"sku-2"}),
        ("exclude-history", {"sku-1", "sku-2", "sku-3"}),
        ("model", set()),
    ],
    indirect=["harness"],
)
def test_history_policy_decides_which_own_items_are_excluded(
    harness: Harness, excluded: set[str]
) -> None:
    h = harness
    purchase = orjson.dumps(
        {
            "event_id": "p1",
            "user_id": "u1",
            "item_id": "sku-2",
            "ts": NOW - 4,
            "type": "purchase",
            "order_id": "o1",
            "price": 9.5,
        }
    )

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1", item="sku-1"), offset=1)
        await send(agent, "purchases", purchase, offset=2)
        await send(agent, "clicks", click("e3", item="sku-3"), offset=3)
        await until(lambda: len(h.scorer.excluded) == 3)

    h.run(body)
    assert h.scorer.excluded[-1] == excluded


def test_a_users_events_in_one_batch_write_the_profile_once_and_all_wait_for_it(
    harness: Harness,
) -> None:
    h = harness

    async def body(agent: Any) -> None:
        # Sent within the batcher's wait: one batch, one write of u1's profile.
        events = [
            await send(agent, "clicks", click(f"e{i}", item=f"sku-{i}"), offset=i) for i in range(3)
        ]
        await until(lambda: len(h.recommendations) == 3)
        await asyncio.sleep(0.05)
        [written] = h.sink.on(h.changelog)
        stored = orjson.loads(written.value or b"")
        assert stored == orjson.loads(h.profiles.get("u1"))
        assert sorted(r[0] for r in stored["recent"]) == ["sku-0", "sku-1", "sku-2"]
        assert stored["latest"]["trigger_event_id"] in {"e0", "e1", "e2"}
        # Every event's ack waits for that one record.
        for record in h.sink.records:
            if record is not written:
                record.deliver()
        assert [e.message.acked for e in events] == [False, False, False]
        written.deliver()
        assert [e.message.acked for e in events] == [True, True, True]
        assert h.pipeline.acks.pending == 0

    h.run(body)


def test_the_next_event_of_a_user_in_flight_sees_the_unwritten_profile(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e0", item="sku-0"), offset=0)
        await until(lambda: len(h.recommendations) == 1)
        await send(agent, "clicks", click("e1", item="sku-1"), offset=1)
        await send(agent, "clicks", click("e1", item="sku-1"), offset=2)  # a redelivery
        await until(lambda: len(h.recommendations) == 3)
        await asyncio.sleep(0.05)
        # The redelivery was recognised against the profile not yet written.
        stored = orjson.loads(h.profiles.get("u1"))
        assert [r[0] for r in stored["recent"]] == ["sku-0", "sku-1"]
        assert stored["counts"] == {"click": 2}
        assert h.pipeline._pending == {}  # nothing left unwritten

    h.run(body)
