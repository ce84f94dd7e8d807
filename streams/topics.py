"""Topic names and the full list of topics a deployment needs.

The topics recstream reads or writes are keyed by ``user_id`` and share one
partition count, so a user's events, searches, profile (table changelog) and
recommendations always live in the same partition number. The exceptions are keyed
by item: the compacted ``item-rules``, ``items`` (the catalog) and ``bundles``, which
every worker reads whole, and ``co-purchases`` with the bundle counts' changelog,
co-partitioned with each other by item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from streams.events import EventType

__all__ = [
    "BUNDLE_COUNTS_TABLE",
    "PROFILES_TABLE",
    "TopicNames",
    "TopicSpec",
    "changelog_topic",
    "required_topics",
]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create.

    Attributes:
        name: topic name.
        partitions: partition count.
        replication_factor: copies of each partition (capped by cluster size).
        config: topic-level configs, e.g. ``{"cleanup.policy": "compact"}``.
    """

    name: str
    partitions: int
    replication_factor: int = 1
    config: dict[str, str] = field(default_factory=dict)


class TopicNames(BaseModel):
    """Names of the topics the pipeline uses (a group of settings: ``RECSTREAM_TOPIC_*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    env_prefix: ClassVar[str] = "topic_"

    clicks: str = Field("clicks", min_length=1, description="Input topic for click events.")
    browses: str = Field("browses", min_length=1, description="Input topic for browse events.")
    purchases: str = Field(
        "purchases", min_length=1, description="Input topic for purchase events."
    )
    recommendations: str = Field(
        "recommendations", min_length=1, description="Output topic: one list per event."
    )
    recommendations_latest: str = Field(
        "recommendations-latest",
        min_length=1,
        description="Compacted output topic: each user's latest list (key = user).",
    )
    searches: str = Field(
        "searches",
        min_length=1,
        description="Input topic for search events (key = user; a query, no item).",
    )
    items: str = Field(
        "items",
        min_length=1,
        description="Compacted input: the catalog, title, description, attributes, price, "
        "availability per item (key = item id; every worker reads all of it).",
    )
    co_purchases: str = Field(
        "co-purchases",
        min_length=1,
        description="Internal: pairs of items bought together (key = anchor item), from "
        "which the bundle counts are kept.",
    )
    bundles: str = Field(
        "bundles",
        min_length=1,
        description="Compacted: each item's top co-purchased items (key = item id; every "
        "worker reads all of it).",
    )
    dead_letter: str = Field(
        "events-dlq", min_length=1, description="Dead-letter topic for bad input."
    )
    item_rules: str = Field(
        "item-rules",
        min_length=1,
        description="Compacted input: availability, blocklist and category per item "
        "(key = item id; every worker reads all of it).",
    )
    user_erasure: str = Field(
        "user-erasure",
        min_length=1,
        description="Control topic: erasure requests (key = user; `recstream forget`).",
    )
    erasure_audit: str = Field(
        "user-erasure-audit",
        min_length=1,
        description="Audit of erasures done (key = pseudonym; kept forever).",
    )

    def inputs(self) -> dict[str, EventType]:
        """Input topic name -> the event type it carries."""
        return {
            self.clicks: EventType.CLICK,
            self.browses: EventType.BROWSE,
            self.purchases: EventType.PURCHASE,
        }

    def consumed(self) -> tuple[str, ...]:
        """Topics the worker group consumes whose lag means work waiting: the
        interaction inputs, searches and co-purchases (the autoscaler's triggers)."""
        return (*self.inputs(), self.searches, self.co_purchases)

    def for_type(self, event_type: EventType) -> str:
        """The input topic for an event type."""
        return {v: k for k, v in self.inputs().items()}[event_type]


PROFILES_TABLE = "profiles"
#: Per-item decayed co-purchase counts (key = anchor item id).
BUNDLE_COUNTS_TABLE = "bundle-counts"


def changelog_topic(app_id: str, table: str = PROFILES_TABLE) -> str:
    """Name Faust gives a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


def required_topics(
    app_id: str,
    names: TopicNames,
    partitions: int,
    replication_factor: int = 1,
    *,
    retention_ms: int = 7 * 24 * 3600 * 1000,
) -> list[TopicSpec]:
    """Every topic a worker needs, with matching partition counts.

    Input (searches and co-purchases included), erasure request, output and
    dead-letter topics are time-retained, the erasure audit is kept forever; the
    table changelogs, ``recommendations-latest`` and the per-item topics (rules,
    catalog, bundles) are compacted (the latest value per key, until a tombstone
    deletes it).
    """
    retained = {"cleanup.policy": "delete", "retention.ms": str(retention_ms)}
    specs = [
        TopicSpec(name, partitions, replication_factor, dict(retained))
        for name in (
            *names.inputs(),
            names.searches,
            names.user_erasure,
            names.recommendations,
            names.dead_letter,
            names.co_purchases,
        )
    ]
    # The audit of erasures holds pseudonyms and times only, and is kept forever.
    specs.append(
        TopicSpec(
            names.erasure_audit,
            partitions,
            replication_factor,
            {"cleanup.policy": "delete", "retention.ms": "-1"},
        )
    )
    specs.extend(
        TopicSpec(name, partitions, replication_factor, {"cleanup.policy": "compact"})
        for name in (
            changelog_topic(app_id),
            changelog_topic(app_id, BUNDLE_COUNTS_TABLE),
            names.recommendations_latest,
            names.item_rules,
            names.items,
            names.bundles,
        )
    )
    return specs
