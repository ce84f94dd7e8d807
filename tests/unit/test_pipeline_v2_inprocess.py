"""Issue #17 in the agent, in-process: reasons, search intents, the catalog and bundles.

Same harness as ``test_pipeline_inprocess`` (Faust's test context, a memory:// table,
an in-memory sink). The scorers here stand in for the graph helper's ``OnnxScorer``
with its ``intents=`` keyword and ``Recommendation.reasons``: they are duck-typed on
the interface of docs issue #17 (DESIGN-17), so these tests run before it exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from models.scorer import HistoryItem
from tests.unit import test_pipeline_inprocess as base
from tests.unit.test_pipeline_inprocess import Harness, click, send, until

harness = base.harness  # the fixture


@dataclass(frozen=True)
class FakeReason:
    code: str
    item_id: str | None = None


@dataclass(frozen=True)
class ExplainedRecommendation:
    items: list[tuple[str, float]]
    strategy: str
    reasons: list[FakeReason] | None = None


class ExplainingScorer:
    """Ranks a fixed catalogue; names the last history item as the reason of each."""

    provider = "cpu"
    model_version = "explaining-1"

    def __init__(self, items: Sequence[str] = ("sku-100", "sku-101", "sku-102")) -> None:
        self.items = list(items)
        self.intents: list[Any] = []
        self.excluded: list[set[str]] = []

    def recommend(
        self,
        histories: Sequence[Sequence[HistoryItem]],
        exclude: Sequence[Collection[str]],
        k: int,
        *,
        intents: Sequence[Any] | None = None,
    ) -> list[ExplainedRecommendation]:
        self.intents.extend(intents if intents is not None else [None] * len(histories))
        self.excluded.extend(set(e) for e in exclude)
        out = []
        for history, banned in zip(histories, exclude, strict=True):
            kept = [i for i in self.items if i not in banned][:k]
            last = history[-1][0] if history else None
            out.append(
                ExplainedRecommendation(
                    items=[(item, float(len(kept) - n)) for n, item in enumerate(kept)],
                    strategy="sequential",
                    reasons=[FakeReason("similar_to_viewed", last) for _ in kept],
                )
            )
        return out


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

        def recommend(self, histories: Any, exclude: Any, k: int) -> list[Any]:
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
