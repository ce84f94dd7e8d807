"""A real Kafka protocol for integration tests, chosen in a fixed order.

1. ``RECSTREAM_TEST_KAFKA_BOOTSTRAP``: an external cluster (e.g. Apache Kafka you run);
2. a testcontainers Kafka (KRaft) when a Docker engine answers;
3. the embedded broker (librdkafka's mock cluster), which always works here.

Each test gets its own uuid-named topics and consumer group, so tests never see
each other's records even on a shared external cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from deploy.lab.brokers import Broker, choose_broker
from deploy.lab.readback import read_topic
from deploy.lab.scratch import ScratchDeployment, WorkerProcess
from streams.client import EventProducer
from streams.topics import TopicNames

PARTITIONS = 2

#: aiokafka's log line for the mock cluster's spurious SyncGroup error.
MOCK_SYNC_GROUP_ERROR = "Unexpected error from SyncGroup: [Error 42] InvalidRequestError"


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    chosen = choose_broker(os.environ.get("RECSTREAM_TEST_KAFKA_BOOTSTRAP") or None)
    chosen.start()
    yield chosen
    chosen.stop()


@dataclass
class Deployment:
    """One isolated recstream deployment on the shared broker."""

    broker: Broker
    scratch: ScratchDeployment
    model_dir: Path
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return self.scratch.app_id

    @property
    def topics(self) -> TopicNames:
        return self.scratch.topics

    @property
    def client_config(self) -> dict[str, str]:
        return self.scratch.client_config

    def worker_settings(self, **overrides: Any) -> dict[str, Any]:
        settings = {"intra_op_threads": 1, "fetch_max_wait_ms": 50, "log_level": "INFO"}
        settings.update(overrides)
        model_dir = settings.pop("model_dir", self.model_dir)
        state_dir = settings.pop("state_dir", self.workdir / "state")
        return self.scratch.worker_settings(model_dir, state_dir, **settings)

    def start_worker(self, **overrides: Any) -> WorkerProcess:
        n = len(self.workers)
        worker = WorkerProcess(self.worker_settings(**overrides), self.workdir / f"worker-{n}.log")
        self.workers.append(worker)
        try:
            worker.start().wait_ready(90)
        except TimeoutError:
            # On a loaded machine the embedded broker (librdkafka's mock cluster) can
            # answer a joining member's SyncGroup with INVALID_REQUEST, which aiokafka
            # treats as fatal: that worker never gets ready. Not what a test is about;
            # a restart rejoins cleanly.
            if MOCK_SYNC_GROUP_ERROR not in worker.log_tail(200):
                raise
            worker.kill()
            worker.start().wait_ready(90)
        return worker

    def producer(self) -> EventProducer:
        return EventProducer(self.client_config, self.topics)

    def read_topic(
        self, topic: str, until: Callable[[list[Any]], bool], timeout_s: float = 60.0
    ) -> list[Any]:
        """All records of ``topic`` from the beginning, until ``until(records)`` holds."""
        return read_topic(self.client_config, topic, PARTITIONS, until, timeout_s)

    def read_json(
        self, topic: str, until: Callable[[list[Any]], bool], timeout_s: float = 60.0
    ) -> list[dict[str, Any]]:
        """The JSON values of ``topic`` (tombstones left out) once ``until`` holds."""
        records: list[dict[str, Any]] = []

        def done(msgs: list[Any]) -> bool:
            records[:] = [orjson.loads(m.value()) for m in msgs if m.value() is not None]
            return until(records)

        self.read_topic(topic, done, timeout_s)
        return records


@pytest.fixture
def deployment(broker: Broker, model_dir: Path, tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(
        broker, ScratchDeployment.create(broker, "test", PARTITIONS), model_dir, tmp_path
    )
    yield dep
    for worker in dep.workers:
        worker.stop(timeout_s=15)
