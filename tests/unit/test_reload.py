"""Hot model reload: swaps on a new version, keeps serving on failures."""

from __future__ import annotations

import asyncio

from streams.reload import ModelReloader
from tests.unit.test_experiment_inprocess import FakeScorer


class FakeSource:
    def __init__(self) -> None:
        self.version: str | None = "v1"
        self.broken: set[str] = set()
        self.loads = 0

    def current_version(self) -> str | None:
        return self.version

    def load(self, version: str) -> FakeScorer:
        self.loads += 1
        if version in self.broken:
            raise RuntimeError("corrupt model")
        return FakeScorer(version)


def test_reloads_only_when_the_version_changes_and_survives_a_bad_version() -> None:
    source = FakeSource()
    serving = {"scorer": FakeScorer("v1")}
    reloader = ModelReloader(
        source, lambda: serving["scorer"], lambda s: serving.update(scorer=s), loaded_version="v1"
    )

    async def main() -> None:
        assert not await reloader.check()  # same version: nothing loaded
        assert source.loads == 0
        source.version = "v2"
        assert await reloader.check()
        assert serving["scorer"].model_version == "v2"
        source.version, source.broken = "v3", {"v3"}
        assert not await reloader.check()  # broken: keep serving v2
        assert serving["scorer"].model_version == "v2"
        assert "v3" in reloader.failed_versions
        source.version = None
        assert not await reloader.check()
        assert serving["scorer"].model_version == "v2"

    asyncio.run(main())


def test_a_promotion_seen_half_way_never_serves_the_old_version_to_the_candidate() -> None:
    """`experiment promote` moves CURRENT to the candidate, then ends the experiment.
    A poll that read CURRENT just before the promotion and EXPERIMENT just after must
    still swap the candidate in (reusing its loaded scorer) as it ends the experiment."""
    from models.experiment import Experiment

    experiment = Experiment("v2", 0.5, "salt", "2026-12-02T00:00:00Z")
    candidate = FakeScorer("v2")

    class RacingSource(FakeSource):
        def __init__(self) -> None:
            super().__init__()
            self.reads = 0

        def current_version(self) -> str | None:
            self.reads += 1
            return "v1" if self.reads == 1 else "v2"  # promoted right after the 1st read

        def current_experiment(self) -> Experiment | None:
            return None  # ...and the experiment already ended

    source = RacingSource()
    serving: list[FakeScorer] = [FakeScorer("v1")]
    installed: list[tuple[object, object]] = []
    reloader = ModelReloader(
        source,
        lambda: serving[-1],
        serving.append,  # type: ignore[arg-type]
        loaded_version="v1",
        set_experiment=lambda e, s: installed.append((e, s)),
        loaded_experiment=(experiment, candidate),  # type: ignore[arg-type]
    )
    assert asyncio.run(reloader.check())
    assert serving[-1] is candidate and source.loads == 0  # swapped, not reloaded
    assert installed == [(None, None)] and reloader.loaded_version == "v2"


def test_a_new_scorer_is_prepared_in_the_loading_thread_before_it_is_installed() -> None:
    """The catalog view of a hot-reloaded model is built before the swap, off the loop."""
    import threading

    source = FakeSource()
    serving = {"scorer": FakeScorer("v1")}
    prepared: list[tuple[str, bool, str]] = []

    def prepare(scorer: FakeScorer) -> None:  # type: ignore[override]
        installed = serving["scorer"] is scorer
        prepared.append((scorer.model_version, installed, threading.current_thread().name))

    reloader = ModelReloader(
        source,
        lambda: serving["scorer"],
        lambda s: serving.update(scorer=s),
        loaded_version="v1",
        prepare=prepare,  # type: ignore[arg-type]
    )
    source.version = "v2"
    assert asyncio.run(reloader.check())
    assert serving["scorer"].model_version == "v2"
    [(version, installed_before, thread)] = prepared
    assert version == "v2" and not installed_before
    assert thread != threading.main_thread().name
