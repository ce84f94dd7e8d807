"""Hot model reload: swap in a new model version without restarting the worker.

A :class:`ModelSource` says which version is current (e.g. the ``CURRENT`` pointer
of a model store) and loads a version into a ready scorer. The
:class:`ModelReloader` polls it; when the version changes it loads and warms the
new scorer in a thread (the stream keeps running on the old one meanwhile) and
then swaps the reference. A batch in flight finishes on the scorer it started
with, and every recommendation carries the ``model_version`` that produced it. A
version that fails to load is logged and retried later; the old model stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from models.scorer import Scorer

__all__ = ["ModelReloader", "ModelSource"]

log = logging.getLogger("recstream.reload")


class ModelSource(Protocol):
    """Where model versions come from."""

    def current_version(self) -> str | None:
        """The version that should be serving now (``None`` if unknown)."""
        ...

    def load(self, version: str) -> Scorer:
        """Load and warm up ``version``; may take seconds (runs in a thread)."""
        ...


class ModelReloader:
    """Polls a :class:`ModelSource` and swaps the serving scorer on change.

    Args:
        source: the model source.
        get_scorer: returns the scorer serving now.
        set_scorer: installs a new scorer (an atomic reference swap).
        loaded_version: the source's name of the version serving now.
    """

    def __init__(
        self,
        source: ModelSource,
        get_scorer: Callable[[], Scorer],
        set_scorer: Callable[[Scorer], None],
        loaded_version: str | None = None,
    ) -> None:
        self.source = source
        self.loaded_version = loaded_version
        self._get = get_scorer
        self._set = set_scorer
        self.failed_versions: set[str] = set()
        self._lock = asyncio.Lock()

    async def check(self) -> bool:
        """Swap if the source names another version; returns whether it swapped."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            try:
                version = await loop.run_in_executor(None, self.source.current_version)
            except Exception:
                log.exception("could not read the current model version")
                return False
            if not version or version == self.loaded_version:
                return False
            try:
                scorer = await loop.run_in_executor(None, self.source.load, version)
            except Exception:
                if version not in self.failed_versions:
                    log.exception(
                        "model %s failed to load; keeping %s", version, self._get().model_version
                    )
                self.failed_versions.add(version)
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
