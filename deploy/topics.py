"""Topic provisioning for a configured deployment."""

from __future__ import annotations

from typing import Any

from deploy.settings import Settings
from streams.topics import TopicSpec, required_topics

__all__ = [
    "create_topics",
    "create_topics_via_admin",
    "describe_topics",
    "describe_topics_via_admin",
    "topic_specs",
]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the configured worker needs."""
    return required_topics(
        settings.stream.app_id,
        settings.stream.topics,
        settings.stream.partitions,
        settings.stream.replication_factor,
        retention_ms=settings.retention_hours * 3600 * 1000,
    )


def create_topics(settings: Settings) -> list[str]:
    """Create missing topics on the configured cluster; returns the created names."""
    return create_topics_via_admin(settings.client_config(), topic_specs(settings))


def describe_topics(settings: Settings) -> dict[str, tuple[int | None, int]]:
    """recstream topic -> (partitions on the cluster or None, partitions wanted)."""
    have = describe_topics_via_admin(settings.client_config())
    return {s.name: (have.get(s.name), s.partitions) for s in topic_specs(settings)}


def create_topics_via_admin(
    client_config: dict[str, Any], specs: list[TopicSpec], timeout_s: float = 30.0
) -> list[str]:
    """Create topics with the Kafka Admin API; existing topics are left as they are.

    Returns:
        Names of the topics that were created now.

    Raises:
        RuntimeError: if the cluster refuses a topic for another reason than
            "already exists", or an existing topic has another partition count.
    """
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(client_config)
    existing = admin.list_topics(timeout=timeout_s).topics
    created, to_create = [], []
    for spec in specs:
        meta = existing.get(spec.name)
        if meta is not None and meta.error is None:
            if len(meta.partitions) != spec.partitions:
                raise RuntimeError(
                    f"topic {spec.name!r} has {len(meta.partitions)} partitions, "
                    f"recstream is configured for {spec.partitions}; "
                    "co-partitioning needs equal counts"
                )
            continue
        to_create.append(
            NewTopic(spec.name, spec.partitions, spec.replication_factor, config=spec.config)
        )
    if to_create:
        futures = admin.create_topics(to_create, operation_timeout=timeout_s)
        for name, fut in futures.items():
            try:
                fut.result(timeout=timeout_s)
                created.append(name)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RuntimeError(f"creating topic {name!r}: {exc}") from exc
    return created


def describe_topics_via_admin(
    client_config: dict[str, Any], timeout_s: float = 10.0
) -> dict[str, int]:
    """Topic name -> partition count, for every topic the cluster lists."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(client_config).list_topics(timeout=timeout_s)
    return {name: len(t.partitions) for name, t in meta.topics.items() if not name.startswith("__")}
