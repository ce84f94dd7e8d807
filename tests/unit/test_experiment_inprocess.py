"""A/B arms in-process: each arm scored by its own model, labelled, counted; hot reload."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from models.experiment import CANDIDATE, CONTROL, NO_EXPERIMENT, Experiment, assign_arm
from models.scorer import HistoryItem, Intent, Recommendation, Scorer
from streams.events import EventType
from streams.reload import ExperimentSource, ModelReloader
from tests.unit.test_feedback_inprocess import (
    NOW,
    Driver,
    Harness,
    harness,  # noqa: F401  # the fixture
    hits,
    lists,
)

EXPERIMENT = Experiment(candidate="model-b", share=0.5, salt="pepper", started_at="")
USERS = [f"u{n}" for n in range(16)]


class OffsetScorer:
    """Recommends items ``offset`` after the latest one; remembers whom it scored."""

    provider = "cpu"

    def __init__(self, model_version: str, offset: int) -> None:
        self.model_version = model_version
        self.offset = offset
        self.seen: list[str] = []

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
        out = []
        for h in histories:
            self.seen.append(h[-1][0])
            n = int(h[-1][0].removeprefix("sku-")) + self.offset
            out.append(Recommendation(items=[(f"sku-{n}", 1.0)], strategy="sequential"))
        return out


def test_each_arm_is_scored_by_its_own_model_and_labelled(harness: Harness) -> None:  # noqa: F811
    h = harness
    control, candidate = OffsetScorer("model-a", 1), OffsetScorer("model-b", 1000)
    h.pipeline.set_scorer(control)
    h.pipeline.set_experiment(EXPERIMENT, candidate)
    arms = {u: assign_arm(u, EXPERIMENT.share, EXPERIMENT.salt) for u in USERS}
    assert set(arms.values()) == {CONTROL, CANDIDATE}
    base = {u: 100 * n for n, u in enumerate(USERS)}

    async def body(agent: Any) -> None:
        drive = Driver(h, agent)
        # Every user at once: mixed batches, split by arm for scoring.
        for n, u in enumerate(USERS):
            await drive.send_only(f"e{n}", f"sku-{base[u]}", NOW - 100, EventType.CLICK, u)
        await drive.wait_for(len(USERS))
        by_user = {r.key.decode(): r.json() for r in h.recommendations if r.key}
        for u in USERS:
            doc = by_user[u]
            want_version, offset = ("model-b", 1000) if arms[u] == CANDIDATE else ("model-a", 1)
            assert (doc["arm"], doc["model_version"]) == (arms[u], want_version), u
            assert [i["item_id"] for i in doc["items"]] == [f"sku-{base[u] + offset}"]
        assert sorted(control.seen) == sorted(f"sku-{base[u]}" for u in USERS if arms[u] == CONTROL)
        assert sorted(candidate.seen) == sorted(
            f"sku-{base[u]}" for u in USERS if arms[u] == CANDIDATE
        )
        exp = EXPERIMENT.id
        assert lists(h, "model-a", CONTROL, exp) == list(arms.values()).count(CONTROL)
        assert lists(h, "model-b", CANDIDATE, exp) == list(arms.values()).count(CANDIDATE)
        # A click on an item of each user's list: a hit labelled with the list's arm.
        for n, u in enumerate(USERS):
            offset = 1000 if arms[u] == CANDIDATE else 1
            await drive(f"c{n}", f"sku-{base[u] + offset}", NOW - 50, EventType.CLICK, u)
        assert hits(h, "click", "model-a", CONTROL, exp) == list(arms.values()).count(CONTROL)
        assert hits(h, "click", "model-b", CANDIDATE, exp) == list(arms.values()).count(CANDIDATE)
        # The experiment ends: everyone is scored by the control model again.
        h.pipeline.set_experiment(None, None)
        cand_user = next(u for u in USERS if arms[u] == CANDIDATE)
        await drive("z1", "sku-5", NOW - 10, EventType.BROWSE, cand_user)
        last = h.recommendations[-1].json()
        assert (last["arm"], last["model_version"]) == (CONTROL, "model-a")
        assert lists(h, "model-a", CONTROL, NO_EXPERIMENT) == 1  # not the experiment's

    h.run(body)


def test_lists_and_hits_are_labelled_with_the_experiment_they_were_scored_under(
    harness: Harness,  # noqa: F811
) -> None:
    """A control list from before the experiment stays out of the experiment's counts,
    even when the hit on it comes while the experiment runs."""
    h = harness
    h.pipeline.set_scorer(OffsetScorer("model-a", 1))
    user = next(u for u in USERS if assign_arm(u, EXPERIMENT.share, EXPERIMENT.salt) == CONTROL)

    async def body(agent: Any) -> None:
        drive = Driver(h, agent)
        await drive("b1", "sku-10", NOW - 60, EventType.BROWSE, user)  # recommends sku-11
        assert lists(h, "model-a", CONTROL, NO_EXPERIMENT) == 1
        h.pipeline.set_experiment(EXPERIMENT, OffsetScorer("model-b", 1000))
        await drive("c1", "sku-11", NOW - 50, EventType.CLICK, user)  # a hit on that list
        assert hits(h, "click", "model-a", CONTROL, NO_EXPERIMENT) == 1
        assert hits(h, "click", "model-a", CONTROL, EXPERIMENT.id) == 0
        # The click's own list was scored in the experiment (control arm).
        assert lists(h, "model-a", CONTROL, EXPERIMENT.id) == 1
        await drive("c2", "sku-12", NOW - 40, EventType.CLICK, user)  # a hit on it
        assert hits(h, "click", "model-a", CONTROL, EXPERIMENT.id) == 1

    h.run(body)


@dataclass
class FakeScorer:
    """A :class:`~models.scorer.Scorer` of a given version that recommends nothing."""

    model_version: str
    provider: str = "cpu"

    def recommend(
        self,
        histories: Sequence[Sequence[HistoryItem]],
        exclude: Sequence[Collection[str]],
        k: int,
        *,
        intents: Sequence[Intent | None] | None = None,
        hidden: Collection[str] = frozenset(),
    ) -> list[Recommendation]:
        return [Recommendation(items=[], strategy="popular") for _ in histories]


class FakeStoreSource:
    def __init__(self) -> None:
        self.version: str | None = "v1"
        self.experiment: Experiment | None = None
        self.loads: list[str] = []

    def current_version(self) -> str | None:
        return self.version

    def current_experiment(self) -> Experiment | None:
        return self.experiment

    def load(self, version: str) -> FakeScorer:
        self.loads.append(version)
        if version == "broken":
            raise RuntimeError("corrupt model")
        return FakeScorer(version)


def test_hot_reload_follows_the_experiment_and_reuses_a_promoted_candidate() -> None:
    source = FakeStoreSource()
    assert isinstance(source, ExperimentSource)
    serving: dict[str, Any] = {"scorer": FakeScorer("v1"), "experiment": None}

    def set_experiment(experiment: Experiment | None, scorer: Scorer | None) -> None:
        serving["experiment"] = (experiment, scorer) if experiment is not None else None

    reloader = ModelReloader(
        source,
        lambda: serving["scorer"],
        lambda s: serving.update(scorer=s),
        loaded_version="v1",
        set_experiment=set_experiment,
    )

    async def main() -> None:
        assert not await reloader.check()
        source.experiment = Experiment("v2", 0.1, "s", "")
        assert await reloader.check()
        experiment, candidate = serving["experiment"]
        assert experiment == source.experiment and candidate.model_version == "v2"
        assert not await reloader.check() and source.loads == ["v2"]
        # A broken candidate: the experiment does not start, the old one stays.
        source.experiment = Experiment("broken", 0.1, "t", "")
        assert not await reloader.check()
        assert serving["experiment"][1] is candidate
        # Promotion: CURRENT names the candidate and the experiment is gone; the
        # candidate's scorer becomes the control scorer without a second load.
        source.experiment = Experiment("v2", 0.1, "s", "")
        await reloader.check()
        source.version, source.experiment = "v2", None
        assert await reloader.check()
        assert serving["scorer"] is candidate and serving["experiment"] is None
        assert source.loads == ["v2", "broken"]

    asyncio.run(main())
