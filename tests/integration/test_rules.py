"""Item rules through a live worker: a rule produced mid-stream hides the item at once."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
from confluent_kafka import Producer

from deploy.lab.scratch import WorkerProcess
from streams.client import event_from_dict
from streams.events import Event

from .conftest import Deployment

pytestmark = pytest.mark.integration


def events(tag: str, users: int = 8, per_user: int = 3) -> list[Event]:
    return [
        event_from_dict(
            {
                "event_type": "click",
                "event_id": f"{tag}-{u}-{i}",
                "user_id": f"shopper-{u}",
                "item_id": f"sku-{(7 * u + i) % 60:05d}",
                "ts": time.time() - 60 + i,
            }
        )
        for u in range(users)
        for i in range(per_user)
    ]


def lists_for(deployment: Deployment, sent: list[Event]) -> list[list[str]]:
    wanted = {e.event_id for e in sent}
    with deployment.producer() as producer:
        for ev in sent:
            producer.send(ev)
    recs = deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: wanted <= {r["trigger_event_id"] for r in rs},
    )
    return [[i["item_id"] for i in r["items"]] for r in recs if r["trigger_event_id"] in wanted]


def hidden(worker: WorkerProcess) -> float:
    found = re.search(r'recstream_item_rules\{kind="hidden"\} (\S+)', worker.metrics_text())
    return float(found.group(1)) if found else 0.0


def test_blocked_and_unavailable_items_vanish_mid_stream_and_lists_stay_k_long(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker()
    before = lists_for(deployment, events("before"))
    top = [item for item, _ in Counter(i for lst in before for i in lst).most_common(2)]
    assert len(top) == 2
    producer = Producer(deployment.client_config)
    rules = deployment.topics.item_rules
    producer.produce(rules, key=top[0].encode(), value=b'{"blocked": true}')
    producer.produce(rules, key=top[1].encode(), value=b'{"available": false}')
    producer.produce(rules, key=b"sku-x", value=b"{not a rule")
    assert producer.flush(10) == 0

    # Applied from the first batch scored after the worker read them.
    deadline = time.monotonic() + 30
    while hidden(worker) < 2:
        assert time.monotonic() < deadline, "the rules were not read"
        time.sleep(0.1)
    after = lists_for(deployment, events("after"))
    assert after and all(len(lst) == 20 for lst in after)
    assert not {i for lst in after for i in lst} & set(top)
    dead = deployment.read_json(deployment.topics.dead_letter, lambda rs: len(rs) >= 1)
    assert [(d["topic"], d["reason_code"]) for d in dead] == [(rules, "invalid_json")]

    # A tombstone deletes a rule; a restarted worker reads them all before it is ready.
    producer.produce(rules, key=top[1].encode(), value=None)
    assert producer.flush(10) == 0
    deadline = time.monotonic() + 30
    while hidden(worker) != 1:
        assert time.monotonic() < deadline, "the tombstone was not read"
        time.sleep(0.1)
    assert worker.stop() == 0
    restarted = deployment.start_worker()
    assert hidden(restarted) == 1
    again = lists_for(deployment, events("again"))
    assert not {i for lst in again for i in lst} & {top[0]}
