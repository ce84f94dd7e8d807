"""The Faust application: topics, the profiles table and the scoring agent.

:func:`create_app` is the only entry point; it takes a fully resolved
:class:`StreamConfig` (built from environment settings by ``deploy.settings``) and
a scorer, and returns a ready-to-run :class:`faust.App`.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import faust

from models.experiment import Experiment
from models.scorer import Scorer
from streams._faust import FetchWaitApp
from streams.agents import Pipeline
from streams.api import LookupApi
from streams.bundles import CoPurchaseModel
from streams.catalog import TextSupport
from streams.config import KafkaConfig, StreamConfig
from streams.metrics import Metrics
from streams.output import OutputSink
from streams.reload import ModelReloader, ModelSource
from streams.tables import ProfileTable
from streams.topics import BUNDLE_COUNTS_TABLE, PROFILES_TABLE, changelog_topic
from streams.web import is_ready, register_web

__all__ = ["RecstreamApp", "create_app"]

log = logging.getLogger("recstream.app")


class RecstreamApp(FetchWaitApp):
    """The worker's :class:`faust.App`, with its pipeline once :func:`create_app` built it."""

    pipeline: Pipeline


def _credentials(kafka: KafkaConfig) -> Any:
    if kafka.security_protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        import ssl

        ssl_context = ssl.create_default_context(
            cafile=str(kafka.ssl_ca_file) if kafka.ssl_ca_file else None
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(ssl_context)
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        mechanism=kafka.sasl_mechanism,
        ssl_context=ssl_context,
    )


def _rocksdb_options(config: StreamConfig) -> dict[str, Any]:
    """RocksDB options of every table, bounding its memory.

    Faust's RocksDB defaults (64 MiB x 3 memtables and a 2 GiB block cache per
    partition) let a worker's RSS climb for hours. The block cache fills up to its cap
    whatever the live data size (blocks of compacted-away files stay until evicted),
    so RocksDB memory is bounded by partitions x (2 x write buffer + block cache):
    96 MiB per table for 4 partitions with the defaults.
    """
    return {
        "driver": "rocksdict",
        "write_buffer_size": config.rocksdb.write_buffer_mb * 1024 * 1024,
        "max_write_buffer_number": 2,
        "block_cache_size": config.rocksdb.block_cache_mb * 1024 * 1024,
    }


def create_app(
    config: StreamConfig,
    scorer: Scorer,
    metrics: Metrics | None = None,
    *,
    model_source: ModelSource | None = None,
    loaded_version: str | None = None,
    experiment: tuple[Experiment, Scorer] | None = None,
    output: OutputSink | None = None,
    text: TextSupport | None = None,
    co_purchases: CoPurchaseModel | None = None,
) -> RecstreamApp:
    """Build the worker application.

    Args:
        config: resolved stream settings.
        scorer: the model used to rank items (loaded once, shared by all batches).
        metrics: metrics registry; a fresh one by default.
        model_source: where new model versions come from; polled every
            ``config.model_reload_interval_s`` for hot reload (``None``: no reload).
        loaded_version: the source's name of ``scorer``'s version.
        experiment: a running A/B experiment and its candidate's scorer (a source
            that is an :class:`~streams.reload.ExperimentSource` keeps it current).
        output: where recommendations, dead letters and changelog records go; a
            librdkafka :class:`~streams.output.OutputProducer` by default (tests pass
            an in-memory sink).
        text: the text encoder and the catalog's text index (``None``: searches
            carry no intent and the catalog's text is not embedded).
        co_purchases: the model side of bundles (``models.bundles``); ``None``: no
            co-purchase pairing or counting (see ``streams.bundles``).

    Returns:
        The Faust app with the ``score_user_events`` agent registered.
    """
    servers = config.kafka.bootstrap_servers.split(",")
    brokers = [f"kafka://{hp.strip()}" for hp in servers if hp.strip()]
    app = RecstreamApp(
        config.app_id,
        broker=brokers,
        broker_credentials=_credentials(config.kafka),
        store=config.store,
        datadir=str(config.state_dir),
        # Topics are provisioned up front (``recstream topics create``): workers must
        # not auto-create them with broker defaults, and the embedded broker has no
        # CreateTopics API at all.
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        broker_session_timeout=config.consumer.session_timeout_s,
        broker_heartbeat_interval=config.consumer.heartbeat_interval_s,
        broker_rebalance_timeout=config.consumer.rebalance_timeout_s,
        broker_request_timeout=max(30.0, config.consumer.session_timeout_s * 2),
        broker_commit_interval=config.consumer.commit_interval_s,
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
        web_enabled=config.web.enabled,
        web_bind=config.web.host,
        web_port=config.web.port,
        # What the other workers reach this one's web server at (lookups are
        # forwarded to the partition's owner); Faust's default is the host name.
        web_host=config.web.advertised_host or socket.gethostname(),
        key_serializer="raw",
        value_serializer="raw",
    )
    app.fetch_max_wait_ms = config.consumer.fetch_max_wait_ms
    profiles = app.Table(
        PROFILES_TABLE,
        default=None,
        partitions=config.partitions,
        key_type=str,
        # Values are the profile's JSON bytes (value_type bytes = Faust's raw codec),
        # encoded and decoded by streams.profile with orjson: Faust's json codec
        # took about twice as long on the hot path.
        value_type=bytes,
        options=_rocksdb_options(config),
        # Keys and values are JSON in RocksDB and in the changelog, so any Kafka
        # tool can read a profile; see streams/profile.py for the document.
    )
    # Faust names the changelog itself; topic provisioning relies on that name.
    assert profiles.changelog_topic.get_topic_name() == changelog_topic(config.app_id)
    assert isinstance(profiles, ProfileTable)  # the app's Table class (above)
    bundle_counts = None
    if co_purchases is not None and config.bundles.enabled:
        # Per-item co-purchase counts (JSON bytes, like the profiles), co-partitioned
        # with the co-purchases topic by anchor item.
        bundle_counts = app.Table(
            BUNDLE_COUNTS_TABLE,
            default=None,
            partitions=config.partitions,
            key_type=str,
            value_type=bytes,
            options=_rocksdb_options(config),
        )
        assert bundle_counts.changelog_topic.get_topic_name() == changelog_topic(
            config.app_id, BUNDLE_COUNTS_TABLE
        )
    metrics = metrics or Metrics()
    app.pipeline = Pipeline(
        app,
        config,
        scorer,
        profiles,
        metrics,
        output=output,
        text=text,
        co_purchases=co_purchases,
        bundle_counts=bundle_counts,
    )
    app.pipeline.register()
    if experiment is not None:
        app.pipeline.set_experiment(*experiment)
    if model_source is not None and config.model_reload_interval_s > 0:
        reloader = ModelReloader(
            model_source,
            lambda: app.pipeline.scorer,
            app.pipeline.set_scorer,
            loaded_version,
            set_experiment=app.pipeline.set_experiment,
            loaded_experiment=experiment,
            prepare=app.pipeline.prepare_scorer,
        )

        async def reload_model() -> None:
            await reloader.check()

        app.timer(config.model_reload_interval_s)(reload_model)

    async def sweep_expired() -> None:
        # Profiles of inactive users and old erasure markers (streams.privacy).
        try:
            requested = await app.pipeline.sweep()
        except Exception:
            log.exception("the TTL sweep failed; it runs again in %s s", sweep_interval)
            return
        if requested:
            log.info("TTL sweep: %d expired profiles or markers to delete", requested)

    async def read_item_rules() -> None:
        app.pipeline.start_rules()
        app.pipeline.start_catalog()
        app.pipeline.start_bundles()

    app.task(read_item_rules)

    sweep_interval = config.data_privacy.sweep_interval_s
    app.timer(sweep_interval)(sweep_expired)

    if config.web.enabled:
        register_web(
            app,
            metrics,
            config.topics.consumed(),
            table=profiles,
            acks=app.pipeline.acks,
            max_unacked_age_s=config.web.max_unacked_age_s,
            rules_loaded=lambda: app.pipeline.side_topics_loaded,
        )
        LookupApi(
            app,
            profiles,
            partitions=config.partitions,
            token=config.api.token.get_secret_value(),
            forward_timeout_s=config.api.forward_timeout_s,
            state_key=app.pipeline.state_key,
            ready=lambda: is_ready(app, lambda: app.pipeline.side_topics_loaded),
            metrics=metrics,
        ).register()
    return app
