"""Issue #17 in the agent, in-process: reasons, search intents, the catalog and bundles.

Same harness as ``test_pipeline_inprocess`` (Faust's test context, a memory:// table,
an in-memory sink). The scorers here are small fakes of ``models.scorer.Scorer`` with
its ``intents=`` keyword, returning real ``Recommendation`` s with ``Reason`` s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import orjson
import pytest

from models.scorer import HistoryItem, Intent, Reason, Recommendation
from tests.unit import test_pipeline_inprocess as base
from tests.unit.test_pipeline_inprocess import NOW, Harness, click, send, until
from tests.unit.text_fakes import FakeEncoder

harness = base.harness  # the fixture


class ExplainingScorer:
    """Ranks a fixed catalogue; names the last history item as the reason of each."""

    provider = "cpu"
    model_version = "explaining-1"

    def __init__(self, items: Sequence[str] = ("sku-100", "sku-101", "sku-102")) -> None:
        self.items = list(items)
        self.intents: list[Intent | None] = []
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
        self.intents.extend(intents if intents is not None else [None] * len(histories))
        self.excluded.extend(set(e) for e in exclude)
        out = []
        for n, (history, banned) in enumerate(zip(histories, exclude, strict=True)):
            kept = [i for i in self.items if i not in banned]
            last = history[-1][0] if history else None
            reason = Reason("similar_to_viewed", last)
            if intents is not None and intents[n] is not None:
                kept.reverse()  # the search changes the list
                reason = Reason("matches_search")
            out.append(
                Recommendation(
                    items=[(item, float(len(kept) - n)) for n, item in enumerate(kept[:k])],
                    strategy="sequential",
                    reasons=[reason for _ in kept[:k]],
                )
            )
        return out


def click_at(event_id: str, ts: float = NOW - 5, user: str = "u1") -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "user_id": user, "item_id": "sku-1", "ts": ts, "type": "click"}
    )


def search(event_id: str, query: str = "red lipstick", ts: float = NOW - 905) -> bytes:
    return orjson.dumps(
        {"event_id": event_id, "user_id": "u1", "query": query, "ts": ts, "type": "search"}
    )


def test_reasons_of_the_scorer_reach_the_message_and_validate_as_v2(harness: Harness) -> None:
    import json

    import jsonschema

    from streams.messages import RecommendationMessage
    from streams.schema_files import SCHEMA_DIR

    h = harness
    h.pipeline.set_scorer(ExplainingScorer())  # type: ignore[arg-type]

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1", item="sku-9"), offset=1)
        await until(lambda: len(h.recommendations) == 1)

    h.run(body)
    doc = h.recommendations[0].json()
    schema = json.loads((SCHEMA_DIR / "recommendation.v2.json").read_text())
    jsonschema.validate(doc, schema)
    msg = RecommendationMessage.model_validate(doc)
    assert msg.schema_version == 2
    assert [(i.item_id, i.reason.code if i.reason else None) for i in msg.items] == [
        ("sku-100", "similar_to_viewed"),
        ("sku-101", "similar_to_viewed"),
        ("sku-102", "similar_to_viewed"),
    ]
    assert {i.reason.item_id for i in msg.items if i.reason} == {"sku-9"}


def test_a_popular_list_says_popular_and_a_scorer_without_reasons_gives_none(
    harness: Harness,
) -> None:
    h = harness  # the default FakeScorer: sequential lists, no reasons

    class PopularScorer:
        provider = "cpu"
        model_version = "popular-1"

        def recommend(self, histories: Any, exclude: Any, k: int, **_: Any) -> list[Any]:
            from models.scorer import Recommendation

            return [
                Recommendation([("sku-7", 30.0), ("sku-8", 20.0)], "popular") for _ in histories
            ]

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1"), offset=1)
        await until(lambda: len(h.recommendations) == 1)
        h.pipeline.set_scorer(PopularScorer())  # type: ignore[arg-type]
        await send(agent, "clicks", click("e2"), offset=2)
        await until(lambda: len(h.recommendations) == 2)
        await asyncio.sleep(0)

    h.run(body)
    first, second = (r.json() for r in h.recommendations)
    assert all("reason" not in item for item in first["items"])
    assert [item["reason"] for item in second["items"]] == [
        {"code": "popular", "item_id": None},
        {"code": "popular", "item_id": None},
    ]
    assert orjson.loads(h.profiles.get("u1"))["latest"] == second


def test_a_search_is_embedded_scored_with_its_intent_and_later_events_carry_it_decayed(
    harness: Harness,
) -> None:
    h = harness
    scorer, encoder = ExplainingScorer(), FakeEncoder()
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]
    h.pipeline.text_encoder = encoder

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e0", item="sku-9"), offset=1)
        await until(lambda: len(h.recommendations) == 1)
        await send(agent, "searches", search("s1"), offset=2)
        await until(lambda: len(h.recommendations) == 2)
        await until(lambda: "intent" in orjson.loads(h.profiles.get("u1")))
        await send(agent, "clicks", click("e2", item="sku-9"), offset=3)  # 900 s later
        await until(lambda: len(h.recommendations) == 3)

    h.run(body)
    before, after_search, after_click = (r.json() for r in h.recommendations)
    assert after_search["trigger_event_type"] == "search"
    assert after_search["trigger_event_id"] == "s1"
    # The search changed the list, and says why.
    assert [i["item_id"] for i in before["items"]] == ["sku-100", "sku-101", "sku-102"]
    assert [i["item_id"] for i in after_search["items"]] == ["sku-102", "sku-101", "sku-100"]
    assert {i["reason"]["code"] for i in after_search["items"]} == {"matches_search"}
    # One encoder call for the query; the scorer got the intent at full weight, then
    # decayed by the 900 s between the search and the next click (half-life 1800 s).
    assert encoder.calls == [["red lipstick"]]
    first, searched, later = scorer.intents
    assert first is None
    expected = encoder.encode(["red lipstick"])[0]
    assert searched.weight == 1.0 and np.allclose(searched.vector, expected)
    assert later.weight == pytest.approx(0.5**0.5)
    assert np.allclose(later.vector, expected, atol=1e-3)
    assert after_click["items"] == after_search["items"]
    # The profile keeps the vector and its time, never the query text.
    stored = h.profiles.get("u1")
    assert b"lipstick" not in stored
    assert orjson.loads(stored)["intent"][0] == NOW - 905
    assert all(b"lipstick" not in (r.value or b"") for r in h.sink.records)


def test_events_scored_with_a_search_or_right_after_it_carry_its_intent(
    harness: Harness,
) -> None:
    """The click after a search is read before the search's vector is in the profile
    (that is written once the search's list is out): in the same batch or the next."""
    h = harness
    scorer, encoder = ExplainingScorer(), FakeEncoder()
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]
    h.pipeline.text_encoder = encoder

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click_at("e0", NOW - 2000), offset=1)  # before: none
        await send(agent, "searches", search("s1"), offset=2)
        await send(agent, "clicks", click_at("e1", NOW - 2000), offset=3)  # late, older
        await send(agent, "clicks", click_at("e2"), offset=4)
        await send(agent, "clicks", click_at("e3", user="u2"), key=b"u2", offset=5)
        await until(lambda: len(h.recommendations) == 5)

    h.run(body)
    by_id = {r.json()["trigger_event_id"]: n for n, r in enumerate(h.recommendations)}
    intents = {event: scorer.intents[n] for event, n in by_id.items()}
    assert intents["e0"] is None and intents["e1"] is None and intents["e3"] is None
    expected = encoder.encode(["red lipstick"])[0]
    assert intents["s1"] is not None and intents["e2"] is not None
    assert intents["e2"].weight == pytest.approx(0.5 ** (900 / 1800))
    assert np.allclose(intents["e2"].vector, expected)
    assert {i["reason"]["code"] for i in h.recommendations[by_id["e2"]].json()["items"]} == {
        "matches_search"
    }


