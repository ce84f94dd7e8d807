"""HTTP endpoints on the Faust web server: ``/metrics``, ``/healthz``, ``/readyz``.

The lookup API (``/users/...``) is in :mod:`streams.api`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams._faust import table_recovery
from streams.acks import InOrderAcks
from streams.metrics import Metrics

__all__ = ["is_ready", "liveness", "register_web"]


def is_ready(app: faust.App, rules_loaded: Callable[[], bool] = lambda: True) -> bool:
    """Ready = partitions assigned, not rebalancing, table recovery finished, and the
    item rules read (``rules_loaded``)."""
    recovery = table_recovery(app)
    return bool(
        rules_loaded()
        and app.consumer.assignment()
        and not app.rebalancing
        and not recovery.in_recovery
        and recovery.completed.is_set()
    )


def liveness(acks: InOrderAcks | None, max_unacked_age_s: float) -> tuple[bool, dict[str, Any]]:
    """The ``/healthz`` decision: alive unless an event has waited too long for its ack.

    Args:
        acks: the pipeline's acks (``None``: nothing to check).
        max_unacked_age_s: bound on the age of the oldest unacked event, seconds.

    Returns:
        ``(alive, body)``: ``alive`` false once the oldest unacked event is older than
        the bound (a partition held back by an undeliverable record); ``body`` is the
        JSON document the endpoint returns.
    """
    age = acks.oldest_age() if acks is not None else 0.0
    if age > max_unacked_age_s:
        return False, {
            "status": "stuck",
            "oldest_unacked_age_s": round(age, 1),
            "bound_s": max_unacked_age_s,
        }
    return True, {"status": "ok", "oldest_unacked_age_s": round(age, 1)}


def register_web(
    app: faust.App,
    metrics: Metrics,
    input_topics: tuple[str, ...] = (),
    table: Any = None,
    acks: InOrderAcks | None = None,
    max_unacked_age_s: float = 300.0,
    rules_loaded: Callable[[], bool] = lambda: True,
) -> None:
    """Add the health and metrics pages to the app's web server.

    Args:
        app: the Faust app.
        metrics: the metrics to serve.
        input_topics: topics whose consumer lag is exported.
        table: the profiles table whose RocksDB memory is exported.
        acks: the pipeline's acks; the age of its oldest unacked event is exported,
            and ``/healthz`` fails once it exceeds ``max_unacked_age_s``.
        max_unacked_age_s: liveness bound on the oldest unacked event's age.
        rules_loaded: whether the item rules were read (a readiness condition).

    These pages carry no user data and need no token; the lookup API
    (:mod:`streams.api`) does.
    """

    async def refresh_gauges() -> None:
        metrics.ready.set(1 if is_ready(app, rules_loaded) else 0)
        recovery = table_recovery(app)
        if acks is not None:
            metrics.events_unacked.set(acks.pending)
            metrics.oldest_unacked_age.set(acks.oldest_age())
        try:
            metrics.restore_remaining.set(recovery.active_remaining_total())
        except Exception:  # highwaters not known before the first assignment
            metrics.restore_remaining.set(0)
        if table is not None and hasattr(table, "memory_usage"):
            for kind, value in table.memory_usage().items():
                metrics.table_memory.labels(kind).set(value)
        consumer = app.consumer
        inputs = set(input_topics)
        metrics.consumer_lag.clear()
        for tp in consumer.assignment():
            if tp.topic not in inputs:
                continue
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
            if position is not None and highwater is not None and highwater >= 0:
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )

    @app.page("/metrics")
    async def metrics_view(self: Any, request: Any) -> Any:
        await refresh_gauges()
        body = generate_latest(metrics.registry)
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(self: Any, request: Any) -> Any:
        # Alive while the event loop answers and no event is stuck: restarts are for
        # hangs and for a partition held back by an undeliverable record (the restart
        # redelivers it), never for recovery.
        alive, body = liveness(acks, max_unacked_age_s)
        return self.json(body, status=200 if alive else 503)

    @app.page("/readyz")
    async def readyz(self: Any, request: Any) -> Any:
        ready = is_ready(app, rules_loaded)
        metrics.ready.set(1 if ready else 0)
        return self.json(
            {"ready": ready, "recovering": bool(app.in_recovery)},
            status=200 if ready else 503,
        )
