"""A Faust Kafka transport whose consumer fetch wait is configurable.

Faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``. Against a quiet
partition every fetch may then block for up to 1.5 s before newly arrived records
are returned (the embedded broker always holds empty fetches for the full wait),
which shows up directly as event->recommendation latency. This transport keeps
every other behaviour of the stock driver and only overrides that one value.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["transport_with_fetch_wait"]


def transport_with_fetch_wait(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """A transport class whose worker consumer waits at most ``fetch_max_wait_ms``."""

    class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            # aiokafka reads this attribute when it builds its Fetcher in start(),
            # which runs after this factory returns.
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class Consumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport
