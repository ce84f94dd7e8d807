"""Settings: the composition root's only source of configuration.

Every field can be set through an environment variable with the ``RECSTREAM_``
prefix (``RECSTREAM_KAFKA_BOOTSTRAP_SERVERS=...``) or a ``.env`` file. Nothing
else in recstream reads the environment for its own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.app import KafkaSecurity, StreamConfig
from streams.profile import ProfileLimits
from streams.topics import TopicNames

__all__ = ["Settings"]


class Settings(BaseSettings):
    """recstream configuration (env prefix ``RECSTREAM_``)."""

    model_config = SettingsConfigDict(env_prefix="RECSTREAM_", env_file=".env", extra="ignore")

    app_id: str = Field(
        "recstream", description="Faust app id: consumer group and changelog prefix."
    )
    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Comma-separated host:port list of the Kafka cluster."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    kafka_ssl_ca_file: Path | None = Field(
        None, description="CA bundle for SSL; system CAs if unset."
    )
    partitions: int = Field(
        4, ge=1, description="Partitions of every recstream topic (max workers)."
    )
    replication_factor: int = Field(1, ge=1, description="Replication factor for created topics.")
    topic_clicks: str = Field("clicks", description="Input topic for click events.")
    topic_browses: str = Field("browses", description="Input topic for browse events.")
    topic_purchases: str = Field("purchases", description="Input topic for purchase events.")
    topic_recommendations: str = Field("recommendations", description="Output topic.")
    topic_dead_letter: str = Field("events-dlq", description="Dead-letter topic for bad input.")
    retention_hours: int = Field(168, ge=1, description="Retention of input/output/DLQ topics.")
    state_dir: Path = Field(Path("var/state"), description="RocksDB table directory (local state).")
    model_dir: Path = Field(
        Path("var/models/current"),
        description="Model directory (model.onnx + metadata.json) or a model store root "
        "(its CURRENT version is served and hot-reloaded when CURRENT changes).",
    )
    model_reload_interval_s: float = Field(
        10.0, ge=0, description="How often a model store's CURRENT is checked (0 = never)."
    )
    provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="onnxruntime execution provider; auto = CUDA if usable, else CPU."
    )
    intra_op_threads: int = Field(
        1,
        ge=0,
        description="onnxruntime intra-op threads (0 = onnxruntime's default, all cores). "
        "1 leaves the other cores to the event loop and librdkafka.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="Event loop of the worker: uvloop (libuv, less CPU per event and per "
        "wake-up) or the standard library's asyncio loop.",
    )
    gil_switch_interval_ms: float = Field(
        0.5, ge=0, description="Python GIL switch interval in the worker (0 = Python's 5 ms)."
    )
    rocksdb_write_buffer_mb: int = Field(
        4, ge=1, description="RocksDB memtable size per table partition, MiB (2 kept)."
    )
    rocksdb_block_cache_mb: int = Field(
        16, ge=1, description="RocksDB block cache per table partition, MiB."
    )
    history_len: int = Field(50, ge=1, description="Interactions kept per user profile.")
    max_purchased: int = Field(200, ge=1, description="Purchased items remembered for exclusion.")
    dedup_window: int = Field(
        64, ge=1, description="Event ids remembered per user for idempotency."
    )
    top_k: int = Field(20, ge=1, description="Items per recommendation list.")
    max_batch: int = Field(64, ge=1, description="Most events scored in one inference call.")
    max_wait_ms: float = Field(
        5.0, ge=0, description="Longest an event waits for its batch to fill."
    )
    inference_thread: bool = Field(
        True,
        description="Score batches in a thread, overlapping the stream (false: on the loop).",
    )
    changelog_producer: Literal["librdkafka", "faust"] = Field(
        "librdkafka",
        description="Producer of profile changelog records: librdkafka (fast) or "
        "Faust's aiokafka producer.",
    )
    fetch_max_wait_ms: int = Field(
        100, ge=1, description="Consumer fetch wait; bounds latency on quiet partitions."
    )
    commit_interval_s: float = Field(
        1.0, gt=0, description="How often consumed offsets are committed."
    )
    session_timeout_s: float = Field(10.0, gt=0, description="Kafka consumer session timeout.")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="Kafka consumer heartbeat interval.")
    rebalance_timeout_s: float = Field(10.0, gt=0, description="Kafka consumer rebalance timeout.")
    web_enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz.")
    web_host: str = Field("0.0.0.0", description="Bind address of the web server.")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of /metrics, /healthz, /readyz.")
    web_profiles: bool = Field(
        False, description="Serve /profiles/{user_id} (debugging; exposes user data)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_json: bool = Field(False, description="One JSON object per log line.")
    log_pseudonymize_users: bool = Field(True, description="Log keyed hashes instead of user ids.")
    log_pseudonym_key: SecretStr = Field(
        SecretStr("recstream"), description="Secret key of the user-id pseudonyms."
    )

    def topic_names(self) -> TopicNames:
        """The configured topic names."""
        return TopicNames(
            clicks=self.topic_clicks,
            browses=self.topic_browses,
            purchases=self.topic_purchases,
            recommendations=self.topic_recommendations,
            dead_letter=self.topic_dead_letter,
        )

    def stream_config(self) -> StreamConfig:
        """Resolve into the stream layer's config object."""
        return StreamConfig(
            app_id=self.app_id,
            bootstrap_servers=self.kafka_bootstrap_servers,
            topics=self.topic_names(),
            partitions=self.partitions,
            replication_factor=self.replication_factor,
            data_dir=self.state_dir,
            limits=ProfileLimits(
                history_len=self.history_len,
                max_purchased=self.max_purchased,
                dedup_window=self.dedup_window,
            ),
            top_k=self.top_k,
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
            inference_thread=self.inference_thread,
            changelog_producer=self.changelog_producer,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            commit_interval_s=self.commit_interval_s,
            model_reload_interval_s=self.model_reload_interval_s,
            rocksdb_write_buffer_mb=self.rocksdb_write_buffer_mb,
            rocksdb_block_cache_mb=self.rocksdb_block_cache_mb,
            session_timeout_s=self.session_timeout_s,
            heartbeat_interval_s=self.heartbeat_interval_s,
            rebalance_timeout_s=self.rebalance_timeout_s,
            web_enabled=self.web_enabled,
            web_host=self.web_host,
            web_port=self.web_port,
            web_profiles=self.web_profiles,
            pseudonymize_users=self.log_pseudonymize_users,
            pseudonym_key=self.log_pseudonym_key.get_secret_value(),
            security=KafkaSecurity(
                protocol=self.kafka_security_protocol,
                sasl_mechanism=self.kafka_sasl_mechanism,
                username=self.kafka_sasl_username,
                password=(
                    self.kafka_sasl_password.get_secret_value()
                    if self.kafka_sasl_password
                    else None
                ),
                ca_file=self.kafka_ssl_ca_file,
            ),
        )

    def client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) connection settings for CLI clients."""
        config = self.stream_config()
        return {
            "bootstrap.servers": config.bootstrap_servers,
            **config.security.librdkafka_config(),
        }
