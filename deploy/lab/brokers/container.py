"""A throw-away Apache Kafka in Docker through ``testcontainers`` (KRaft mode)."""

from __future__ import annotations

import logging
from typing import Any

from deploy.lab.brokers.base import Broker, TopicSpec
from deploy.topics import create_topics_via_admin

__all__ = ["ContainerBroker", "docker_available"]

log = logging.getLogger("recstream.broker")

#: The image tests run against; KRaft, no ZooKeeper.
DEFAULT_IMAGE = "confluentinc/cp-kafka:7.6.1"


def docker_available() -> tuple[bool, str]:
    """Whether a Docker engine answers, and why not if it does not."""
    try:
        import docker
    except ImportError:
        return False, "the docker Python package is not installed"
    try:
        client = docker.from_env(timeout=3)  # type: ignore[attr-defined]
        client.ping()
    except Exception as exc:
        return False, f"no Docker engine answers ({type(exc).__name__}: {exc})"
    return True, "docker engine answers"


class ContainerBroker(Broker):
    """Kafka started with ``testcontainers.kafka.KafkaContainer`` in KRaft mode."""

    kind = "testcontainers"

    def __init__(self, image: str = DEFAULT_IMAGE) -> None:
        self._image = image
        self._container: Any = None
        self._bootstrap = ""

    @property
    def bootstrap_servers(self) -> str:
        """Comma-separated ``host:port`` list clients connect to."""
        if not self._bootstrap:
            raise RuntimeError("container broker is not started")
        return self._bootstrap

    def start(self) -> ContainerBroker:
        """Start the container and wait until Kafka accepts connections."""
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.14 kept it at the top level
            from testcontainers.kafka import KafkaContainer

        container = KafkaContainer(self._image).with_kraft()
        container.start()
        self._container = container
        self._bootstrap = container.get_bootstrap_server()
        log.info("testcontainers Kafka (%s) on %s", self._image, self._bootstrap)
        return self

    def stop(self) -> None:
        """Stop and remove the container."""
        if self._container is not None:
            self._container.stop()
            self._container = None
            self._bootstrap = ""

    def create_topics(self, specs: list[TopicSpec]) -> None:
        """Create missing topics through the Admin API."""
        create_topics_via_admin({"bootstrap.servers": self.bootstrap_servers}, specs)
