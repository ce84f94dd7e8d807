"""The pipeline against Apache Kafka in Docker (testcontainers, KRaft).

Runs wherever a Docker engine answers; elsewhere it skips and says why. The rest
of the suite uses the same code against whichever broker `choose_broker` picked.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.lab.brokers import ContainerBroker
from deploy.lab.brokers.container import docker_available
from models.synthetic import SyntheticShop
from streams.client import event_from_dict
from streams.topics import TopicNames, required_topics

from .conftest import PARTITIONS, Deployment

pytestmark = [pytest.mark.integration, pytest.mark.docker]

_DOCKER_OK, _WHY = docker_available()


@pytest.fixture(scope="module")
def kafka_container() -> Iterator[ContainerBroker]:
    if not _DOCKER_OK:
        pytest.skip(f"testcontainers Kafka needs a Docker engine: {_WHY}")
    broker = ContainerBroker().start()
    yield broker
    broker.stop()


def test_pipeline_on_testcontainers_kafka(
    kafka_container: ContainerBroker, model_dir: Path, tmp_path: Path, shop: SyntheticShop
) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = TopicNames(
        **{field: f"{name}-{tag}" for field, name in TopicNames().model_dump().items()}
    )
    app_id = f"recstream-tc-{tag}"
    kafka_container.create_topics(required_topics(app_id, topics, PARTITIONS))
    dep = Deployment(kafka_container, app_id, topics, model_dir, tmp_path)
    try:
        dep.start_worker()
        events = [event_from_dict(dataclasses.asdict(e)) for e in shop.events[:100]]
        with dep.producer() as producer:
            for ev in events:
                producer.send(ev)
        recs = dep.read_json(
            topics.recommendations,
            lambda rs: len({r["trigger_event_id"] for r in rs}) >= len(events),
            timeout_s=120,
        )
        assert {r["trigger_event_id"] for r in recs} == {e.event_id for e in events}
    finally:
        for worker in dep.workers:
            worker.stop()
