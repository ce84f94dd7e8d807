"""The fence around Faust's and aiokafka's internals: every private contact point is here.

recstream uses Faust's public API everywhere else. Nine things have no public API,
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
9. :class:`BatchFeed`: the scoring agent's input records taken from the consumer's
   fetch loop (``Consumer._drain_messages``) a fetched batch at a time. Faust hands
   every record to its conductor through ``wait_first`` (four asyncio tasks and an
   ``asyncio.wait`` per record), which puts it on a channel queue that the agent's
   stream reads back with its sensors: about a quarter of a busy worker's CPU. The
   feed keeps what that path guarantees (records in offset order, tracked as
   unacked so a rebalance waits for them, skipped once the flow stops or the
   generation changes, the event as Faust's current event while it is handled) and
   drops the rest. The agent stays registered (its topics, the assignment that
   co-partitions the tables, its start and stop); only its records come this way.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust import streams as faust_streams
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT

__all__ = [
    "TESTED_FAUST_MINOR",
    "BatchFeed",
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

    Its fetch loop also hands the records of the app's :class:`BatchFeed` topics to
    the feed (9). Every other behaviour of the stock aiokafka driver is kept.
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

        async def _drain_messages(self, fetcher: Any) -> None:
            await _drain_messages(self, fetcher)

    class Transport(faust_aiokafka.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


# 2. Installing the transport ------------------------------------------------------------


class FetchWaitApp(faust.App):
    """A :class:`faust.App` whose consumer fetch wait is :attr:`fetch_max_wait_ms`."""

    fetch_max_wait_ms: int = 1500
    #: Where the fetch loop hands the scoring agent's records (None: Faust's stream).
    batch_feed: BatchFeed | None = None

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


#: Keys whose encoding by the store decides whether orjson may encode its keys.
_KEY_PROBES = ("u1", "p:0123456789abcdef", "erased:ff", 'e\u0301"\\/', "\U0001f600", "\x00\n", "")


def _key_encoder(store: Any) -> Callable[[Any], bytes]:
    """The store's key encoding; for ``str`` keys that Faust's json codec encodes as
    orjson does (Faust's json is orjson where it is installed), orjson itself,
    without Faust's codec-registry layers (a twentieth of a busy worker's CPU)."""
    encode: Callable[[Any], bytes] = store._encode_key
    if getattr(store, "key_type", None) is not str:
        return encode
    if not all(encode(key) == orjson.dumps(key) for key in _KEY_PROBES):
        return encode
    dumps = orjson.dumps

    def encode_str(key: Any) -> bytes:
        return dumps(key) if type(key) is str else encode(key)

    return encode_str


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
    encode_key = _key_encoder(store)

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
    """The store's own key encoding (``SerializedStore._encode_key``), byte for byte
    (orjson for ``str`` keys where that is what the store does)."""
    return _key_encoder(store)


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


# 9. The batch feed ------------------------------------------------------------------


class BatchFeed:
    """The records of ``topics``, handed to ``handler`` from the consumer's fetch loop.

    ``handler(event)`` is awaited for each record, in offset order per partition,
    with the event as Faust's current event (as a stream sets it); it acks the event
    itself (``event.ack()``) once the event is finished, as a ``noack`` stream's
    body does. A fetched batch is delivered before the next fetch.

    What Faust's conductor, channel and stream would do for each record, kept: the
    record is tracked as unacked (a rebalance waits for it; the commit follows its
    ack); a record fetched before the flow stopped (a rebalance) or in an earlier
    consumer generation is skipped, not tracked, and so read again from the
    committed offset once the partition is assigned again. Left out: the stream's
    sensors (Faust's own in-memory monitor; recstream has its own metrics) and the
    per-record tasks.
    """

    def __init__(
        self,
        app: faust.App,
        topics: frozenset[str],
        handler: Callable[[Any], Awaitable[None]],
    ) -> None:
        self.app = app
        self.topics = topics
        self.handler = handler

    async def deliver(self, messages: list[Any]) -> None:
        """Hand fetched records to the handler, one after the other."""
        app = self.app
        consumer = app.consumer
        flow = app.flow_control
        event_cls: Any = app.conf.Event  # what App.create_event builds, looked up once
        handler = self.handler
        current = faust_streams._current_event
        for message in messages:
            if not flow.is_active() or message.generation_id != app.consumer_generation_id:
                continue
            if not message.tracked:
                message.tracked = True
                consumer.track_message(message)
            event = event_cls(app, message.key, message.value, message.headers, message)
            token = current.set(weakref.ref(event))
            try:
                await handler(event)
            finally:
                current.reset(token)


#: Records handed to a batch feed in one call at most (then the fetch loop goes on).
_FEED_CHUNK = 512

#: sha256 (first 16 hex digits) of the source of Faust's ``Consumer._drain_messages``
#: that :func:`_drain_messages` copies; the contract test fails when a release changes it.
DRAIN_MESSAGES_SOURCE_SHA = "44a2500309e83c63"


async def _drain_messages(consumer: Any, fetcher: Any) -> None:  # pragma: no cover
    """Faust's ``Consumer._drain_messages`` (faust-streaming 0.15), with a batch feed.

    The same loop, line for line, except that a record of the app's
    :class:`BatchFeed` topics is collected and handed to the feed with the rest of
    its fetch instead of going to the conductor through ``wait_first``; other
    topics' records take Faust's path (after the feed's pending records, so one
    task never reorders them).
    """
    feed: BatchFeed | None = getattr(consumer.app, "batch_feed", None)
    callback = consumer.callback
    getmany = consumer.getmany
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = consumer._read_offset.__getitem__
    set_read_offset = consumer._read_offset.__setitem__
    flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
    set_flag = consumer.diag.set_flag
    unset_flag = consumer.diag.unset_flag
    commit_every = consumer._commit_every
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    feed_topics = feed.topics if feed is not None else frozenset()
    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=1.0)
            await consumer.sleep(0)
            if not consumer.should_stop:
                pending: list[Any] = []
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset:
                            if acks_enabled_for(message.topic):
                                await consumer._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if consumer._n_acked >= commit_every:
                                consumer._n_acked = 0
                                await consumer.commit()
                        if message.topic in feed_topics:
                            pending.append(message)
                            set_read_offset(tp, offset)
                            if len(pending) >= _FEED_CHUNK:
                                assert feed is not None
                                await feed.deliver(pending)
                                pending = []
                            continue
                        if pending:
                            assert feed is not None
                            await feed.deliver(pending)
                            pending = []
                        await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
                        set_read_offset(tp, offset)
                if pending:
                    assert feed is not None
                    await feed.deliver(pending)
                unset_flag(flag_consumer_fetching)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            consumer.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            consumer.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        consumer.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)
