"""The lookup API: what a shop's web tier asks a worker about one user.

* ``GET /users/{user_id}/recommendations``: the latest list sent to the user (the
  document the ``recommendations`` topic carries: items with scores, model version,
  arm, trigger event, ``event_ts`` and ``produced_ts``);
* ``GET /users/{user_id}/profile``: the user's profile (see :mod:`streams.profile`).

Every request must carry ``Authorization: Bearer <token>`` (``RECSTREAM_API_TOKEN``):
no or a malformed header is 401, a wrong token 403, compared in constant time. Error
bodies are a fixed code (``{"error": "forbidden"}``...) and never echo the user id or
the token. Without a configured token the API answers 503 to every request.

State is partitioned: a user's profile lives in the worker that owns the user's
partition (the partition the user's events are keyed to: murmur2 of the user id, as
every Kafka client computes it). Any worker answers any lookup: one that does not own
the partition forwards the request (with its ``Authorization`` header) to the owner,
found in the consumer group's table assignment (Faust's ``app.router``; each worker
advertises ``http://RECSTREAM_WEB_ADVERTISED_HOST:RECSTREAM_WEB_PORT``). A forwarded
request is never forwarded again: during a rebalance, when no worker or another
worker than the one asked owns the partition, the answer is 503 and the caller
retries.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import faust
import orjson
from aiokafka.partitioner import murmur2
from yarl import URL

from streams.metrics import Metrics
from streams.topics import PROFILES_TABLE

__all__ = ["FORWARDED_HEADER", "LookupApi", "bearer_status", "user_partition"]

log = logging.getLogger("recstream.api")

#: Marks a request one worker forwarded to another (never forwarded again).
FORWARDED_HEADER = "X-Recstream-Forwarded"


def bearer_status(authorization: str | None, token: str) -> tuple[int, str] | None:
    """Check an ``Authorization`` header against the API token.

    Args:
        authorization: the request's header value, or ``None``.
        token: the configured token (empty: the API is off).

    Returns:
        ``None`` when the request may pass, else ``(status, error code)``: 503 with no
        token configured, 401 for a missing or non-bearer header, 403 for a wrong
        token. The comparison takes the same time wherever the tokens differ.
    """
    if not token:
        return 503, "api_disabled"
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "unauthorized"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 403, "forbidden"
    return None


def user_partition(user_id: str, partitions: int) -> int:
    """The partition a user's events are keyed to (Kafka's default murmur2 partitioner)."""
    hashed: int = murmur2(user_id.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def _host_port(url: str | URL) -> tuple[str, int]:
    parsed = URL(str(url))
    return (parsed.host or "", int(parsed.port or 80))


class LookupApi:
    """The ``/users/...`` pages of one worker.

    Args:
        app: the worker's Faust app (its web server, router and HTTP client).
        profiles: the profiles table.
        partitions: partitions of the input topics (and of the table).
        token: the bearer token (empty: API off).
        forward_timeout_s: timeout of a request forwarded to the owning worker.
        state_key: the table key of a user id (the id itself, or its pseudonym).
        ready: whether this worker's tables are restored and it is not rebalancing.
        metrics: where lookups are counted and timed.
    """

    def __init__(
        self,
        app: faust.App,
        profiles: Any,
        *,
        partitions: int,
        token: str,
        forward_timeout_s: float,
        state_key: Callable[[str], str],
        ready: Callable[[], bool],
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.profiles = profiles
        self.partitions = partitions
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=forward_timeout_s)
        self._state_key = state_key
        self._ready = ready
        self.metrics = metrics

    def register(self) -> None:
        """Add the pages to the app's web server."""
        api = self

        @self.app.page("/users/{user_id}/recommendations")
        async def recommendations(self: Any, request: Any, user_id: str) -> Any:
            return await api.answer(self, request, user_id, "recommendations")

        @self.app.page("/users/{user_id}/profile")
        async def profile(self: Any, request: Any, user_id: str) -> Any:
            return await api.answer(self, request, user_id, "profile")

    def owner(self, partition: int) -> str | None:
        """URL of the worker owning ``partition`` of the profiles table, if any."""
        topic = self.profiles.changelog_topic.get_topic_name()
        for url, topics in self.app.router.table_metadata(PROFILES_TABLE).items():
            if partition in topics.get(topic, ()):
                return str(url)
        return None

    async def answer(self, view: Any, request: Any, user_id: str, what: str) -> Any:
        """Authenticate, then answer here (owner) or forward to the owner; counted and timed."""
        started = time.perf_counter()
        response, outcome = await self._answer(view, request, user_id, what)
        self.metrics.lookups.labels(what, outcome).inc()
        self.metrics.lookup_seconds.labels(what).observe(time.perf_counter() - started)
        return response

    async def _answer(self, view: Any, request: Any, user_id: str, what: str) -> tuple[Any, str]:
        denied = bearer_status(request.headers.get("Authorization"), self._token)
        if denied is not None:
            status, code = denied
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return view.json({"error": code}, status=status, headers=headers), code
        owner = self.owner(user_partition(user_id, self.partitions))
        if owner is None:
            return view.json({"error": "partition_unassigned"}, status=503), "partition_unassigned"
        if _host_port(owner) != _host_port(self.app.conf.canonical_url):
            if request.headers.get(FORWARDED_HEADER):
                return view.json({"error": "not_owner"}, status=503), "not_owner"
            return await self._forward(view, request, owner)
        if not self._ready():
            return view.json({"error": "not_ready"}, status=503), "not_ready"
        raw = self.profiles.get(self._state_key(user_id))
        document = orjson.loads(raw) if raw else None
        if document is not None and "erased_at" in document:
            document = None  # an erasure marker (key ``erased:...``) is no profile
        if what == "profile":
            if document is None:
                return view.json({"error": "not_found"}, status=404), "not_found"
            return view.json({"user_id": user_id, "profile": document}), "local"
        latest = document.get("latest") if document else None
        if latest is None:
            return view.json({"error": "not_found"}, status=404), "not_found"
        return view.json(latest), "local"

    async def _forward(self, view: Any, request: Any, owner: str) -> tuple[Any, str]:
        url = str(owner).rstrip("/") + request.raw_path
        headers = {
            "Authorization": request.headers.get("Authorization", ""),
            FORWARDED_HEADER: "1",
        }
        client: Any = self.app.http_client
        try:
            async with client.get(url, headers=headers, timeout=self._timeout) as resp:
                body = await resp.read()
                response = view.bytes(body, content_type=resp.content_type, status=resp.status)
                return response, "forwarded"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("forwarding a lookup to %s failed: %r", owner, exc)
            return view.json({"error": "owner_unreachable"}, status=503), "owner_unreachable"
