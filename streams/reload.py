"""Hot model reload: swap in a new model version without restarting the worker.

A :class:`ModelSource` says which version is current (e.g. the ``CURRENT`` pointer
of a model store) and loads a version into a ready scorer. The
:class:`ModelReloader` polls it; when the version changes it loads and warms the
new scorer in a thread (the stream keeps running on the old one meanwhile) and
then swaps the reference. A batch in flight finishes on the scorer it started
with, and every recommendation carries the ``model_version`` that produced it. A
version that fails to load is logged and retried later; the old model stays.

A source that is also an :class:`ExperimentSource` can name an A/B experiment: a
candidate version served to a share of users beside the current one. The reloader
loads the candidate's scorer the same way and installs it with the experiment; a
promoted candidate becomes the current scorer without being loaded again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from models.experiment import Experiment
from models.scorer import Scorer

__all__ = ["ExperimentSource", "ModelReloader", "ModelSource"]

log = logging.getLogger("recstream.reload")


class ModelSource(Protocol):
    """Where model versions come from."""

    def current_version(self) -> str | None:
        """The version that should be serving now (``None`` if unknown)."""
        ...

    def load(self, version: str) -> Scorer:
        """Load and warm up ``version``; may take seconds (runs in a thread)."""
        ...


@runtime_checkable
class ExperimentSource(ModelSource, Protocol):
    """A model source that can also name a running A/B experiment."""

    def current_experiment(self) -> Experiment | None:
        """The experiment that should be running now (``None``: none)."""
        ...


class ModelReloader:
    """Polls a :class:`ModelSource` and swaps the serving scorer on change.

    Args:
        source: the model source.
        get_scorer: returns the scorer serving now.
        set_scorer: installs a new scorer (an atomic reference swap).
        loaded_version: the source's name of the version serving now.
        set_experiment: installs an experiment and its candidate's scorer (both
            ``None``: no experiment); experiments are followed only with this and an
            :class:`ExperimentSource`.
        loaded_experiment: the experiment serving now, with its candidate's scorer.
        prepare: run on each newly loaded scorer in the loading thread, before it is
            installed (the pipeline attaches the catalog and builds its view there, so
            the first batch after a swap does not pay for it in the inference thread).
    """

    def __init__(
        self,
        source: ModelSource,
        get_scorer: Callable[[], Scorer],
        set_scorer: Callable[[Scorer], None],
        loaded_version: str | None = None,
        set_experiment: Callable[[Experiment | None, Scorer | None], None] | None = None,
        loaded_experiment: tuple[Experiment, Scorer] | None = None,
        prepare: Callable[[Scorer], None] | None = None,
    ) -> None:
        self.source = source
        self._prepare = prepare
        self.loaded_version = loaded_version
        self._set_experiment = set_experiment
        self.experiment = loaded_experiment[0] if loaded_experiment else None
        self._candidate = loaded_experiment[1] if loaded_experiment else None
        self._get = get_scorer
        self._set = set_scorer
        self.failed_versions: set[str] = set()
        self._lock = asyncio.Lock()

    async def check(self) -> bool:
        """Swap if the source names another version or experiment; returns whether it swapped."""
        async with self._lock:
            swapped = await self._check_current()
            if self._set_experiment is not None and isinstance(self.source, ExperimentSource):
                swapped = await self._check_experiment(self.source) or swapped
            return swapped

    async def _load(self, version: str) -> Scorer | None:
        """The loaded candidate if it is ``version``, else a fresh load; ``None`` on failure."""
        if self._candidate is not None and self.experiment is not None:
            if self.experiment.candidate == version:
                return self._candidate
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self._load_now, version)
        except Exception:
            if version not in self.failed_versions:
                log.exception(
                    "model %s failed to load; keeping %s", version, self._get().model_version
                )
            self.failed_versions.add(version)
            return None

    def _load_now(self, version: str) -> Scorer:
        scorer = self.source.load(version)
        if self._prepare is not None:
            self._prepare(scorer)
        return scorer

    async def _check_experiment(self, source: ExperimentSource) -> bool:
        loop = asyncio.get_running_loop()
        try:
            experiment = await loop.run_in_executor(None, source.current_experiment)
        except Exception:
            log.exception("could not read the model store's experiment")
            return False
        if experiment == self.experiment:
            return False
        assert self._set_experiment is not None
        if experiment is None:
            # `experiment promote` moves CURRENT to the candidate and then ends the
            # experiment; this poll may have read CURRENT just before. Read it again
            # first, while the candidate's scorer is still at hand, so its users never
            # see the old version in between.
            await self._check_current()
            self._set_experiment(None, None)
            log.info("experiment ended: %s", self.experiment)
            self.experiment = self._candidate = None
            return True
        candidate = await self._load(experiment.candidate)
        if candidate is None:
            return False
        self._set_experiment(experiment, candidate)
        self.experiment, self._candidate = experiment, candidate
        log.info(
            "experiment: candidate %s for %.1f%% of users (salt %s)",
            candidate.model_version,
            100 * experiment.share,
            experiment.salt,
            extra={"model_version": candidate.model_version},
        )
        return True

    async def _check_current(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(None, self.source.current_version)
        except Exception:
            log.exception("could not read the current model version")
            return False
        if not version or version == self.loaded_version:
            return False
        scorer = await self._load(version)
        if scorer is None:
            return False
        previous = self._get().model_version
        self._set(scorer)
        self.loaded_version = version
        log.info(
            "model reloaded: %s -> %s (provider %s)",
            previous,
            scorer.model_version,
            scorer.provider,
            extra={"model_version": scorer.model_version},
        )
        return True
