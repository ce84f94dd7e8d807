"""The stream layer's configuration: typed groups, each default and meaning in one place.

:class:`StreamConfig` is everything :func:`streams.app.create_app` needs. It is made
of small frozen groups (Kafka connection, topic names, profile limits, scoring,
consumer timings, RocksDB, web server, privacy, online feedback).
``deploy.settings.Settings`` nests a whole :class:`StreamConfig` and reads it from
the environment: every field is one variable, ``RECSTREAM_`` + the group's
:attr:`ConfigGroup.env_prefix` + the field name (``kafka`` + ``bootstrap_servers``
-> ``RECSTREAM_KAFKA_BOOTSTRAP_SERVERS``). Nothing in ``streams`` reads the
environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.config import JsonDict

from streams.profile import ProfileLimits
from streams.topics import TopicNames

__all__ = [
    "ApiConfig",
    "BundleConfig",
    "ChangelogProducer",
    "ConfigGroup",
    "ConsumerConfig",
    "DataPrivacyConfig",
    "FeedbackConfig",
    "KafkaConfig",
    "PrivacyConfig",
    "RocksDBConfig",
    "SaslMechanism",
    "ScoringConfig",
    "SearchConfig",
    "SecurityProtocol",
    "StreamConfig",
    "WebConfig",
    "internal_field",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
ChangelogProducer = Literal["librdkafka", "faust"]
HistoryPolicy = Literal["exclude-purchased", "exclude-history", "model"]

#: Marks a field that is not a setting (no environment variable): test and
#: benchmark hooks such as the table store URL.
_INTERNAL: JsonDict = {"internal": True}


def internal_field(field: Any) -> bool:
    """Whether a pydantic ``FieldInfo`` is an internal hook rather than a setting."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("internal"))


class ConfigGroup(BaseModel):
    """Base of a configuration group: frozen, unknown names are errors.

    Any pydantic model nested in :class:`StreamConfig` is a group (``TopicNames`` and
    ``ProfileLimits`` live beside the code that uses them and set the same class
    attributes).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Prepended to each field name to form its setting name (``RECSTREAM_`` + this).
    env_prefix: ClassVar[str] = ""


class KafkaConfig(ConfigGroup):
    """Where the cluster is and how to authenticate (``PLAINTEXT`` needs nothing)."""

    env_prefix: ClassVar[str] = "kafka_"

    bootstrap_servers: str = Field(
        "localhost:9092", description="Comma-separated host:port list of the Kafka cluster."
    )
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT",
        description="Kafka security protocol: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.",
    )
    sasl_mechanism: SaslMechanism = Field(
        "PLAIN",
        description="SASL mechanism when the protocol is `SASL_*`: `PLAIN`, `SCRAM-SHA-256` "
        "or `SCRAM-SHA-512`.",
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (a secret: never logged or printed)."
    )
    ssl_ca_file: Path | None = Field(None, description="CA bundle for SSL; system CAs if unset.")

    def security_config(self) -> dict[str, str]:
        """The security settings as librdkafka (confluent-kafka) properties."""
        conf: dict[str, str] = {"security.protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else ""
            )
        if self.ssl_ca_file:
            conf["ssl.ca.location"] = str(self.ssl_ca_file)
        return conf

    def client_config(self) -> dict[str, str]:
        """librdkafka connection properties: bootstrap servers and security."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.security_config()}


class ScoringConfig(ConfigGroup):
    """How events are batched, scored and their state written."""

    top_k: int = Field(20, ge=1, description="Items per recommendation list.")
    max_batch: int = Field(64, ge=1, description="Most events scored in one inference call.")
    max_wait_ms: float = Field(
        5.0, ge=0, description="Longest an event waits for its batch to fill."
    )
    category_cap: int = Field(
        0,
        ge=0,
        description="Most items of one category (from the item rules) in one list; 0 = no "
        "cap. With a cap the model ranks 4 x top_k candidates; a list is shorter than "
        "top_k only if those hold too few other categories.",
    )
    history_policy: HistoryPolicy = Field(
        "exclude-purchased",
        description="Which of the user's own items a list may hold. `exclude-purchased` "
        "(default): never what they bought; items they viewed are scored by the model (whose "
        "repeat-aware head learned when shoppers go back to an item). `exclude-history`: "
        "nothing from the recent history either. `model`: no exclusions; the model decides, "
        "bought items included (shops of consumables). Item rules apply in every case.",
    )
    output_schema_version: int = Field(
        2,
        ge=1,
        le=2,
        description="`schema_version` of the recommendation lists written. 2 (default): "
        "with reasons and bundles. 1: the same lists, reasons and bundles included (v2 only "
        "adds optional fields), labelled 1, for consumers that still pin version 1 during "
        "a rolling upgrade; switch to 2 once they read it.",
    )
    inference_thread: bool = Field(
        True,
        description="Score batches in a thread, overlapping the stream (false: on the loop).",
    )
    changelog_producer: ChangelogProducer = Field(
        "librdkafka",
        description="Producer of profile changelog records. `librdkafka` (default): an event "
        "is acked only once its changelog record is delivered. `faust` (Faust's aiokafka "
        "producer; a benchmark baseline): slower, and weaker: an event is acked once its "
        "recommendation is delivered; Faust flushes its producer before each commit, but "
        "a changelog record that fails to send does not hold the offset back, so that "
        "profile update can be missing from the changelog after a restore.",
    )


