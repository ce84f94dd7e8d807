"""Kafka brokers recstream can run against, chosen in a fixed order.

1. an external cluster (Apache Kafka; production, or a test cluster you name);
2. a ``testcontainers`` Kafka when a Docker engine answers;
3. the embedded broker: librdkafka's mock cluster, in-process, real protocol.
"""

from __future__ import annotations

import logging

from deploy.lab.brokers.base import Broker, TopicSpec
from deploy.lab.brokers.container import ContainerBroker, docker_available
from deploy.lab.brokers.embedded import EmbeddedBroker
from deploy.lab.brokers.external import ExternalBroker

__all__ = [
    "Broker",
    "ContainerBroker",
    "EmbeddedBroker",
    "ExternalBroker",
    "TopicSpec",
    "choose_broker",
]

log = logging.getLogger("recstream.broker")


def choose_broker(external_bootstrap: str | None = None, *, try_docker: bool = True) -> Broker:
    """Pick a broker in the documented order (not started yet).

    Args:
        external_bootstrap: bootstrap servers of an existing cluster, if any.
        try_docker: whether to try testcontainers when no external cluster is named.
    """
    if external_bootstrap:
        return ExternalBroker(external_bootstrap)
    if try_docker:
        ok, why = docker_available()
        if ok:
            return ContainerBroker()
        log.info("not using testcontainers: %s; falling back to the embedded broker", why)
    return EmbeddedBroker()
