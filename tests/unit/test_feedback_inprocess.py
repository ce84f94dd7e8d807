"""Online feedback in-process: hits on recommended items, counted once, within the window.

The agent runs as in ``test_pipeline_inprocess.py`` (Faust's test context, a
memory:// table, an in-memory sink). The scorer here recommends the two items after
the user's latest one (``sku-7`` -> ``sku-8``, ``sku-9``), so each list is known
from the events alone and a reference count can be computed beside the worker.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import orjson
import pytest

from models.experiment import NO_EXPERIMENT
from models.scorer import HistoryItem, Intent, Recommendation
from streams.acks import InOrderAcks
from streams.app import create_app
from streams.config import FeedbackConfig, ScoringConfig, StreamConfig, WebConfig
from streams.events import EventType
from streams.output import OutputSink
from streams.profile import Profile
from tests.unit.test_pipeline_inprocess import (
    NOW,
    FakeClock,
    FakeSink,
    Harness,
    send,
    until,
)

WINDOW_S = 3600.0
LISTS = 3
TOPIC = {EventType.CLICK: "clicks", EventType.BROWSE: "browses", EventType.PURCHASE: "purchases"}


def next_items(item: str) -> list[str]:
    n = int(item.removeprefix("sku-"))
    return [f"sku-{n + 1}", f"sku-{n + 2}"]


class NextItemScorer:
    """Recommends the two items after the latest one of the history."""

    provider = "cpu"
    model_version = "model-a"

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
        return [
            Recommendation(items=[(i, 1.0) for i in next_items(h[-1][0])], strategy="sequential")
            for h in histories
        ]


@pytest.fixture
def harness() -> Iterator[Harness]:
    config = StreamConfig(
        app_id=f"feedback-{uuid.uuid4().hex[:8]}",
        store="memory://",
        scoring=ScoringConfig(max_batch=8, max_wait_ms=5.0, inference_thread=True),
        web=WebConfig(enabled=False),
        feedback=FeedbackConfig(lists=LISTS, window_s=WINDOW_S),
    )
    scorer: Any = NextItemScorer()
    sink = FakeSink()
    sink_port: OutputSink = sink
    app = create_app(config, scorer, output=sink_port)
    pipeline = app.pipeline
    clock = FakeClock()
    pipeline.acks = InOrderAcks(clock=clock)
    yield Harness(app, config, pipeline, pipeline.profiles, scorer, sink, clock)


def event(
    event_id: str, item: str, ts: float, etype: EventType = EventType.CLICK, user: str = "u1"
) -> bytes:
    doc: dict[str, Any] = {"event_id": event_id, "user_id": user, "item_id": item, "ts": ts}
    if etype is EventType.PURCHASE:
        doc.update(order_id=f"o-{event_id}", price=9.5)
    return orjson.dumps(doc)


class Driver:
    """Sends events one at a time, each after the previous one's list was remembered."""

    def __init__(self, h: Harness, agent: Any) -> None:
        self.h, self.agent, self.offset = h, agent, 0

    async def __call__(
        self,
        event_id: str,
        item: str,
        ts: float,
        etype: EventType = EventType.CLICK,
        user: str = "u1",
    ) -> None:
        before = len(self.h.recommendations)
        await self.send_only(event_id, item, ts, etype, user)
        await self.wait_for(before + 1)

    async def send_only(
        self, event_id: str, item: str, ts: float, etype: EventType, user: str
    ) -> None:
        """Send one event without waiting for its list."""
        await send(
            self.agent,
            TOPIC[etype],
            event(event_id, item, ts, etype, user),
            key=user.encode(),
            offset=self.offset,
        )
        self.offset += 1

    async def wait_for(self, recommendations: int) -> None:
        """Wait until this many lists were produced (and so remembered)."""
        await until(lambda: len(self.h.recommendations) == recommendations)


def hits(
    h: Harness,
    etype: str = "click",
    version: str = "model-a",
    arm: str = "control",
    experiment: str = NO_EXPERIMENT,
) -> float:
    value = h.pipeline.metrics.registry.get_sample_value(
        "recstream_recommendation_hits_total",
        {"event_type": etype, "model_version": version, "arm": arm, "experiment": experiment},
    )
    return value or 0.0


def all_hits(h: Harness) -> float:
    total = 0.0
    for metric in h.pipeline.metrics.registry.collect():
        if metric.name == "recstream_recommendation_hits":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def lists(
    h: Harness, version: str = "model-a", arm: str = "control", experiment: str = NO_EXPERIMENT
) -> float:
    value = h.pipeline.metrics.registry.get_sample_value(
        "recstream_recommendations_total",
        {"model_version": version, "arm": arm, "experiment": experiment},
    )
    return value or 0.0


def profile(h: Harness, user: str = "u1") -> Profile:
    return Profile.from_json(h.profiles.get(user))