class ConsumerConfig(ConfigGroup):
    """Consumer fetch, commit and group timings."""

    fetch_max_wait_ms: int = Field(
        100, ge=1, description="Consumer fetch wait; bounds latency on quiet partitions."
    )
    commit_interval_s: float = Field(
        1.0, gt=0, description="How often consumed offsets are committed."
    )
    session_timeout_s: float = Field(10.0, gt=0, description="Kafka consumer session timeout.")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="Kafka consumer heartbeat interval.")
    rebalance_timeout_s: float = Field(10.0, gt=0, description="Kafka consumer rebalance timeout.")
    batch_feed: bool = Field(
        True,
        description="Hand input records to the scoring agent a fetched batch at a time, "
        "past Faust's per-record conductor and stream (false: Faust's stream).",
    )


class RocksDBConfig(ConfigGroup):
    """Memory bounds of the profiles table's RocksDB (per table partition)."""

    env_prefix: ClassVar[str] = "rocksdb_"

    write_buffer_mb: int = Field(
        4, ge=1, description="RocksDB memtable size per table partition, MiB (2 kept)."
    )
    block_cache_mb: int = Field(
        16, ge=1, description="RocksDB block cache per table partition, MiB."
    )


class WebConfig(ConfigGroup):
    """The worker's HTTP server."""

    env_prefix: ClassVar[str] = "web_"

    enabled: bool = Field(True, description="Serve `/metrics`, `/healthz` and `/readyz`.")
    host: str = Field("0.0.0.0", description="Bind address of the web server.")
    port: int = Field(
        6066, ge=1, le=65535, description="Port of `/metrics`, `/healthz`, `/readyz`."
    )
    advertised_host: str = Field(
        "",
        description="Host name or IP at which the other workers reach this one's web server "
        "(a lookup is forwarded to the worker that owns the user's partition); empty: "
        "this machine's host name.",
    )
    max_unacked_age_s: float = Field(
        300.0,
        gt=0,
        description="`/healthz` fails when the oldest event still waiting for its outputs "
        "is older than this (a stuck partition: the pod is restarted).",
    )


class ApiConfig(ConfigGroup):
    """The lookup API (``/users/{user_id}/...``) on the worker's web server."""

    env_prefix: ClassVar[str] = "api_"

    token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token every lookup request must carry (a secret); empty: the "
        "lookup API answers 503 to everything.",
    )
    forward_timeout_s: float = Field(
        5.0, gt=0, description="Timeout of a lookup forwarded to the owner of the partition."
    )


class PrivacyConfig(ConfigGroup):
    """What logs may say about users."""

    env_prefix: ClassVar[str] = "log_"

    pseudonymize_users: bool = Field(
        True, description="Log keyed hashes (`u:<12 hex>`) instead of user ids."
    )
    pseudonym_key: SecretStr = Field(
        SecretStr("recstream"), description="Secret key of the user-id pseudonyms."
    )


class DataPrivacyConfig(ConfigGroup):
    """What state keeps about users, for how long, and under which name."""

    env_prefix: ClassVar[str] = "privacy_"

    user_key: SecretStr = Field(
        SecretStr(""),
        description="Pseudonymous mode: with a key, user ids are replaced by keyed hashes "
        "(`p:<32 hex>`) before any state or output is written (RocksDB, changelog, output "
        "topics); the shop maps its ids with the same key (`streams.client.Pseudonyms`). "
        "Empty: user ids are stored as they are. Changing it orphans every profile.",
    )
    profile_ttl_days: float = Field(
        90.0,
        ge=0,
        description="Profiles of users with no event (event time) for this many days are "
        "deleted (changelog tombstones; 0 = kept until erased).",
    )
    erasure_marker_days: float = Field(
        14.0,
        gt=0,
        description="How long an erased user's marker (a pseudonym and the erasure time) "
        "is kept so that replayed older events cannot bring the user back; at least the "
        "input topics' retention (`RECSTREAM_RETENTION_HOURS`).",
    )
    sweep_interval_s: float = Field(
        3600.0,
        gt=0,
        description="How often each worker looks for expired profiles and markers in the "
        "partitions it owns.",
    )


