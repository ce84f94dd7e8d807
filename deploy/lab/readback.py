"""Reading whole topics back, for drills, benchmarks and tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

__all__ = ["poll_batch", "read_topic", "topic_reader"]


def topic_reader(
    client_config: dict[str, Any], topic: str, partitions: int, fetch_wait_ms: int = 20
) -> Consumer:
    """A consumer assigned to every partition of ``topic`` from offset 0.

    Assignment, not group membership: no rebalances, nothing committed.
    """
    consumer = Consumer(
        {
            **client_config,
            "group.id": f"recstream-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": fetch_wait_ms,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    return consumer


def poll_batch(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Up to ``max_messages`` records, returned as soon as at least one is there.

    ``Consumer.consume(n, timeout)`` waits for ``n`` records or the whole timeout,
    whichever comes first, so a latency measurement built on it adds up to the
    timeout to every record of a quiet stream. This waits (at most ``timeout_s``)
    only for the first record and then takes whatever else is already fetched.
    """
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)] if max_messages > 1 else [first]


def read_topic(
    client_config: dict[str, Any],
    topic: str,
    partitions: int,
    until: Callable[[list[Message]], bool],
    timeout_s: float = 60.0,
) -> list[Message]:
    """Every record of ``topic`` from offset 0, until ``until(records)`` holds or time runs out.

    Reads all partitions by assignment (no group membership, nothing committed).
    """
    consumer = topic_reader(client_config, topic, partitions)
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(records) and time.monotonic() < deadline:
            batch = poll_batch(consumer, 1000, 0.2)
            records.extend(m for m in batch if not m.error())
    finally:
        consumer.close()
    return records
