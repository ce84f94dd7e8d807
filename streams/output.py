"""Writing recommendations, dead letters and profile changelog records through librdkafka.

Faust's own producer (aiokafka, pure Python) costs tens to hundreds of microseconds
per record in the worker's event loop; librdkafka batches, compresses and delivers
on its own threads for a few microseconds of Python per record. The profiles
table's changelog goes through the same producer (:mod:`streams.tables`).

Delivery decides acknowledgement: an input event is acked (so its offset may be
committed) only once librdkafka has reported every record it caused (its
recommendation or dead letter, and its changelog record) as delivered
(``acks=all``, idempotent producer). A record that cannot be delivered leaves its
input event unacked, so the event is processed again after a restart instead of
being lost.

Never blocking the event loop: when librdkafka's local queue is full
(``queue.buffering.max.messages`` / ``queue.buffering.max.kbytes``, e.g. during a
broker outage), :meth:`OutputProducer.produce` keeps the record, and every record
after it, in a Python-side backlog that the delivery-report pump hands to
librdkafka as room frees up, oldest first. Records therefore reach librdkafka in
the order they were produced, so per-partition order (a key's changelog records,
a user's recommendations) is kept. The backlog is bounded by back-pressure: the
agent awaits :meth:`OutputProducer.wait_for_room` before each input event, so a
stalled broker stops consumption instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer

__all__ = ["OutputProducer", "OutputSink"]

log = logging.getLogger("recstream.output")

#: ``report(err, msg)``: librdkafka's delivery callback for one record.
_Report = Callable[[KafkaError | None, Message], None]


class OutputSink(Protocol):
    """Where the pipeline writes its records (:class:`OutputProducer` in production)."""

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        on_delivered: Callable[[int], Any],
        partition: int | None = None,
    ) -> None:
        """Queue a record without blocking; ``on_delivered(offset)`` once it is durably written."""
        ...

    def start(self) -> None:
        """Start delivering on the running loop."""
        ...

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Deliver everything queued, then stop."""
        ...

    async def wait_for_room(self) -> None:
        """Return once the sink accepts more records without growing past its bound."""
        ...


class OutputProducer:
    """librdkafka producer whose delivery reports run callbacks on the event loop.

    Args:
        config: librdkafka connection settings (``bootstrap.servers``, security...).
        on_error: called with the error text of each failed delivery.
        poll_interval_s: how often delivery reports are collected.
        max_backlog: records waiting for room in librdkafka's queue beyond which
            :meth:`wait_for_room` holds the stream back.
    """

    def __init__(
        self,
        config: dict[str, Any],
        on_error: Callable[[str], None] = lambda _e: None,
        poll_interval_s: float = 0.002,
        max_backlog: int = 10_000,
    ) -> None:
        conf: dict[str, Any] = {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "compression.type": "lz4",
            # Same key -> same partition as Java clients and Faust.
            "partitioner": "murmur2_random",
        }
        conf.update(config)
        self._producer = Producer(conf)
        self._done: deque[tuple[Callable[[int], Any], KafkaError | None, int]] = deque()
        # Records librdkafka's queue had no room for, oldest first:
        # (topic, key, value, partition (-1: by key), delivery report).
        self._backlog: deque[tuple[str, bytes | None, bytes | None, int, _Report]] = deque()
        self._on_error = on_error
        self._interval = poll_interval_s
        self.max_backlog = max_backlog
        self._task: asyncio.Task[None] | None = None
        #: Records produced and not yet reported (backlog included).
        self.in_flight = 0

    @property
    def backlog(self) -> int:
        """Records waiting for room in librdkafka's queue."""
        return len(self._backlog)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        on_delivered: Callable[[int], Any],
        partition: int | None = None,
    ) -> None:
        """Queue a record; ``on_delivered(offset)`` runs on the loop once it is durably written.

        Never blocks: when librdkafka's queue is full the record waits in the backlog
        (see the module docstring). ``partition`` ``None`` lets the key choose it
        (murmur2, as Java clients do).

        Raises:
            KafkaException: librdkafka refused the record outright (e.g. too large);
                a record refused later, from the backlog, counts as a failed delivery.
        """

        def report(err: KafkaError | None, msg: Message) -> None:
            self._done.append((on_delivered, err, msg.offset() or 0))

        # -1: librdkafka's "unassigned", the partitioner picks from the key.
        part = -1 if partition is None else partition
        if self._backlog:  # earlier records still wait: queue behind them (order)
            self._backlog.append((topic, key, value, part, report))
        else:
            try:
                self._producer.produce(topic, value, key, part, on_delivery=report)
            except BufferError:  # local queue full: the pump retries it
                self._backlog.append((topic, key, value, part, report))
        self.in_flight += 1

    def _retry_backlog(self) -> None:
        """Hand backlogged records to librdkafka, oldest first, while it has room."""
        backlog = self._backlog
        while backlog:
            topic, key, value, part, report = backlog[0]
            try:
                self._producer.produce(topic, value, key, part, on_delivery=report)
            except BufferError:
                return
            except Exception as exc:  # refused outright: a failed delivery
                backlog.popleft()
                self.in_flight -= 1
                log.error("produce to %s failed, input left unacked for redelivery: %s", topic, exc)
                self._on_error(str(exc))
                continue
            backlog.popleft()

    def _drain(self) -> int:
        n = 0
        while self._done:
            callback, err, offset = self._done.popleft()
            self.in_flight -= 1
            n += 1
            if err is None:
                callback(offset)
            else:
                log.error("delivery failed, input left unacked for redelivery: %s", err)
                self._on_error(str(err))
        return n

    def poll(self) -> int:
        """Collect delivery reports, run their callbacks, refill from the backlog.

        Returns:
            How many delivery reports were handled.
        """
        self._producer.poll(0)  # serving reports is what frees queue room
        n = self._drain()
        if self._backlog:
            self._retry_backlog()
        return n

    async def wait_for_room(self) -> None:
        """Wait while more than ``max_backlog`` records wait for librdkafka (back-pressure)."""
        while len(self._backlog) > self.max_backlog:
            self.poll()  # also works before start() or with the pump busy
            if len(self._backlog) > self.max_backlog:
                await asyncio.sleep(self._interval)

    async def _pump(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self._interval if self.in_flight else self._interval * 5)

    def start(self) -> None:
        """Start collecting delivery reports on the running loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="output-pump")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Deliver everything queued, backlog included (running callbacks), then stop polling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_flight and loop.time() < deadline:
            self.poll()
            await loop.run_in_executor(None, self._producer.flush, 0.1)
            self._drain()
        if self.in_flight:
            log.warning(
                "stopped with %d records undelivered (%d never queued in librdkafka); "
                "their inputs stay unacked",
                self.in_flight,
                len(self._backlog),
            )
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
