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
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

__all__ = ["OutputProducer"]

log = logging.getLogger("recstream.output")


class OutputProducer:
    """librdkafka producer whose delivery reports run callbacks on the event loop.

    Args:
        config: librdkafka connection settings (``bootstrap.servers``, security...).
        on_error: called with the error text of each failed delivery.
        poll_interval_s: how often delivery reports are collected.
    """

    def __init__(
        self,
        config: dict[str, Any],
        on_error: Callable[[str], None] = lambda _e: None,
        poll_interval_s: float = 0.002,
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
        self._on_error = on_error
        self._interval = poll_interval_s
        self._task: asyncio.Task[None] | None = None
        self.in_flight = 0

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        on_delivered: Callable[[int], Any],
        partition: int | None = None,
    ) -> None:
        """Queue a record; ``on_delivered(offset)`` runs on the loop once it is durably written.

        ``partition`` ``None`` lets the key choose it (murmur2, as Java clients do).
        """

        def report(err: KafkaError | None, msg: Message) -> None:
            self._done.append((on_delivered, err, msg.offset() or 0))

        # -1: librdkafka's "unassigned", the partitioner picks from the key.
        part = -1 if partition is None else partition
        while True:
            try:
                self._producer.produce(topic, value, key, part, on_delivery=report)
                break
            except BufferError:  # local queue full: wait for deliveries, then retry
                self._producer.poll(0.01)
                self._drain()
        self.in_flight += 1

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
        """Collect delivery reports and run their callbacks; returns how many."""
        self._producer.poll(0)
        return self._drain()

    async def _pump(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self._interval if self.in_flight else self._interval * 5)

    def start(self) -> None:
        """Start collecting delivery reports on the running loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="output-pump")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Deliver everything queued (running callbacks), then stop polling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_flight and loop.time() < deadline:
            await loop.run_in_executor(None, self._producer.flush, 0.1)
            self._drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
