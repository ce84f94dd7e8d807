"""The fence around Faust's and aiokafka's internals: every private contact point is here.

recstream uses Faust's public API everywhere else. Eight things have no public API,
and each is wrapped here, with the reason, so that a Faust release that changes one
breaks this module and its contract test (``tests/unit/test_faust_contract.py``)
instead of a production worker. ``pyproject.toml`` pins ``faust-streaming`` to the
minor version these were checked against.

1. :func:`transport_with_fetch_wait`: Faust's aiokafka driver hard-codes
   ``fetch_max_wait_ms=1500``; on a quiet partition every fetch may block that long
   before new records are returned (the latency of a recommendation). We override
   ``AIOKafkaConsumerThread._create_worker_consumer`` and set aiokafka's private
   ``_fetch_max_wait_ms`` before the consumer builds its fetcher.
2. :class:`FetchWaitApp`: ``App._new_transport`` is the only hook to install that
   transport.
3. :func:`changelog_sent`: ``Table.on_key_set`` reads ``fut.message.partition`` from
   what ``send_changelog`` returns; our librdkafka changelog writer returns this
   stand-in instead of Faust's future.
4. :func:`rocksdb_databases`, :func:`rocksdb_partitions`, :func:`rocksdb_reader`,
   :func:`rocksdb_writer`, :func:`rocksdb_key_encoder`:
   Faust's RocksDB store keeps one database per partition in ``_dbs``; their memory
   properties feed the table-memory gauges, the TTL sweep reads each partition's
   profiles, and the hot path reads a profile with one get in the event's partition
   (``_db_for_partition``) instead of Faust's two reads through its codec layers,
   and writes it with one put and one changelog record (what ``Table.__setitem__``
   does, less its per-write codec, sensor and partition-check layers).
5. :func:`table_recovery`: readiness needs the table manager's ``recovery``
   (``in_recovery``, ``completed``, ``active_remaining_total``), which the
   ``TableManagerT`` interface does not declare.
6. :func:`manual_ack_events`: ``Stream.noack()`` (not on ``StreamT``) so that an
   event is acked only when its outputs are delivered.
7. :func:`quiet_worker_class`: ``Worker.on_setup_root_logger`` would otherwise set the
   root logger to DEBUG with a terminal spinner below WARNING.
8. :func:`as_current_event`: a table write outside stream iteration (the list a
   user was recommended, remembered after batched scoring) needs its event as
   Faust's current event: the table and its store take the partition from it, and
   the changelog writer ties the record to that event's ack. Faust sets it through
   the private context variable ``faust.streams._current_event``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from faust import streams as faust_streams
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

__all__ = [
    "TESTED_FAUST_MINOR",
    "FetchWaitApp",
    "as_current_event",
    "changelog_sent",
    "manual_ack_events",
    "quiet_worker_class",
    "rocksdb_databases",
    "rocksdb_partitions",
    "rocksdb_key_encoder",
    "rocksdb_reader",
    "rocksdb_writer",
    "table_recovery",
    "transport_with_fetch_wait",
]

#: The faust-streaming minor version this fence was checked against (pyproject pins it).
TESTED_FAUST_MINOR = "0.15"


# 1. Consumer fetch wait ---------------------------------------------------------------


def transport_with_fetch_wait(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """A transport class whose worker consumer waits at most ``fetch_max_wait_ms``.

    Every other behaviour of the stock aiokafka driver is kept.
    """

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


# 2. Installing the transport ------------------------------------------------------------


class FetchWaitApp(faust.App):
    """A :class:`faust.App` whose consumer fetch wait is :attr:`fetch_max_wait_ms`."""

    fetch_max_wait_ms: int = 1500

    def _new_transport(self) -> TransportT:
        cls = transport_with_fetch_wait(self.fetch_max_wait_ms)
        return cls(self.conf.broker_consumer, self)


# 3. What send_changelog returns ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Partition:
    partition: int


@dataclass(frozen=True, slots=True)
class _Sent:
    """What ``faust.Table.on_key_set`` reads back from ``send_changelog``."""

    message: _Partition


def changelog_sent(partition: int) -> Any:
    """A stand-in for Faust's ``FutureMessage`` of a changelog record sent elsewhere."""
    return _Sent(_Partition(partition))