def test_an_old_search_no_longer_counts(harness: Harness) -> None:
    h = harness
    scorer = ExplainingScorer()
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]
    h.pipeline.text_encoder = FakeEncoder()

    async def body(agent: Any) -> None:
        # 5 half-lives before the click: weight 1/32 < the 0.05 floor.
        await send(agent, "searches", search("s1", ts=NOW - 5 - 5 * 1800), offset=1)
        await until(lambda: "intent" in orjson.loads(h.profiles.get("u1") or b"{}"))
        await send(agent, "clicks", click("e2"), offset=2)
        await until(lambda: len(h.recommendations) == 2)

    h.run(body)
    assert scorer.intents[0] is not None and scorer.intents[1] is None


def test_without_an_encoder_a_search_is_counted_and_acked_without_a_scoring_pass(
    harness: Harness,
) -> None:
    h = harness
    scorer = ExplainingScorer()
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]
    events = []

    async def body(agent: Any) -> None:
        events.append(await send(agent, "searches", search("s1"), offset=1))
        events.append(await send(agent, "searches", search("s1"), offset=2))  # redelivered
        await send(agent, "clicks", click("e3"), offset=3)
        await until(lambda: len(h.recommendations) == 1)
        h.sink.deliver_all()  # the profile's changelog records
        await until(lambda: all(e.message.acked for e in events))

    h.run(body)
    assert scorer.intents == [None]  # one scoring pass: the click's
    assert h.recommendations[0].json()["trigger_event_id"] == "e3"
    profile = orjson.loads(h.profiles.get("u1"))
    assert "intent" not in profile and len(profile["seen"]) == 2
    consumed = h.pipeline.metrics.events_consumed.labels("search")._value.get()
    assert consumed == 2
    assert h.pipeline.metrics.duplicate_events._value.get() == 1


def test_a_bad_search_is_dead_lettered_with_its_reason(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        event = await send(agent, "searches", search("s1", query=" "), offset=4)
        await until(lambda: len(h.dead_letters) == 1)
        h.sink.deliver_all()
        assert event.message.acked

    h.run(body)
    letter = h.dead_letters[0].json()
    assert letter["reason_code"] == "schema_violation" and letter["topic"] == "searches"
    assert letter["reason"].startswith("query:")
    assert h.recommendations == []


def test_each_item_keeps_its_own_reason_through_the_category_cap(harness: Harness) -> None:
    from streams.rules import ItemRule

    h = harness
    h.pipeline.config = h.config.model_copy(
        update={"scoring": h.config.scoring.model_copy(update={"category_cap": 1, "top_k": 2})}
    )

    class MixedReasons(ExplainingScorer):
        def recommend(self, histories: Any, exclude: Any, k: int, **kw: Any) -> Any:
            recs = super().recommend(histories, exclude, k, **kw)
            return [
                Recommendation(
                    items=r.items,
                    strategy=r.strategy,
                    reasons=[Reason("similar_to_viewed", f"h{n}") for n in range(len(r.items))],
                )
                for r in recs
            ]

    h.pipeline.set_scorer(MixedReasons())  # type: ignore[arg-type]
    for item in ("sku-100", "sku-101"):
        h.pipeline.rules.apply(item, ItemRule(category="same"))

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1"), offset=1)
        await until(lambda: len(h.recommendations) == 1)

    h.run(body)
    # sku-101 is capped out; sku-102 moves up and keeps the reason it was ranked with.
    assert [
        (i["item_id"], i["reason"]["item_id"]) for i in h.recommendations[0].json()["items"]
    ] == [
        ("sku-100", "h0"),
        ("sku-102", "h2"),
    ]


def test_an_intent_stored_by_another_encoder_is_dropped_and_the_batch_scored(
    harness: Harness,
) -> None:
    """A profile from a worker with another encoder (8 dims, this one has 26)."""
    from streams.intent import pack
    from streams.profile import Profile, remember_intent

    h = harness
    scorer = ExplainingScorer()
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]
    h.pipeline.text_encoder = FakeEncoder()
    profile = Profile()
    remember_intent(profile, NOW - 10, pack(np.full(8, 8**-0.5, dtype=np.float32)), 8)
    h.profiles.data["u1"] = profile.to_json()  # as a restore from the changelog would

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1", item="sku-9"), offset=1)
        await send(agent, "clicks", click("e2", user="u2", item="sku-9"), key=b"u2", offset=2)
        await until(lambda: len(h.recommendations) == 2)

    h.run(body)
    assert scorer.intents == [None, None] and h.dead_letters == []


def test_an_event_older_than_the_stored_search_gets_no_intent(harness: Harness) -> None:
    h = harness
    scorer = ExplainingScorer()
    h.pipeline.set_scorer(scorer)  # type: ignore[arg-type]
    h.pipeline.text_encoder = FakeEncoder()

    async def body(agent: Any) -> None:
        await send(agent, "searches", search("s1", ts=NOW - 100), offset=1)
        await until(lambda: "intent" in orjson.loads(h.profiles.get("u1") or b"{}"))
        await send(agent, "clicks", click_at("e0", NOW - 3000), offset=2)  # late, older
        await until(lambda: len(h.recommendations) == 2)

    h.run(body)
    assert scorer.intents[0] is not None and scorer.intents[1] is None


def test_a_search_without_an_encoder_writes_the_profile_and_holds_nothing(
    harness: Harness,
) -> None:
    """No encoder: the search is folded and written at once; no unwritten profile stays
    in memory (the TTL sweep skips users whose profile is held there)."""
    h = harness
    assert h.pipeline.text_encoder is None

    async def body(agent: Any) -> None:
        await send(agent, "searches", search("s1"), offset=1)
        await until(lambda: h.profiles.get("u1") is not None)

    h.run(body)
    assert h.pipeline._pending == {}
    assert orjson.loads(h.profiles.get("u1"))["last_seen"] > 0
