"""The Faust/aiokafka internals behind streams/_faust.py still exist as used there.

Each test names one contact point of the fence. When a faust-streaming release
changes one, this file fails first and says which: update streams/_faust.py and the
pin in pyproject.toml together.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiokafka
import faust
import pytest
from faust.stores import rocksdb as faust_rocksdb
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import _faust
from streams.tables import ProfileTable

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_faust_is_the_tested_minor_version_and_pinned() -> None:
    assert faust.__version__.startswith(_faust.TESTED_FAUST_MINOR + "."), faust.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    pin = re.search(r'"faust-streaming([^"]*)"', pyproject)
    assert pin is not None
    major, minor = _faust.TESTED_FAUST_MINOR.split(".")
    assert f"<{major}.{int(minor) + 1}" in pin.group(1), pin.group(1)


def test_1_consumer_factory_and_private_fetch_wait() -> None:
    assert callable(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer)
    init = inspect.getsource(aiokafka.AIOKafkaConsumer.__init__)
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in init
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start, "read in start(), after us"
    assert callable(faust_aiokafka.Consumer._new_consumer_thread)
    transport = _faust.transport_with_fetch_wait(20)
    assert issubclass(transport, faust_aiokafka.Transport)
    assert issubclass(transport.Consumer, faust_aiokafka.Consumer)


def test_2_app_builds_its_transport_in_new_transport() -> None:
    assert "_new_transport" in vars(faust.App)
    app = _faust.FetchWaitApp("contract", broker="kafka://127.0.0.1:1", store="memory://")
    app.fetch_max_wait_ms = 20
    transport = app._new_transport()
    assert type(transport).__mro__[1] is faust_aiokafka.Transport


def test_3_on_key_set_reads_the_partition_of_what_send_changelog_returns() -> None:
    source = inspect.getsource(faust.Table.on_key_set)
    assert "fut = self.send_changelog(" in source
    assert "fut.message.partition" in source
    assert _faust.changelog_sent(3).message.partition == 3
    params = list(inspect.signature(faust.Table.send_changelog).parameters)
    assert params == ["self", "partition", "key", "value", "key_serializer", "value_serializer"]


def test_4_rocksdb_store_keeps_one_database_per_partition_in_dbs() -> None:
    assert "_dbs" in faust_rocksdb.Store.__annotations__
    assert "self._dbs[partition]" in inspect.getsource(faust_rocksdb.Store._db_for_partition)

    class FakeStore:
        _dbs = {0: "db0", 1: "db1"}

    assert _faust.rocksdb_databases(FakeStore()) == ["db0", "db1"]
    assert _faust.rocksdb_databases(object()) == []
    assert _faust.rocksdb_partitions(FakeStore()) == {0: "db0", 1: "db1"}
    assert _faust.rocksdb_partitions(object()) == {}


class _Event:
    """What a table write reads of Faust's current event (weak-referenceable)."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition, topic="clicks")


def test_4_profile_reads_take_one_get_in_the_events_partition_as_faust_reads(
    tmp_path: Path,
) -> None:
    app = faust.App(
        "contract",
        store="rocksdb://",
        datadir=str(tmp_path),
        Table=ProfileTable,
        key_serializer="raw",
        value_serializer="raw",
    )
    table = app.Table("profiles", partitions=2, key_type=str, value_type=bytes, default=None)
    sent: list[tuple[Any, ...]] = []
    table.changelog_writer = lambda *record: sent.append(record)
    assert "db.get(key)" in inspect.getsource(faust_rocksdb.Store._get)
    one, zero = _Event(1), _Event(0)
    with _faust.as_current_event(one):
        table["u1"] = b'{"v":1}'
        for key, default in (("u1", None), ("u2", None), ("u2", b"-")):
            assert table.get(key, default) == faust.Table.get(table, key, default)
        assert table.get("u1") == b'{"v":1}' and table.get("u2", b"-") == b"-"
        assert callable(table._reader)  # read the direct way, not Faust's
    with _faust.as_current_event(zero):  # another partition's database: not there
        assert table.get("u1") is None and faust.Table.get(table, "u1") is None
    assert table.get("u1") == b'{"v":1}'  # no current event: Faust's own search
    assert sent[0][:4] == ("contract-profiles-changelog", 1, b'"u1"', b'{"v":1}')
    with _faust.as_current_event(one):  # the direct write, beside Faust's own
        table.put("u3", b'{"v":3}')
        table["u4"] = b'{"v":4}'
        assert callable(table._writer)
        assert faust.Table.get(table, "u3") == b'{"v":3}' == table.get("u3")
    direct, faust_own = sent[1], sent[2]
    assert direct[:4] == ("contract-profiles-changelog", 1, b'"u3"', b'{"v":3}')
    assert faust_own[:4] == ("contract-profiles-changelog", 1, b'"u4"', b'{"v":4}')
    assert table.data._key_index[b'"u3"'] == table.data._key_index[b'"u4"'] == 1
    assert "db.put(key, value)" in inspect.getsource(faust_rocksdb.Store._set)
    with pytest.raises(TypeError, match="outside of stream iteration"):
        table.put("u5", b"x")  # no current event: Faust's own path, and its refusal
    memory = faust.App("contract-mem", store="memory://", Table=ProfileTable)
    assert _faust.rocksdb_reader(memory.Table("p", value_type=bytes).data) is None


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_4_direct_key_encoding_is_the_stores_own_byte_for_byte(key: str) -> None:
    app = faust.App("contract-keys", store="memory://", Table=ProfileTable)
    store = app.Table("p", key_type=str, value_type=bytes).data
    encode = _faust.rocksdb_key_encoder(store)
    assert encode(key) == store._encode_key(key)


