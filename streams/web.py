"""HTTP endpoints on the Faust web server: ``/metrics``, ``/healthz``, ``/readyz``."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.metrics import Metrics

__all__ = ["is_ready", "register_web"]


def is_ready(app: faust.App) -> bool:
    """Ready = partitions assigned, not rebalancing, and table recovery finished."""
    recovery = app.tables.recovery  # type: ignore[attr-defined]  # TableManager, not the ABC
    return bool(
        app.consumer.assignment()
        and not app.rebalancing
        and not recovery.in_recovery
        and recovery.completed.is_set()
    )


def register_web(app: faust.App, metrics: Metrics, profiles: Any = None) -> None:
    """Add the health and metrics pages to the app's web server.

    Args:
        app: the Faust app.
        metrics: the metrics to serve.
        profiles: when given, ``/profiles/{user_id}`` returns that user's profile
            as held by this worker (an operator's debugging aid; off by default
            because it exposes user data).
    """

    @app.page("/metrics")
    async def metrics_view(self: Any, request: Any) -> Any:
        metrics.ready.set(1 if is_ready(app) else 0)
        body = generate_latest(metrics.registry)
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        # Alive as long as the event loop answers; restarts are for hangs, not recovery.
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        ready = is_ready(app)
        metrics.ready.set(1 if ready else 0)
        return self.json(
            {"ready": ready, "recovering": bool(app.in_recovery)},
            status=200 if ready else 503,
        )

    if profiles is not None:

        @app.page("/profiles/{user_id}")
        async def profile_view(self: Any, request: Any, user_id: str) -> Any:
            value = profiles.get(user_id)
            if value is None:
                return self.json({"user_id": user_id, "profile": None}, status=404)
            return self.json({"user_id": user_id, "profile": value})
