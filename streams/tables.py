"""The profiles table: a Faust table whose changelog goes out through librdkafka.

Every profile update is a table write inside stream iteration, so Faust keeps the
local RocksDB store, the key's partition and the changelog topic exactly as for any
table. Only the last step differs: instead of Faust's aiokafka producer (pure
Python; about a sixth of a busy worker's CPU went to producing changelog records),
the record is handed to a :data:`ChangelogWriter`, which the pipeline backs with
its librdkafka producer and ties to the input event's acknowledgement: an event is
acked only once its changelog record (as well as its recommendation) is delivered.

On delivery the table stores the changelog offset in RocksDB, as Faust's own
callback does, so recovery after a restart reads only what the local store lacks.
Without a writer (before the agent starts, in tests) the table falls back to
Faust's producer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import faust
from faust import current_event
from faust.types import TP
from faust.types.codecs import CodecArg

from streams._faust import (
    changelog_sent,
    rocksdb_databases,
    rocksdb_key_encoder,
    rocksdb_reader,
    rocksdb_writer,
)

__all__ = ["ChangelogWriter", "ProfileTable"]

#: ``writer(topic, partition, key, value, on_delivered)``; ``on_delivered(offset)``
#: must be called once the record is durably written.
ChangelogWriter = Callable[[str, int, bytes | None, bytes | None, Callable[[int], None]], None]


class ProfileTable(faust.Table[Any, Any]):
    """A :class:`faust.Table` that writes its changelog through a :data:`ChangelogWriter`."""

    changelog_writer: ChangelogWriter | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unpersisted: dict[TP, int] = {}
        self._persist_scheduled = False
        self._reader: Callable[[int, Any], bytes | None] | None | bool = False  # not looked up
        self._writer: Callable[[int, bytes, bytes], None] | None | bool = False
        self._key_bytes: Callable[[Any], bytes] | None = None

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` or ``default``.

        Inside stream iteration (a current event, whose partition holds the key: the
        table is co-partitioned with its input) this is one RocksDB get; Faust's own
        ``get`` reads the key twice (``__contains__``, then ``__getitem__``) through its
        codec and sensor layers. Anywhere else, and for a memory store, Faust's path.
        """
        read = self._reader
        if read is False:
            direct = not self.is_global and not self.use_partitioner  # as Store._get
            read = self._reader = rocksdb_reader(self.data) if direct else None
        event = current_event() if read else None
        if event is None or not callable(read):
            return super().get(key, default)
        value = read(event.message.partition, key)
        return default if value is None else value

    def put(self, key: Any, value: bytes) -> None:
        """``table[key] = value`` for a raw value, inside stream iteration.

        What Faust's ``__setitem__`` does there (one changelog record in the current
        event's partition, through the :data:`ChangelogWriter` and tied to that
        event's ack; one RocksDB put; the key's partition indexed), with the key
        encoded once and without the codec, sensor and source-topic check layers
        around each write. Anywhere else (no current event, no writer, a memory
        store), Faust's own path.
        """
        write = self._writer
        if write is False:
            direct = not self.is_global and not self.use_partitioner
            write = self._writer = rocksdb_writer(self.data) if direct else None
            self._key_bytes = rocksdb_key_encoder(self.data) if write else None
        event = current_event() if write else None
        writer = self.changelog_writer
        if event is None or writer is None or not callable(write) or self._key_bytes is None:
            self[key] = value
            return
        partition = event.message.partition
        key_bytes = self._key_bytes(key)
        name = self.changelog_topic.get_topic_name()
        writer(
            name,
            partition,
            key_bytes,
            value,
            functools.partial(self._delivered, TP(name, partition)),
        )
        write(partition, key_bytes, value)

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: CodecArg | None = None,
        value_serializer: CodecArg | None = None,
    ) -> Any:
        """Serialise as Faust would and hand the record to the changelog writer."""
        writer = self.changelog_writer
        if writer is None or partition is None:
            return super().send_changelog(partition, key, value, key_serializer, value_serializer)
        topic = self.changelog_topic
        key_bytes, _ = topic.prepare_key(key, key_serializer or self.key_serializer)
        value_bytes = (
            None  # a deleted key: the changelog tombstone
            if value is None
            else topic.prepare_value(value, value_serializer or self.value_serializer)[0]
        )
        name = topic.get_topic_name()
        tp = TP(name, partition)

        writer(name, partition, key_bytes, value_bytes, functools.partial(self._delivered, tp))
        return changelog_sent(partition)

    def _delivered(self, tp: TP, offset: int) -> None:
        # What Faust's _on_changelog_sent does outside transactions, coalesced: one
        # RocksDB write per partition per burst of delivery reports instead of one
        # per record. A stored offset that lags a little is safe (recovery then
        # re-reads a few records it already has).
        if offset > self._unpersisted.get(tp, -1):
            self._unpersisted[tp] = offset
        if not self._persist_scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.persist_offsets)
                self._persist_scheduled = True
            except RuntimeError:  # no loop (tests, shutdown): write now
                self.persist_offsets()

    def persist_offsets(self) -> None:
        """Store the newest delivered changelog offset of each partition in RocksDB."""
        self._persist_scheduled = False
        pending, self._unpersisted = self._unpersisted, {}
        for tp, offset in pending.items():
            self.data.set_persisted_offset(tp, offset)

    def memory_usage(self) -> dict[str, int]:
        """Bytes of RocksDB memory held by this worker's open partitions, by kind.

        ``memtables`` (bounded by ``write_buffer_size`` x 2 per partition),
        ``block_cache`` (bounded by ``block_cache_size`` per partition) and
        ``table_readers`` (SST indexes and filters, which grow with the data).
        """
        usage = {"memtables": 0, "block_cache": 0, "table_readers": 0}
        for db in rocksdb_databases(self.data):
            usage["memtables"] += db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
            usage["block_cache"] += db.property_int_value("rocksdb.block-cache-usage") or 0
            usage["table_readers"] += (
                db.property_int_value("rocksdb.estimate-table-readers-mem") or 0
            )
        return usage
