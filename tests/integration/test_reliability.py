"""Nothing lost under crashes, outages and shutdowns; bad input never stops a worker."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from deploy.lab.brokers import Broker, EmbeddedBroker
from deploy.lab.chaos import crash_drill
from models.synthetic import generate_shop
from streams.client import event_from_dict
from streams.events import Event

from .conftest import Deployment

pytestmark = pytest.mark.integration


def drill_events(n: int, seed: int = 5) -> list[Event]:
    shop = generate_shop(n_items=150, n_users=1500, seed=seed)
    events = [event_from_dict(dataclasses.asdict(e)) for e in shop.events[:n]]
    assert len(events) == n
    return events


def test_sigkill_drill_loses_nothing_and_applies_nothing_twice(
    broker: Broker, model_dir: Path, tmp_path: Path
) -> None:
    events = drill_events(10_000)
    report = crash_drill(broker, model_dir, tmp_path, events, kills=4, rate=700.0, seed=7)
    assert report.kills == 4
    assert report.missing_recommendations == []
    assert report.profile_mismatches == [], f"{len(report.profile_mismatches)} profiles differ"
    assert report.recommendations >= len(events)


def test_graceful_shutdown_commits_so_a_restart_continues_without_gaps_or_repeats(
    deployment: Deployment,
) -> None:
    events = drill_events(600, seed=9)
    first, second = events[:300], events[300:]
    worker = deployment.start_worker()
    with deployment.producer() as producer:
        for ev in first:
            producer.send(ev)
    deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: {e.event_id for e in first} <= {r["trigger_event_id"] for r in rs},
    )
    assert worker.stop() == 0, worker.log_tail()

    with deployment.producer() as producer:
        for ev in second:
            producer.send(ev)
    deployment.start_worker()
    recs = deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: {e.event_id for e in events} <= {r["trigger_event_id"] for r in rs},
    )
    triggers = [r["trigger_event_id"] for r in recs]
    assert set(triggers) == {e.event_id for e in events}
    assert len(triggers) == len(events), "a committed event was processed again after SIGTERM"


def test_worker_rides_out_a_broker_outage(deployment: Deployment, broker: Broker) -> None:
    if not isinstance(broker, EmbeddedBroker):
        pytest.skip("taking the broker down needs the embedded broker's mock API")
    events = drill_events(900, seed=13)
    before, during, after = events[:300], events[300:600], events[600:]
    worker = deployment.start_worker()
    with deployment.producer() as producer:
        for ev in before:
            producer.send(ev)
    deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: {e.event_id for e in before} <= {r["trigger_event_id"] for r in rs},
    )
    producer = deployment.producer()
    broker.set_broker_down()
    try:
        for ev in during:
            producer.send(ev)  # buffered by the client until the broker is back
        time.sleep(30)
    finally:
        broker.set_broker_up()
    for ev in after:
        producer.send(ev)
    assert producer.flush(60) == 0
    recs = deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: {e.event_id for e in events} <= {r["trigger_event_id"] for r in rs},
        timeout_s=120,
    )
    assert {e.event_id for e in events} <= {r["trigger_event_id"] for r in recs}
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
