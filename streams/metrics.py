"""Every Prometheus metric the worker exports, in one place.

Base units (seconds), ``_total`` counters, and no user ids in labels: label values
come from small fixed sets (event types, reason codes, strategies, model versions and
experiment arms).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

__all__ = ["Metrics", "Tally"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Tally:
    """A counter (child) fed in bulk: the hot path adds to a float, :meth:`flush` publishes.

    ``prometheus_client`` takes a lock on every ``inc()``; five of them per event were
    a few percent of a busy worker's event loop. The worker flushes its tallies once
    per delivered batch and per dead letter, so /metrics lags by at most one batch.
    """

    __slots__ = ("_child", "pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.pending = 0.0

    def add(self, amount: float = 1.0) -> None:
        """Count ``amount`` (published at the next :meth:`flush`)."""
        self.pending += amount

    def flush(self) -> None:
        """Add what was counted since the last flush to the counter."""
        if self.pending:
            self._child.inc(self.pending)
            self.pending = 0.0


class Metrics:
    """The worker's metrics, registered on one registry (a fresh one per app in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "recstream_events_consumed_total",
            "Input records consumed, by event type.",
            ["event_type"],
            registry=r,
        )
        self.events_invalid = Counter(
            "recstream_events_invalid_total",
            "Input records sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.profile_updates = Counter(
            "recstream_profile_updates_total",
            "Events folded into a profile.",
            registry=r,
        )
        self.duplicate_events = Counter(
            "recstream_duplicate_events_total",
            "Replayed events recognised by event_id and not applied again.",
            registry=r,
        )
        self.recommendations = Counter(
            "recstream_recommendations_produced_total",
            "Recommendation lists produced.",
            ["strategy"],
            registry=r,
        )
        self.recommendation_lists = Counter(
            "recstream_recommendations_total",
            "Recommendation lists produced, by model version, experiment arm and "
            "experiment id ('none' outside an experiment; the denominator of the hit rates).",
            ["model_version", "arm", "experiment"],
            registry=r,
        )
        self.recommendation_hits = Counter(
            "recstream_recommendation_hits_total",
            "Interactions with an item of a list recently recommended to the user, by "
            "event type and the list's model version, arm and experiment id; each list "
            "counts at most once per event type (RECSTREAM_FEEDBACK_WINDOW_S).",
            ["event_type", "model_version", "arm", "experiment"],
            registry=r,
        )
        self.produce_errors = Counter(
            "recstream_produce_errors_total",
            "Output records librdkafka could not deliver (their inputs stay unacked).",
            registry=r,
        )
        self.lookups = Counter(
            "recstream_lookups_total",
            "Lookup API requests, by endpoint and outcome (`local`: answered here, "
            "`forwarded`: answered by the partition's owner, else the error code).",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.lookup_seconds = Histogram(
            "recstream_lookup_seconds",
            "Time to answer a lookup API request (forwarding included).",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.item_rules = Gauge(
            "recstream_item_rules",
            "Items known from the per-item topics, by kind: `rules` (item-rules), `catalog` "
            "(items), `hidden` (hidden by either), `embedded` (catalog items with a text "
            "vector), `bundles` (items with a bundle).",
            ["kind"],
            registry=r,
        )
        self.item_rules_applied = Counter(
            "recstream_item_rules_applied_total",
            "Item-rules records applied (a rule set or deleted).",
            registry=r,
        )
        self.erasures = Counter(
            "recstream_erasures_total",
            "Users erased on request (profile, latest list).",
            registry=r,
        )
        self.profiles_expired = Counter(
            "recstream_profiles_expired_total",
            "Profiles of inactive users and old erasure markers deleted by the TTL sweep.",
            registry=r,
        )
        self.events_of_erased_users = Counter(
            "recstream_events_of_erased_users_total",
            "Events dropped because their user was erased after the event's time.",
            registry=r,
        )
        self.batch_size = Histogram(
            "recstream_inference_batch_size",
            "Requests per inference call.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "recstream_inference_seconds",
            "Wall time of one inference call (a whole batch).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_to_recommendation_seconds = Histogram(
            "recstream_event_to_recommendation_seconds",
            "From the input record's Kafka timestamp to its recommendation being produced.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Counter(
            "recstream_stage_seconds_total",
            "Worker time per pipeline stage (decode, profile, inference, produce), summed; "
            "divide by events for the mean per event.",
            ["stage"],
            registry=r,
        )
        self.model_info = Info(
            "recstream_model",
            "Model version and execution provider in use.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "recstream_consumer_lag_records",
            "Records between the consumer's position and the partition's high watermark.",
            ["topic", "partition"],
            registry=r,
        )
        self.restore_remaining = Gauge(
            "recstream_restore_remaining_records",
            "Changelog records still to replay before the profiles table is restored.",
            registry=r,
        )
        self.table_memory = Gauge(
            "recstream_table_memory_bytes",
            "RocksDB memory of the profiles table's open partitions, by kind.",
            ["kind"],
            registry=r,
        )
        self.events_unacked = Gauge(
            "recstream_events_unacked",
            "Input events consumed whose outputs are not all delivered yet (not committable).",
            registry=r,
        )
        self.oldest_unacked_age = Gauge(
            "recstream_oldest_unacked_event_age_seconds",
            "Age of the oldest input event still waiting for its outputs; it holds back "
            "its partition's committed offset.",
            registry=r,
        )
        self.ready = Gauge(
            "recstream_ready",
            "1 when the worker has restored its tables and is serving.",
            registry=r,
        )