def test_4_keys_the_store_encodes_differently_keep_the_stores_encoding() -> None:
    class Store:
        key_type = str

        def _encode_key(self, key: Any) -> bytes:
            return b"raw:" + str(key).encode()

    assert _faust.rocksdb_key_encoder(Store())("u1") == b"raw:u1"


def test_5_table_manager_has_a_recovery_service_with_the_fields_readiness_reads() -> None:
    assert isinstance(inspect.getattr_static(TableManager, "recovery"), property)
    for name in ("in_recovery", "completed", "active_remaining_total"):
        assert hasattr(Recovery, name) or name in inspect.getsource(Recovery.__init__), name


def test_6_streams_can_iterate_events_without_acking() -> None:
    assert callable(faust.Stream.noack)
    assert inspect.isasyncgenfunction(faust.Stream.events)


def test_7_worker_sets_up_the_root_logger_through_an_overridable_hook() -> None:
    from faust.worker import Worker

    params = list(inspect.signature(Worker.on_setup_root_logger).parameters)
    assert params == ["self", "logger", "level"]
    assert issubclass(_faust.quiet_worker_class(), Worker)


def test_8_current_event_is_a_weak_reference_in_a_context_variable() -> None:
    from faust import streams as faust_streams

    source = inspect.getsource(faust.Stream._set_current_event)
    assert "_current_event.set(weakref.ref(event))" in source
    assert "eventref()" in inspect.getsource(faust.current_event)

    class Event:
        pass

    outer, inner = Event(), Event()
    assert faust.current_event() is None
    with _faust.as_current_event(outer):
        assert faust.current_event() is outer
        with _faust.as_current_event(inner):
            assert faust.current_event() is inner
        assert faust.current_event() is outer
    assert faust.current_event() is None
    assert faust_streams._current_event.get(None) is None


def test_9_the_fetch_loop_copied_for_the_batch_feed_is_fausts_own() -> None:
    from faust.transport import consumer as faust_consumer

    source = inspect.getsource(faust_consumer.Consumer._drain_messages)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == _faust.DRAIN_MESSAGES_SOURCE_SHA, (
        "Faust's Consumer._drain_messages changed: port the change to "
        "streams._faust._drain_messages, then update DRAIN_MESSAGES_SOURCE_SHA"
    )
    # What the copy and the feed read on the consumer, the app and a message.
    for name in ("_read_offset", "_commit_every", "_n_acked", "callback", "suspend_flow"):
        assert name in source
    assert callable(faust_consumer.Consumer._add_gap)
    assert callable(faust_consumer.Consumer.track_message)
    assert faust_consumer.CONSUMER_FETCHING == "FETCHING"
    assert "generation_id" in inspect.signature(faust.types.Message.__init__).parameters
    assert "tracked" in faust.types.Message.__slots__
    from faust.types.tuples import ConsumerMessage

    assert ConsumerMessage.use_tracking is True  # fetched records start untracked
    create_event = inspect.getsource(faust.App.create_event)
    assert "self.conf.Event(self, key, value, headers, message)" in create_event
    stream_source = inspect.getsource(faust.Stream._py_aiter)
    assert "add_unacked(message)" in stream_source  # the stream tracks as the feed does
    assert "message.generation_id != self.app.consumer_generation_id" in stream_source
    transport = _faust.transport_with_fetch_wait(20)
    assert "_drain_messages" in vars(transport.Consumer)


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "streams").glob("*.py") if p.name != "_faust.py")
    + sorted((ROOT / "deploy").rglob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_other_module_touches_these_internals(path: Path) -> None:
    text = path.read_text()
    for private in (
        "_create_worker_consumer",
        "_fetch_max_wait_ms",
        "_new_transport",
        "._dbs",
        "tables.recovery",
        ".noack(",
        "on_setup_root_logger",
        "._current_event",
        "_db_for_partition",
        "_encode_key",
        "_key_index",
        "_drain_messages",
        "track_message",
    ):
        assert private not in text, f"{private} belongs in streams/_faust.py"