# 4. RocksDB partitions --------------------------------------------------------------


def rocksdb_databases(store: Any) -> list[Any]:
    """The open per-partition RocksDB databases of a table's store (none for memory://)."""
    return list(rocksdb_partitions(store).values())


def rocksdb_partitions(store: Any) -> dict[int, Any]:
    """Partition -> open RocksDB database of a table's store (empty for memory://)."""
    return dict(getattr(store, "_dbs", {}))


def _raw_partition_databases(store: Any) -> Callable[[int], Any] | None:
    """``Store._db_for_partition`` of Faust's RocksDB store holding raw bytes values
    (what the direct reader and writer need), else None: another store, or values
    that Faust would encode and decode (its own path then)."""
    needed = ("_db_for_partition", "_dbs", "_encode_key", "_key_index")
    if not all(hasattr(store, name) for name in needed):
        return None
    if getattr(store, "value_serializer", None) != "raw" or store.value_type is not bytes:
        return None
    db_for_partition: Callable[[int], Any] = store._db_for_partition
    return db_for_partition


def rocksdb_reader(store: Any) -> Callable[[int, Any], bytes | None] | None:
    """``read(partition, key)``: the key encoded as the store encodes it, then one get
    in the partition's RocksDB database (opened as Faust opens it); None for a store
    that is not Faust's RocksDB store.

    What ``Store._get`` does for a key of the current event's partition, without the
    extra read of ``__contains__`` and the sensor and decoding layers around it (the
    value is returned as stored: the raw codec's bytes).
    """
    db_for_partition = _raw_partition_databases(store)
    if db_for_partition is None:
        return None
    encode_key = store._encode_key

    def read(partition: int, key: Any) -> bytes | None:
        value: bytes | None = db_for_partition(partition).get(encode_key(key))
        return value

    return read


def rocksdb_writer(store: Any) -> Callable[[int, bytes, bytes], None] | None:
    """``write(partition, key_bytes, value_bytes)``: what ``Store._set`` does for the
    current event's partition (index the key's partition, one put), for a key already
    encoded (:func:`rocksdb_key_encoder`); None for a store that is not Faust's
    RocksDB store or whose values Faust would encode."""
    db_for_partition = _raw_partition_databases(store)
    if db_for_partition is None:
        return None
    key_index = store._key_index

    def write(partition: int, key: bytes, value: bytes) -> None:
        key_index[key] = partition
        db_for_partition(partition).put(key, value)

    return write


def rocksdb_key_encoder(store: Any) -> Callable[[Any], bytes]:
    """The store's own key encoding (``SerializedStore._encode_key``)."""
    encode: Callable[[Any], bytes] = store._encode_key
    return encode


# 5. Table recovery --------------------------------------------------------------------


def table_recovery(app: faust.App) -> Any:
    """The table manager's ``Recovery`` service (``in_recovery``, ``completed``...)."""
    return app.tables.recovery  # type: ignore[attr-defined]  # TableManager, not the ABC


# 6. Manual acks ----------------------------------------------------------------------


def manual_ack_events(stream: Any) -> AsyncIterator[Any]:
    """Iterate a stream's events without acking them (the caller acks each one)."""
    events: AsyncIterator[Any] = stream.noack().events()
    return events


# 7. The worker's root logger ------------------------------------------------------------


def quiet_worker_class() -> type:
    """Faust's :class:`~faust.worker.Worker` without its terminal spinner.

    At log levels WARNING and above, Faust's worker sets the *root logger* to DEBUG
    and adds a handler that spins a terminal progress wheel on every record. Every
    ``log.debug`` in aiokafka and Faust (several per fetch and per produce) then
    builds a ``LogRecord`` and runs the handlers: about 5 % of a busy worker's CPU,
    and DEBUG records reach any handler a user adds. This worker leaves the root
    logger at the configured level.
    """
    from faust.worker import Worker

    class QuietWorker(Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            self.spinner = None

    return QuietWorker


# 8. The current event outside stream iteration ---------------------------------------


@contextmanager
def as_current_event(event: Any) -> Iterator[None]:
    """Make ``event`` what :func:`faust.current_event` returns inside the block.

    Set as Faust's stream iteration sets it (a weak reference in its context
    variable) and restored on exit, so the enclosing task's current event (if any)
    is unchanged afterwards.
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)