def test_a_click_on_a_recommended_item_within_the_window_is_one_hit(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        drive = Driver(h, agent)
        await drive("e1", "sku-10", NOW - 60)  # recommends sku-11, sku-12
        assert hits(h) == 0 and lists(h) == 1
        await drive("e2", "sku-12", NOW - 30, EventType.PURCHASE)  # bought from the list
        assert hits(h, "purchase") == 1 and all_hits(h) == 1
        await drive("e3", "sku-12", NOW - 20)  # a click on it: another event type
        assert hits(h, "click") == 1 and all_hits(h) == 2
        assert lists(h) == 3
        [first, *_] = profile(h).recs
        assert first[:4] == [NOW - 60, "model-a", "control", ["sku-11", "sku-12"]]
        assert sorted(first[4]) == ["click", "purchase"] and first[5] == NO_EXPERIMENT
        # The first list counts each event type once; sku-12 is not on later lists
        # (they recommend sku-13, sku-14), so another click is no hit.
        await drive("e4", "sku-12", NOW - 10)
        assert all_hits(h) == 2
        # Recommendations still count by strategy as before.
        produced = h.pipeline.metrics.registry.get_sample_value(
            "recstream_recommendations_produced_total", {"strategy": "sequential"}
        )
        assert produced == 4

    h.run(body)


def test_no_hit_outside_the_window_or_on_an_item_not_recommended(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        drive = Driver(h, agent)
        await drive("e1", "sku-10", NOW - 2 * WINDOW_S)  # recommends sku-11, sku-12
        await drive("e2", "sku-11", NOW - WINDOW_S + 1)  # too late for that list
        assert all_hits(h) == 0
        await drive("e3", "sku-50", NOW - WINDOW_S + 2)  # not recommended (sku-12, sku-13)
        assert all_hits(h) == 0
        # An event older than the list that recommended the item is not caused by it.
        await drive("e4", "sku-52", NOW - WINDOW_S)  # the list of e3 holds sku-52
        assert all_hits(h) == 0
        await drive("e5", "sku-52", NOW)  # within the window of e3's list
        assert all_hits(h) == 1

    h.run(body)


def test_a_replayed_event_is_not_counted_again(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        drive = Driver(h, agent)
        await drive("e1", "sku-10", NOW - 60)
        await drive("e2", "sku-11", NOW - 30)
        await drive("e2", "sku-11", NOW - 30)  # at-least-once redelivery
        assert all_hits(h) == 1
        # Scored again to the same list, which is remembered once.
        assert [r[0] for r in profile(h).recs] == [NOW - 60, NOW - 30]
        assert lists(h) == 3

    h.run(body)


def test_remembered_lists_are_bounded_and_written_with_the_events_ack(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        drive = Driver(h, agent)
        for i in range(6):
            await drive(f"e{i}", f"sku-{100 * i}", NOW - 100 + i)
        recs = profile(h).recs
        assert len(recs) == LISTS
        assert [r[0] for r in recs] == [NOW - 97, NOW - 96, NOW - 95]
        assert [r[3] for r in recs] == [next_items(f"sku-{100 * i}") for i in (3, 4, 5)]
        # Each event waits for two records: its recommendation and one changelog
        # record (the event folded in and its list remembered, written once).
        changelog = h.sink.on(h.changelog)
        assert len(changelog) == 6
        assert h.pipeline.acks.pending == 6
        h.sink.deliver_all()
        assert h.pipeline.acks.pending == 0

    h.run(body)


def test_old_profiles_without_lists_load() -> None:
    old = orjson.dumps({"recent": [], "counts": {}, "purchased": [], "last_seen": 1.0, "seen": []})
    p = Profile.from_json(old)
    assert p.recs == []
    assert orjson.loads(p.to_json())["recs"] == []


def reference_hits(
    events: list[tuple[str, str, float, EventType, str]],
) -> tuple[dict[str, int], int]:
    """The rules, written out again: hits per event type and lists, from the events."""
    remembered: dict[str, list[tuple[float, list[str], set[str]]]] = {}
    seen: set[str] = set()
    counts: dict[str, int] = {}
    for n, (event_id, item, ts, etype, user) in enumerate(events):
        mine = remembered.setdefault(user, [])
        if event_id not in seen:
            seen.add(event_id)
            for list_ts, items, credited in sorted(mine, key=lambda e: e[0], reverse=True):
                if 0 < ts - list_ts <= WINDOW_S and item in items and etype.value not in credited:
                    credited.add(etype.value)
                    counts[etype.value] = counts.get(etype.value, 0) + 1
                    break
        # Every event is scored (a replay too) and its list remembered; the scorer
        # looks at the user's latest interaction in event time.
        last = max((e for e in events[: n + 1] if e[4] == user), key=lambda e: e[2])
        if any(t == ts and items == next_items(last[1]) for t, items, _ in mine):
            continue  # the same list again (a redelivery scored as before)
        mine.append((ts, next_items(last[1]), set()))
        mine.sort(key=lambda e: e[0])
        del mine[: max(0, len(mine) - LISTS)]
    return counts, len(events)


def test_hit_counts_equal_a_reference_count_from_the_same_events(harness: Harness) -> None:
    h = harness
    rng = random.Random(7)
    events: list[tuple[str, str, float, EventType, str]] = []
    ts = {u: NOW - 10 * WINDOW_S for u in ("u1", "u2", "u3")}
    last_item = {u: 10 for u in ts}
    for n in range(60):
        user = rng.choice(sorted(ts))
        ts[user] += rng.choice([5.0, 60.0, 600.0, WINDOW_S / 2, 2 * WINDOW_S])
        # Mostly items just recommended (hits), sometimes elsewhere (misses).
        step = rng.choice([1, 1, 2, 2, 3, 40])
        last_item[user] += step
        etype = rng.choice(list(EventType))
        events.append((f"e{n}", f"sku-{last_item[user]}", ts[user], etype, user))
    events.append(events[5])  # a redelivery
    expected, expected_lists = reference_hits(events)
    assert sum(expected.values()) > 5  # the sequence does exercise hits

    async def body(agent: Any) -> None:
        drive = Driver(h, agent)
        for event_id, item, t, etype, user in events:
            await drive(event_id, item, t, etype, user)
        await asyncio.sleep(0.01)
        got = {t.value: hits(h, t.value) for t in EventType}
        assert got == {t.value: float(expected.get(t.value, 0)) for t in EventType}
        assert lists(h) == expected_lists

    h.run(body)
