"""The broker interface: where Kafka is, and how topics get created on it."""

from __future__ import annotations

import abc
from types import TracebackType

from streams.topics import TopicSpec

__all__ = ["Broker", "TopicSpec"]


class Broker(abc.ABC):
    """A Kafka cluster recstream talks to: external, testcontainers or embedded."""

    kind: str = "abstract"

    @property
    @abc.abstractmethod
    def bootstrap_servers(self) -> str:
        """Comma-separated ``host:port`` list clients connect to."""

    @abc.abstractmethod
    def start(self) -> Broker:
        """Make the broker reachable (no-op for an external cluster)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release the broker (no-op for an external cluster)."""

    @abc.abstractmethod
    def create_topics(self, specs: list[TopicSpec]) -> None:
        """Create the topics that do not exist yet; existing ones are kept."""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
