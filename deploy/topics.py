"""Topic provisioning for a configured deployment."""

from __future__ import annotations

from deploy.broker.external import create_topics_via_admin, describe_topics_via_admin
from deploy.settings import Settings
from streams.topics import TopicSpec, required_topics

__all__ = ["create_topics", "describe_topics", "topic_specs"]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the configured worker needs."""
    return required_topics(
        settings.app_id,
        settings.topic_names(),
        settings.partitions,
        settings.replication_factor,
        retention_ms=settings.retention_hours * 3600 * 1000,
    )


def create_topics(settings: Settings) -> list[str]:
    """Create missing topics on the configured cluster; returns the created names."""
    return create_topics_via_admin(settings.client_config(), topic_specs(settings))


def describe_topics(settings: Settings) -> dict[str, tuple[int | None, int]]:
    """recstream topic -> (partitions on the cluster or None, partitions wanted)."""
    have = describe_topics_via_admin(settings.client_config())
    return {s.name: (have.get(s.name), s.partitions) for s in topic_specs(settings)}
