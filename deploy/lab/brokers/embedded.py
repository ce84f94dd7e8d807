"""An embedded Kafka broker: librdkafka's mock cluster, driven through ctypes.

librdkafka (bundled in the ``confluent-kafka`` wheel) contains a mock Kafka cluster
that serves the real Kafka wire protocol on loopback TCP ports. Any Kafka client
(aiokafka inside Faust, confluent-kafka, kcat, ...) talks to it exactly as it talks
to Apache Kafka. It is what ``make demo`` and the test-suite use when no external
cluster and no Docker engine are available.

Known limits (also stated in the README):

* No CreateTopics API: every topic, including Faust's changelog and leader topics,
  must be created up front with :meth:`EmbeddedBroker.create_topic` (Faust must run
  with ``topic_allow_declare=False``).
* Everything lives in memory and disappears with the process; no retention or
  compaction is applied.
* Transactions are not implemented faithfully; do not test exactly-once against it.
* Empty fetches are held for the client's whole ``fetch.max.wait.ms``.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import threading
from pathlib import Path

from deploy.lab.brokers.base import Broker
from streams.topics import TopicSpec

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError", "find_librdkafka"]

log = logging.getLogger("recstream.broker")

_RD_KAFKA_PRODUCER = 0


class EmbeddedBrokerError(RuntimeError):
    """The librdkafka mock cluster could not be loaded, started or configured."""


def find_librdkafka() -> Path:
    """Locate the librdkafka shared library bundled with the confluent-kafka wheel.

    ``RECSTREAM_LIBRDKAFKA`` overrides the search (for example a system librdkafka).

    Returns:
        Path to a loadable ``librdkafka`` shared object.

    Raises:
        EmbeddedBrokerError: if no library can be found.
    """
    override = os.environ.get("RECSTREAM_LIBRDKAFKA")
    if override:
        return Path(override)
    try:
        import confluent_kafka
    except ImportError as exc:  # pragma: no cover - confluent-kafka is a hard dependency
        raise EmbeddedBrokerError("confluent-kafka is not installed") from exc
    pkg = Path(confluent_kafka.__file__).resolve().parent
    for pattern in (
        "../confluent_kafka.libs/librdkafka*.so*",
        "../confluent_kafka/.dylibs/librdkafka*.dylib",
        ".dylibs/librdkafka*.dylib",
        "librdkafka*.so*",
    ):
        hits = sorted(glob.glob(str(pkg / pattern)))
        if hits:
            return Path(hits[0])
    raise EmbeddedBrokerError(
        f"librdkafka not found next to {pkg}; set RECSTREAM_LIBRDKAFKA to its path"
    )


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, cp, i32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32
    signatures: dict[str, tuple[list[type], type | None]] = {
        "rd_kafka_conf_new": ([], vp),
        "rd_kafka_conf_set": ([vp, cp, cp, cp, ctypes.c_size_t], ctypes.c_int),
        "rd_kafka_new": ([ctypes.c_int, vp, cp, ctypes.c_size_t], vp),
        "rd_kafka_destroy": ([vp], None),
        "rd_kafka_mock_cluster_new": ([vp, ctypes.c_int], vp),
        "rd_kafka_mock_cluster_destroy": ([vp], None),
        "rd_kafka_mock_cluster_bootstraps": ([vp], cp),
        "rd_kafka_mock_topic_create": ([vp, cp, ctypes.c_int, ctypes.c_int], ctypes.c_int),
        "rd_kafka_mock_broker_set_down": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_broker_set_up": ([vp, i32], ctypes.c_int),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": ([vp, i32], None),
        "rd_kafka_err2str": ([ctypes.c_int], cp),
        "rd_kafka_version_str": ([], cp),
    }
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    return lib


class EmbeddedBroker(Broker):
    """librdkafka's mock cluster serving the Kafka protocol on ``127.0.0.1``.

    Args:
        num_brokers: brokers in the mock cluster (ids ``1..num_brokers``).
        initial_rebalance_delay_ms: group rebalance delay; 0 lets a restarted
            worker rejoin at once instead of after the Kafka default of 3 s.

    The cluster runs on librdkafka's own threads inside this process; it keeps
    serving while Python code runs and stops on :meth:`stop` or process exit.
    """

    kind = "embedded"

    def __init__(self, num_brokers: int = 1, initial_rebalance_delay_ms: int = 0) -> None:
        self._num_brokers = num_brokers
        self._rebalance_delay_ms = initial_rebalance_delay_ms
        self._lib: ctypes.CDLL | None = None
        self._rk: int | None = None
        self._cluster: int | None = None
        self._bootstrap = ""
        self._lock = threading.Lock()
        self._topics: dict[str, int] = {}

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated ``host:port`` list clients connect to."""
        if not self._bootstrap:
            raise EmbeddedBrokerError("embedded broker is not started")
        return self._bootstrap

    @property
    def version(self) -> str:
        """librdkafka version string of the loaded library."""
        lib = self._lib or _load(find_librdkafka())
        return str(lib.rd_kafka_version_str().decode())

    def start(self) -> EmbeddedBroker:
        """Start the mock cluster; idempotent."""
        with self._lock:
            if self._cluster:
                return self
            lib = _load(find_librdkafka())
            conf = lib.rd_kafka_conf_new()
            errstr = ctypes.create_string_buffer(512)
            # The handle only hosts the mock cluster; keep its own logging quiet.
            for key, value in ((b"log_level", b"3"),):
                if lib.rd_kafka_conf_set(conf, key, value, errstr, len(errstr)) != 0:
                    raise EmbeddedBrokerError(errstr.value.decode())
            rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
            if not rk:
                raise EmbeddedBrokerError(f"rd_kafka_new failed: {errstr.value.decode()}")
            cluster = lib.rd_kafka_mock_cluster_new(rk, self._num_brokers)
            if not cluster:
                lib.rd_kafka_destroy(rk)
                raise EmbeddedBrokerError("rd_kafka_mock_cluster_new failed")
            lib.rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, self._rebalance_delay_ms)
            self._lib, self._rk, self._cluster = lib, rk, cluster
            self._bootstrap = lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()
            log.info(
                "embedded Kafka broker (librdkafka %s mock) on %s",
                lib.rd_kafka_version_str().decode(),
                self._bootstrap,
            )
            return self

    def stop(self) -> None:
        """Destroy the mock cluster; all topics and offsets are gone afterwards."""
        with self._lock:
            if self._lib is None or not self._cluster:
                return
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            if self._rk:
                self._lib.rd_kafka_destroy(self._rk)
            self._cluster = self._rk = None
            self._bootstrap = ""
            self._topics.clear()

    def create_topics(self, specs: list[TopicSpec]) -> None:
        """Create topics through the mock API (there is no CreateTopics request).

        Topics that already exist with the same partition count are left alone.
        Retention and compaction settings are accepted and ignored: the mock keeps
        everything in memory.
        """
        lib, cluster = self._require()
        for spec in specs:
            known = self._topics.get(spec.name)
            if known is not None:
                if known != spec.partitions:
                    raise EmbeddedBrokerError(
                        f"topic {spec.name!r} exists with {known} partitions, not {spec.partitions}"
                    )
                continue
            rf = min(spec.replication_factor, self._num_brokers)
            err = lib.rd_kafka_mock_topic_create(cluster, spec.name.encode(), spec.partitions, rf)
            if err != 0:
                raise EmbeddedBrokerError(
                    f"creating topic {spec.name!r}: {lib.rd_kafka_err2str(err).decode()}"
                )
            self._topics[spec.name] = spec.partitions

    def describe_topics(self) -> dict[str, int]:
        """Topics created through this handle, with their partition counts."""
        return dict(self._topics)

    def set_broker_down(self, broker_id: int = 1) -> None:
        """Simulate a broker outage: drop connections and refuse new ones."""
        lib, cluster = self._require()
        lib.rd_kafka_mock_broker_set_down(cluster, broker_id)

    def set_broker_up(self, broker_id: int = 1) -> None:
        """End a simulated outage started with :meth:`set_broker_down`."""
        lib, cluster = self._require()
        lib.rd_kafka_mock_broker_set_up(cluster, broker_id)

    def _require(self) -> tuple[ctypes.CDLL, int]:
        if self._lib is None or not self._cluster:
            raise EmbeddedBrokerError("embedded broker is not started")
        return self._lib, self._cluster
