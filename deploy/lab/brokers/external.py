"""A Kafka cluster somebody else runs (Apache Kafka in production)."""

from __future__ import annotations

import logging
from typing import Any

from deploy.lab.brokers.base import Broker, TopicSpec
from deploy.topics import create_topics_via_admin, describe_topics_via_admin

__all__ = ["ExternalBroker"]

log = logging.getLogger("recstream.broker")


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