class FeedbackConfig(ConfigGroup):
    """Online feedback: hits on recommended items (``recstream_recommendation_hits_total``)."""

    env_prefix: ClassVar[str] = "feedback_"

    lists: int = Field(
        3,
        ge=0,
        description="Recommendation lists remembered per user profile to count hits on "
        "(0: no feedback metrics). Remembered in the profile write of the event that "
        "triggered the list (one write per user per scored batch).",
    )
    window_s: float = Field(
        3600.0,
        gt=0,
        description="An interaction counts as a hit on a remembered list within this many "
        "seconds (event time) after the event that triggered the list.",
    )


class SearchConfig(ConfigGroup):
    """Search intent (needs `RECSTREAM_TEXT_ENCODER_DIR`; see ``streams.intent``)."""

    env_prefix: ClassVar[str] = "search_"

    half_life_s: float = Field(
        1800.0,
        gt=0,
        description="Half-life of a search's weight on later lists, seconds of event time.",
    )
    min_weight: float = Field(
        0.05,
        ge=0,
        le=1,
        description="A search's intent is no longer used once its decayed weight is below this.",
    )
    weight: float | None = Field(
        None,
        ge=0,
        description="How much a search moves lists (`OnnxScorer.search_weight`: the intent "
        "term's scale against the row's own logits); unset: the default 3.0, selected on "
        "validation users (README, search and catalog).",
    )


class BundleConfig(ConfigGroup):
    """Frequently bought together, counted from the stream's purchases (``streams.bundles``)."""

    env_prefix: ClassVar[str] = "bundle_"

    enabled: bool = Field(
        True,
        description="Pair purchases, count co-purchases per item and add a `bundle` to "
        "lists; false: no co-purchases are written or counted.",
    )
    window_s: float = Field(
        3600.0,
        ge=0,
        description="Two purchases of one user are co-purchases when in the same order or "
        "within this many seconds (event time).",
    )
    half_life_s: float = Field(
        14 * 86400.0, gt=0, description="Half-life of a co-purchase's weight, seconds."
    )
    max_partners: int = Field(
        50, ge=1, description="Co-purchase partners kept per item (the lightest is evicted)."
    )
    size: int = Field(5, ge=1, le=50, description="Items in the `bundle` of a recommendation list.")
    min_support: int = Field(
        3,
        ge=1,
        description="A partner is published in an item's bundle only once bought with it in "
        "this many distinct purchases: one shopper's pair is never shown to everyone viewing "
        "the item (3: it takes three purchases, usually three shoppers).",
    )
    min_score: float = Field(
        0.05,
        gt=0,
        description="A partner whose decayed count falls below this is no longer shown (read "
        "time) or published; an item left with none gets a tombstone on `bundles` at its next "
        "co-purchase (3 co-purchases fall below 0.05 after about 6 half-lives).",
    )
    dedup_horizon_s: float = Field(
        86400.0,
        ge=0,
        description="A co-purchase is counted once per item when redelivered up to this many "
        "seconds (event time) behind the item's newest; an older one is not counted. A day "
        "covers a redelivery after a crash (the records since the last commit) and the skew "
        "between partitions while a worker catches up after an outage.",
    )
    dedup_max: int = Field(
        1024,
        ge=1,
        description="Most purchase ids remembered per item within the horizon (bounds the "
        "state of a busy item; beyond it the horizon shortens, replays still count once).",
    )


class StreamConfig(ConfigGroup):
    """Everything the stream layer needs (see each group for the meanings)."""

    app_id: str = Field(
        "recstream", description="Faust app id: consumer group and changelog prefix."
    )
    partitions: int = Field(
        4, ge=1, description="Partitions of every recstream topic (= most useful workers)."
    )
    replication_factor: int = Field(
        1, ge=1, description="Replication factor for created topics (3 in production)."
    )
    state_dir: Path = Field(
        Path("var/state"),
        description="RocksDB table directory (local state; rebuilt from the changelog if lost).",
    )
    model_reload_interval_s: float = Field(
        10.0, ge=0, description="How often a model store's `CURRENT` is checked (0 = never)."
    )
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topics: TopicNames = Field(default_factory=TopicNames)
    limits: ProfileLimits = Field(default_factory=ProfileLimits)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    consumer: ConsumerConfig = Field(default_factory=ConsumerConfig)
    rocksdb: RocksDBConfig = Field(default_factory=RocksDBConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    data_privacy: DataPrivacyConfig = Field(default_factory=DataPrivacyConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    bundles: BundleConfig = Field(default_factory=BundleConfig)
    store: str = Field(
        "rocksdb://",
        description="Faust table store URL (tests: memory://).",
        json_schema_extra=_INTERNAL,
    )
    changelog_linger_ms: int = Field(
        5, ge=0, description="Linger of Faust's own producer.", json_schema_extra=_INTERNAL
    )
