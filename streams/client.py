"""Clients for the two kinds of services around recstream.

* :class:`EventProducer`: shops' services sending click/browse/purchase events
  (validated locally, keyed by ``user_id``, routed to the right topic).
* :class:`RecommendationReader`: services consuming recommendation lists, with
  de-duplication by ``trigger_event_id`` (lists can be re-sent after a worker crash).
* :class:`ErasureClient`: services asking recstream to forget a user.
* :class:`Pseudonyms`: in pseudonymous mode, the shop's user ids as recstream names them.

Both use confluent-kafka (librdkafka). Pass the same connection settings you give
any librdkafka client (``bootstrap.servers``, ``security.protocol``, SASL...).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streams.catalog import CatalogItem
from streams.control import erasure_request_bytes
from streams.events import BrowseEvent, ClickEvent, Event, EventType, PurchaseEvent, SearchEvent
from streams.messages import RecommendationMessage
from streams.privacy import pseudonym
from streams.topics import TopicNames

__all__ = [
    "AsyncEventProducer",
    "ErasureClient",
    "EventProducer",
    "Pseudonyms",
    "RecommendationReader",
    "event_from_dict",
    "event_payload",
]


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Build a typed event from a mapping with an ``event_type`` (or ``type``) key.

    ``None`` values are dropped, so a record with every optional field (e.g. a
    synthetic or exported event log row) validates for its own type.

    Raises:
        ValueError: unknown event type; pydantic.ValidationError: invalid fields.
    """
    fields = {k: v for k, v in data.items() if v is not None}
    kind = EventType(fields.pop("event_type", None) or fields.pop("type", None))
    fields.pop("type", None)
    if kind is EventType.CLICK:
        return ClickEvent.model_validate(fields)
    if kind is EventType.BROWSE:
        return BrowseEvent.model_validate(fields)
    return PurchaseEvent.model_validate(fields)


def event_payload(event: Event | SearchEvent) -> bytes:
    """The JSON bytes recstream expects for an event (``type`` included)."""
    data = event.model_dump(mode="json", exclude_none=True)
    return orjson.dumps(data)


class EventProducer:
    """Send events to the input topics, keyed by ``user_id``.

    Args:
        config: librdkafka settings; at least ``bootstrap.servers``.
        topics: topic names (defaults match a default worker).

    Delivery is asynchronous and batched by librdkafka (``linger.ms`` 5 by default);
    call :meth:`flush` before exiting. ``acks=all`` and idempotence are on, so a
    retried send is not duplicated by the broker.
    """

    def __init__(self, config: Mapping[str, Any], topics: TopicNames | None = None) -> None:
        conf: dict[str, Any] = {
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
            # Same key -> same partition as Java clients and Faust's changelog writes.
            "partitioner": "murmur2_random",
        }
        conf.update(config)
        self._producer = Producer(conf)
        self.topics = topics or TopicNames()
        self.errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def send(self, event: Event) -> None:
        """Queue one typed event (see :mod:`streams.events`)."""
        self.send_raw(self.topics.for_type(event.event_type), event.user_id, event_payload(event))

    def send_search(self, event: SearchEvent) -> None:
        """Queue one search (the ``searches`` topic, keyed by ``user_id``)."""
        self.send_raw(self.topics.searches, event.user_id, event_payload(event))

    def send_item(self, item_id: str, item: CatalogItem | None) -> None:
        """Queue a catalog record (``items``, keyed by item id); ``None`` retires the item."""
        value = (
            None if item is None else orjson.dumps(item.model_dump(mode="json", exclude_none=True))
        )
        self.send_raw(self.topics.items, item_id, value)

    def send_raw(self, topic: str, key: str | bytes | None, value: bytes | None) -> None:
        """Queue an arbitrary record (for replays and tests of bad input)."""
        while not self.offer_raw(topic, key, value):
            self._producer.poll(0.05)  # local queue full: let deliveries drain

    def offer_raw(self, topic: str, key: str | bytes | None, value: bytes | None) -> bool:
        """Queue a record if the local queue has room; never blocks."""
        try:
            self._producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery)
        except BufferError:
            return False
        self._producer.poll(0)
        return True

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for queued records; returns how many are still undelivered."""
        return int(self._producer.flush(timeout_s))

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


class AsyncEventProducer:
    """The :class:`EventProducer` for asyncio services.

    ``send`` only queues (librdkafka batches and delivers on its own threads), so
    it never blocks the event loop; ``flush`` waits for delivery in a thread.
    """

    def __init__(self, config: Mapping[str, Any], topics: TopicNames | None = None) -> None:
        self._sync = EventProducer(config, topics)

    @property
    def errors(self) -> list[str]:
        """Delivery errors reported so far."""
        return self._sync.errors

    async def send(self, event: Event) -> None:
        """Queue one typed event; yields to the loop while the local queue is full."""
        topic = self._sync.topics.for_type(event.event_type)
        payload = event_payload(event)
        while not self._sync.offer_raw(topic, event.user_id, payload):
            await asyncio.sleep(0.01)  # local queue full: librdkafka is draining it

    async def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for queued events; returns how many are still undelivered."""
        return await asyncio.get_running_loop().run_in_executor(None, self._sync.flush, timeout_s)

    async def __aenter__(self) -> AsyncEventProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush()


