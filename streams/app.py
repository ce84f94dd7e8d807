"""The Faust application: topics, the profiles table and the scoring agent.

:func:`create_app` is the only entry point; it takes a fully resolved
:class:`StreamConfig` (built from environment settings by ``deploy.settings``) and
a scorer, and returns a ready-to-run :class:`faust.App`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from faust.types import TransportT

from models.scorer import Scorer
from streams._transport import transport_with_fetch_wait
from streams.agents import Pipeline
from streams.metrics import Metrics
from streams.profile import ProfileLimits
from streams.reload import ModelReloader, ModelSource
from streams.tables import ProfileTable
from streams.topics import PROFILES_TABLE, TopicNames, changelog_topic
from streams.web import register_web

__all__ = ["KafkaSecurity", "RecstreamApp", "StreamConfig", "create_app"]

log = logging.getLogger("recstream.app")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How the worker authenticates to Kafka (``PLAINTEXT`` needs nothing)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    def librdkafka_config(self) -> dict[str, str]:
        """The same security settings for librdkafka (confluent-kafka) clients."""
        conf = {"security.protocol": self.protocol}
        if self.protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.username or ""
            conf["sasl.password"] = self.password or ""
        if self.ca_file:
            conf["ssl.ca.location"] = str(self.ca_file)
        return conf


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Everything the stream layer needs; see ``deploy/settings.py`` for meanings."""

    app_id: str = "recstream"
    bootstrap_servers: str = "localhost:9092"
    topics: TopicNames = field(default_factory=TopicNames)
    partitions: int = 4
    replication_factor: int = 1
    data_dir: Path = Path("var/state")
    store: str = "rocksdb://"
    limits: ProfileLimits = field(default_factory=ProfileLimits)
    top_k: int = 20
    max_batch: int = 64
    max_wait_ms: float = 5.0
    inference_thread: bool = True
    changelog_producer: str = "librdkafka"
    fetch_max_wait_ms: int = 100
    commit_interval_s: float = 1.0
    changelog_linger_ms: int = 5
    rocksdb_write_buffer_mb: int = 4
    rocksdb_block_cache_mb: int = 16
    model_reload_interval_s: float = 10.0
    session_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 10.0
    web_enabled: bool = True
    web_host: str = "0.0.0.0"
    web_port: int = 6066
    web_profiles: bool = False
    pseudonymize_users: bool = True
    pseudonym_key: str = field(default="recstream", repr=False)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)


class RecstreamApp(faust.App):
    """A :class:`faust.App` whose consumer fetch wait comes from the config."""

    fetch_max_wait_ms: int = 1500
    pipeline: Pipeline

    def _new_transport(self) -> TransportT:
        cls = transport_with_fetch_wait(self.fetch_max_wait_ms)
        return cls(self.conf.broker_consumer, self)


def _credentials(security: KafkaSecurity) -> Any:
    if security.protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if security.protocol in ("SSL", "SASL_SSL"):
        import ssl

        ssl_context = ssl.create_default_context(
            cafile=str(security.ca_file) if security.ca_file else None
        )
    if security.protocol == "SSL":
        return faust.SSLCredentials(ssl_context)
    return faust.SASLCredentials(
        username=security.username,
        password=security.password,
        mechanism=security.sasl_mechanism,
        ssl_context=ssl_context,
    )


def create_app(
    config: StreamConfig,
    scorer: Scorer,
    metrics: Metrics | None = None,
    *,
    model_source: ModelSource | None = None,
    loaded_version: str | None = None,
) -> RecstreamApp:
    """Build the worker application.

    Args:
        config: resolved stream settings.
        scorer: the model used to rank items (loaded once, shared by all batches).
        metrics: metrics registry; a fresh one by default.
        model_source: where new model versions come from; polled every
            ``config.model_reload_interval_s`` for hot reload (``None``: no reload).
        loaded_version: the source's name of ``scorer``'s version.

    Returns:
        The Faust app with the ``score_user_events`` agent registered.
    """
    brokers = [f"kafka://{hp.strip()}" for hp in config.bootstrap_servers.split(",") if hp.strip()]
    app = RecstreamApp(
        config.app_id,
        broker=brokers,
        broker_credentials=_credentials(config.security),
        store=config.store,
        datadir=str(config.data_dir),
        # Topics are provisioned up front (``recstream topics create``): workers must
        # not auto-create them with broker defaults, and the embedded broker has no
        # CreateTopics API at all.
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=config.heartbeat_interval_s,
        broker_rebalance_timeout=config.rebalance_timeout_s,
        broker_request_timeout=max(30.0, config.session_timeout_s * 2),
        broker_commit_interval=config.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Faust's own producer now only carries what Faust itself sends (e.g. a
        # table write before the agent starts); batched all the same.
        producer_linger_ms=config.changelog_linger_ms,
        # Profiles are JSON and compress 3-5x; less changelog bandwidth and storage.
        producer_compression_type="lz4",
        table_standby_replicas=0,
        # Changelog records go out through librdkafka (see streams/tables.py).
        Table=ProfileTable,
        web_enabled=config.web_enabled,
        web_bind=config.web_host,
        web_port=config.web_port,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.fetch_max_wait_ms = config.fetch_max_wait_ms
    profiles = app.Table(
        PROFILES_TABLE,
        default=None,
        partitions=config.partitions,
        key_type=str,
        # Values are the profile's JSON bytes (value_type bytes = Faust's raw codec),
        # encoded and decoded by streams.profile with orjson: Faust's json codec
        # took about twice as long on the hot path.
        value_type=bytes,
        # Faust's RocksDB defaults (64 MiB x 3 memtables and a 2 GiB block cache per
        # partition) let a worker's RSS climb for hours. The block cache fills up to
        # its cap whatever the live data size (blocks of compacted-away files stay
        # until evicted), so RocksDB memory is bounded by partitions x (2 x write
        # buffer + block cache): 96 MiB for 4 partitions with the defaults.
        options={
            "driver": "rocksdict",
            "write_buffer_size": config.rocksdb_write_buffer_mb * 1024 * 1024,
            "max_write_buffer_number": 2,
            "block_cache_size": config.rocksdb_block_cache_mb * 1024 * 1024,
        },
        # Keys and values are JSON in RocksDB and in the changelog, so any Kafka
        # tool can read a profile; see streams/profile.py for the document.
    )
    # Faust names the changelog itself; topic provisioning relies on that name.
    assert profiles.changelog_topic.get_topic_name() == changelog_topic(config.app_id)
    metrics = metrics or Metrics()
    app.pipeline = Pipeline(app, config, scorer, profiles, metrics)
    app.pipeline.register()
    if model_source is not None and config.model_reload_interval_s > 0:
        reloader = ModelReloader(
            model_source, lambda: app.pipeline.scorer, app.pipeline.set_scorer, loaded_version
        )

        async def reload_model() -> None:
            await reloader.check()

        app.timer(config.model_reload_interval_s)(reload_model)

    if config.web_enabled:
        register_web(
            app,
            metrics,
            profiles if config.web_profiles else None,
            tuple(config.topics.inputs()),
            table=profiles,
        )
    return app
