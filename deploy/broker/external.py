"""A Kafka cluster somebody else runs (Apache Kafka in production)."""

from __future__ import annotations

import logging
from typing import Any

from deploy.broker.base import Broker, TopicSpec

__all__ = ["ExternalBroker", "create_topics_via_admin", "describe_topics_via_admin"]

log = logging.getLogger("recstream.broker")


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


class ExternalBroker(Broker):
    """An already running cluster reached at ``bootstrap_servers``.

    Args:
        bootstrap_servers: comma-separated host:port list.
        client_config: extra librdkafka settings (security) for the admin client.
    """

    kind = "external"

    def __init__(self, bootstrap_servers: str, client_config: dict[str, str] | None = None) -> None:
        self._bootstrap = bootstrap_servers
        self._client_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            **(client_config or {}),
        }

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated ``host:port`` list clients connect to."""
        return self._bootstrap

    def start(self) -> ExternalBroker:
        """Nothing to start: the cluster is already running."""
        return self

    def stop(self) -> None:
        """Nothing to stop."""

    def create_topics(self, specs: list[TopicSpec]) -> None:
        """Create missing topics through the Admin API."""
        created = create_topics_via_admin(self._client_config, specs)
        if created:
            log.info("created topics: %s", ", ".join(created))

    def describe_topics(self) -> dict[str, int]:
        """Topic name -> partition count."""
        return describe_topics_via_admin(self._client_config)