class RecommendationReader:
    """Iterate over recommendation lists, de-duplicated by ``trigger_event_id``.

    Reads lists labelled ``schema_version`` 1 and 2 and ignores fields it does not
    know, so a worker may add optional fields (or be labelled 1 during an upgrade,
    ``RECSTREAM_OUTPUT_SCHEMA_VERSION``) without breaking it.

    Args:
        config: librdkafka settings; at least ``bootstrap.servers``.
        topic: the recommendations topic.
        group_id: consumer group (``None``: a private, uncommitted read).
        from_beginning: start at the earliest offset when the group has none.
        dedup_window: how many recent trigger ids are remembered.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str = "recommendations",
        *,
        group_id: str | None = None,
        from_beginning: bool = False,
        dedup_window: int = 100_000,
    ) -> None:
        import uuid

        conf: dict[str, Any] = {
            "group.id": group_id or f"recstream-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.auto.commit": group_id is not None,
            "fetch.wait.max.ms": 10,
        }
        conf.update(config)
        self._consumer = Consumer(conf)
        self._consumer.subscribe([topic])
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._window = dedup_window
        self.duplicates = 0
        self._early: list[Any] = []

    def wait_assigned(self, timeout_s: float = 30.0) -> bool:
        """Poll until the group has assigned partitions; ``True`` if it did in time.

        Records that arrive meanwhile are kept and returned by later :meth:`poll` calls.
        """
        import time

        deadline = time.monotonic() + timeout_s
        while not self._consumer.assignment():
            if time.monotonic() > deadline:
                return False
            msg = self._consumer.poll(0.05)
            if msg is not None and not msg.error():
                self._early.append(msg)
        return True

    def poll(self, timeout_s: float = 1.0) -> RecommendationMessage | None:
        """Next new recommendation list, or ``None`` if none arrived in time."""
        msg = self._early.pop(0) if self._early else self._consumer.poll(timeout_s)
        if msg is None or msg.error():
            return None
        value = msg.value()
        if value is None:
            return None
        rec = RecommendationMessage.model_validate_json(value)
        if rec.trigger_event_id in self._seen:
            self.duplicates += 1
            return None
        self._seen[rec.trigger_event_id] = None
        if len(self._seen) > self._window:
            self._seen.popitem(last=False)
        return rec

    async def __aiter__(self) -> AsyncIterator[RecommendationMessage]:
        """``async for rec in reader``: polls in a thread, so the loop stays free."""
        loop = asyncio.get_running_loop()
        while True:
            rec = await loop.run_in_executor(None, self.poll, 0.2)
            if rec is not None:
                yield rec

    def __iter__(self) -> Iterator[RecommendationMessage]:
        while True:
            rec = self.poll()
            if rec is not None:
                yield rec

    def close(self) -> None:
        """Leave the group and close the connection."""
        self._consumer.close()

    def __enter__(self) -> RecommendationReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pseudonyms:
    """The shop's side of pseudonymous mode: its user ids as recstream stores them.

    With ``RECSTREAM_PRIVACY_USER_KEY`` set, recommendations, profiles and the lookup
    API's answers name users by keyed hashes. The shop, which knows its user ids and
    the key, computes the same hashes and maps them back.

    Args:
        key: the deployment's ``RECSTREAM_PRIVACY_USER_KEY``.
    """

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("a pseudonym key is needed")
        self._key = key

    def of(self, user_id: str) -> str:
        """The pseudonym recstream uses for ``user_id`` (``p:<32 hex>``)."""
        return pseudonym(user_id, self._key)

    def mapping(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Pseudonym -> user id for the given ids: a lookup table to map outputs back."""
        return {self.of(u): u for u in user_ids}


class ErasureClient:
    """Ask the workers to forget a user, and optionally wait for the audit record.

    Args:
        config: librdkafka connection settings.
        topics: the deployment's topic names (``user_erasure``, ``erasure_audit``).
    """

    def __init__(self, config: Mapping[str, Any], topics: TopicNames | None = None) -> None:
        self.config = dict(config)
        self.topics = topics or TopicNames()

    def forget(
        self, user_id: str, *, audit_pseudonym: str | None = None, wait_s: float = 0.0
    ) -> dict[str, Any] | None:
        """Send an erasure request for ``user_id`` (keyed by it: the user's partition).

        Args:
            user_id: the user to forget.
            audit_pseudonym: the pseudonym the audit record will carry (see
                ``streams.privacy.UserKeys.audit``); needed to wait.
            wait_s: wait this long for the audit record (0: return once sent).

        Returns:
            The audit record, when waited for and seen in time; else ``None``.

        Raises:
            RuntimeError: the request could not be delivered.
        """
        consumer = None
        if wait_s > 0 and audit_pseudonym is not None:
            # Positioned at the end before the request is sent: the record it causes
            # is after these offsets.
            consumer = Consumer(
                {**self.config, "group.id": "recstream-forget", "enable.auto.commit": False}
            )
            meta = consumer.list_topics(self.topics.erasure_audit, timeout=10)
            parts = meta.topics[self.topics.erasure_audit].partitions
            start = []
            for p in parts:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topics.erasure_audit, p), timeout=10
                )
                start.append(TopicPartition(self.topics.erasure_audit, p, high))
            consumer.assign(start)
        try:
            errors: list[str] = []
            producer = Producer({**self.config, "acks": "all", "partitioner": "murmur2_random"})
            producer.produce(
                self.topics.user_erasure,
                key=user_id.encode(),
                value=erasure_request_bytes(user_id, time.time()),
                on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
            )
            if producer.flush(30) or errors:
                raise RuntimeError(f"the erasure request was not delivered: {errors}")
            if consumer is None:
                return None
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error() or msg.key() != (audit_pseudonym or "").encode():
                    continue
                record: dict[str, Any] = orjson.loads(msg.value() or b"{}")
                return record
            return None
        finally:
            if consumer is not None:
                consumer.close()
