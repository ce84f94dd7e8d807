"""OutputProducer never blocks the event loop when librdkafka's queue is full.

Against a real librdkafka producer whose local queue holds 5 records, on the embedded
broker (librdkafka's in-process mock cluster) taken down while records are produced:
``produce`` returns at once and the overflow waits in the Python-side backlog;
``wait_for_room`` holds the stream back while the backlog is over its bound; once the
broker is back, ``stop()`` delivers the backlog, each callback runs exactly once, and
every partition holds its records in the order they were produced.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from deploy.lab.brokers import EmbeddedBroker
from streams.output import OutputProducer
from streams.topics import TopicSpec

PARTITIONS = 3
#: "A few ms": one produce call is microseconds; blocking on a full queue (the old
#: behaviour) lasts until the broker answers, i.e. the whole simulated outage.
MAX_CALL_S = 0.005
#: Long enough that a producer blocking on the outage fails the timing check instead
#: of erroring out its records first.
MESSAGE_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker().start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def topic(broker: EmbeddedBroker) -> str:
    name = f"out-{uuid.uuid4().hex[:8]}"
    broker.create_topics([TopicSpec(name, PARTITIONS)])
    return name


def tiny_queue_producer(broker: EmbeddedBroker, **kwargs: Any) -> OutputProducer:
    errors: list[str] = kwargs.pop("errors", [])
    return OutputProducer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "queue.buffering.max.messages": 5,
            "message.timeout.ms": MESSAGE_TIMEOUT_MS,
            "reconnect.backoff.ms": 20,
            "reconnect.backoff.max.ms": 200,
        },
        on_error=errors.append,
        **kwargs,
    )


def read_back(broker: EmbeddedBroker, topic: str, n: int) -> dict[int, list[bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": f"readback-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    got: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + 20
    try:
        while sum(map(len, got.values())) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            partition, value = msg.partition(), msg.value()
            assert partition is not None and value is not None
            got[partition].append(value)
    finally:
        consumer.close()
    return got


async def warm_up(producer: OutputProducer, topic: str) -> None:
    """One delivered record: the producer has its connection and producer id."""
    delivered = asyncio.Event()
    producer.produce(topic, b"warm", b"warm", lambda _o: delivered.set(), partition=0)
    await asyncio.wait_for(delivered.wait(), 20)


def test_full_queue_backlogs_without_blocking_and_stop_delivers_in_order(
    broker: EmbeddedBroker, topic: str
) -> None:
    n = 300
    calls: list[tuple[int, int]] = []  # (record, offset), one per delivery callback
    errors: list[str] = []

    def record_call(i: int, offset: int) -> None:
        calls.append((i, offset))

    async def main() -> tuple[list[float], int]:
        producer = tiny_queue_producer(broker, errors=errors, max_backlog=50)
        producer.start()
        await warm_up(producer, topic)
        broker.set_broker_down()
        try:
            durations: list[float] = []
            for i in range(n):
                partition = i % PARTITIONS
                started = time.perf_counter()
                producer.produce(
                    topic,
                    f"user-{partition}".encode(),
                    f"{partition}:{i}".encode(),
                    functools.partial(record_call, i),
                    partition=partition,
                )
                durations.append(time.perf_counter() - started)
                if durations[-1] > 1.0:  # blocked on the outage: fail now, not after n calls
                    break
            backlog = producer.backlog
            assert producer.in_flight == n  # the warm-up record was reported before
            # Over its bound, the backlog holds the stream back while the broker is down.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(producer.wait_for_room(), 0.3)
        finally:
            broker.set_broker_up()
        await asyncio.wait_for(producer.wait_for_room(), 20)
        assert producer.backlog <= 50
        await producer.stop()
        assert producer.in_flight == 0 and producer.backlog == 0
        return durations, backlog

    durations, backlog = asyncio.run(main())
    assert len(durations) == n
    slow = sorted(d for d in durations if d > MAX_CALL_S)
    # One outlier is tolerated (a 2-core CI box can preempt the test between two
    # clock reads); a producer that blocks on the full queue is slow on every call.
    assert len(slow) <= 1 and max(durations) < 10 * MAX_CALL_S, (
        f"produce calls over {MAX_CALL_S * 1000:.0f} ms: {[round(d * 1000, 1) for d in slow]}"
    )
    assert backlog >= n - 5, "records beyond librdkafka's 5-record queue wait in the backlog"
    assert errors == []
    assert sorted(i for i, _ in calls) == list(range(n)), "every callback ran exactly once"
    for p in range(PARTITIONS):
        offsets = [offset for i, offset in sorted(calls) if i % PARTITIONS == p]
        assert offsets == sorted(offsets), f"partition {p}: delivered out of produce order"
    got = read_back(broker, topic, n + 1)
    for p in range(PARTITIONS):
        expected = [f"{p}:{i}".encode() for i in range(p, n, PARTITIONS)]
        assert [v for v in got[p] if v != b"warm"] == expected, f"partition {p} out of order"


def test_record_refused_from_the_backlog_is_a_failed_delivery(
    broker: EmbeddedBroker, topic: str
) -> None:
    """A record librdkafka refuses outright when retried calls on_error; the rest go on."""
    errors: list[str] = []
    delivered: list[bytes] = []

    def record_value(value: bytes, _offset: int) -> None:
        delivered.append(value)

    async def main() -> None:
        producer = tiny_queue_producer(broker, errors=errors)
        producer.start()
        await warm_up(producer, topic)
        broker.set_broker_down()
        try:
            values = [f"v{i}".encode() for i in range(8)]
            values.insert(6, b"x" * 2_000_000)  # over message.max.bytes (1 MB)
            for value in values:
                producer.produce(
                    topic, b"k", value, functools.partial(record_value, value), partition=1
                )
            assert producer.backlog == len(values) - 5
        finally:
            broker.set_broker_up()
        await producer.stop()
        assert producer.in_flight == 0

    asyncio.run(main())
    assert len(errors) == 1
    assert delivered == [f"v{i}".encode() for i in range(8)]


def test_stop_gives_up_after_its_timeout_with_the_backlog_undelivered(
    broker: EmbeddedBroker, topic: str
) -> None:
    """While the broker stays down, stop() returns at its deadline; no callback ran."""
    calls: list[int] = []

    async def main() -> int:
        producer = tiny_queue_producer(broker)
        producer.start()
        await warm_up(producer, topic)
        broker.set_broker_down()
        try:
            for _ in range(20):
                producer.produce(topic, b"k", b"v", calls.append, partition=0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await producer.stop(timeout_s=0.5)
            assert loop.time() - started < 5
            return producer.in_flight
        finally:
            broker.set_broker_up()
            # Drop what librdkafka still holds, so the handle is freed with the test.
            producer._producer.purge()
            producer._producer.flush(1)

    assert asyncio.run(main()) == 20
    assert calls == []
