"""Issue #17 through a live worker: v2 lists, searches, the catalog, bundles, bad records.

The worker is the production one (``recstream worker`` in a child process, the tiny
exported model) on the embedded broker.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import jsonschema
import orjson
import pytest

from deploy.lab.scratch import WorkerProcess
from streams.catalog import CatalogItem
from streams.client import event_from_dict
from streams.events import SearchEvent
from streams.schema_files import SCHEMA_DIR

from .conftest import Deployment

pytestmark = pytest.mark.integration

V2 = json.loads((SCHEMA_DIR / "recommendation.v2.json").read_text())


def gauge(worker: WorkerProcess, kind: str) -> float:
    found = re.search(rf'recstream_item_rules\{{kind="{kind}"\}} (\S+)', worker.metrics_text())
    return float(found.group(1)) if found else 0.0


def wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def event(kind: str, event_id: str, user: str, item: str, ts: float, **extra: Any) -> Any:
    return event_from_dict(
        {"event_type": kind, "event_id": event_id, "user_id": user, "item_id": item, "ts": ts}
        | extra
    )


def lists(deployment: Deployment, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """The lists triggered by the events ``wanted``, by trigger event id."""
    recs = deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: wanted <= {r["trigger_event_id"] for r in rs},
    )
    for rec in recs:
        jsonschema.validate(rec, V2)
        assert rec["schema_version"] == 2
    return {r["trigger_event_id"]: r for r in recs if r["trigger_event_id"] in wanted}


def test_searches_catalog_bundles_and_bad_records_through_a_live_worker(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker()
    topics = deployment.topics
    now = time.time()
    with deployment.producer() as producer:
        producer.send(event("click", "c1", "shopper-1", "sku-00001", now - 60))
        producer.flush(10)
    [before] = lists(deployment, {"c1"}).values()
    ranked = [i["item_id"] for i in before["items"]]
    top, partner = ranked[0], ranked[1]

    # The catalog makes the top item unavailable; a bundle is published for sku-00001
    # holding a listed item, the now-hidden one and one more.
    with deployment.producer() as producer:
        producer.send_item(top, CatalogItem(title="Gone for now", available=False))
        producer.send_item("sku-new", CatalogItem(title="Brand new gloss", category="lips"))
        producer.send_raw(topics.items, b"sku-bad", b'{"title": ""}')
        producer.send_raw(
            topics.bundles,
            b"sku-00001",
            orjson.dumps(
                {
                    "anchor_item_id": "sku-00001",
                    "items": [
                        {"item_id": top, "score": 9.0},
                        {"item_id": partner, "score": 4.0},
                        {"item_id": "sku-00099", "score": 2.0},
                    ],
                    "updated_ts": now,
                }
            ),
        )
        producer.flush(10)
    wait_for(lambda: gauge(worker, "hidden") >= 1, "the catalog was not read")
    wait_for(lambda: gauge(worker, "bundles") >= 1, "the bundles were not read")
    assert gauge(worker, "catalog") == 2  # the bad record is not an item

    with deployment.producer() as producer:
        producer.send(event("click", "c2", "shopper-1", "sku-00001", now - 30))
        producer.send_search(
            SearchEvent(event_id="s1", user_id="shopper-1", query="red lipstick", ts=now - 20)
        )
        producer.send_raw(
            topics.searches,
            b"shopper-1",
            orjson.dumps({"event_id": "s2", "user_id": "shopper-1", "query": "  ", "ts": now}),
        )
        producer.flush(10)
    after = lists(deployment, {"c2"})["c2"]
    assert top not in [i["item_id"] for i in after["items"]]  # hidden by the catalog
    assert len(after["items"]) == 20  # masked before the top-K
    assert after["bundle"] == {
        "anchor_item_id": "sku-00001",
        "items": [{"item_id": partner, "score": 4.0}, {"item_id": "sku-00099", "score": 2.0}],
    }
    reasons = {i["item_id"]: i.get("reason") for i in after["items"]}
    assert reasons[partner] == {"code": "bought_together", "item_id": "sku-00001"}

    dead = deployment.read_json(topics.dead_letter, lambda rs: len(rs) >= 2)
    # Without an encoder a search only updates the profile: acked, no list of its own
    # (s2, after it on its partition, was dead-lettered, so s1 was handled).
    recs = deployment.read_json(
        topics.recommendations, lambda rs: {"c1", "c2"} <= {r["trigger_event_id"] for r in rs}
    )
    assert "s1" not in {r["trigger_event_id"] for r in recs}
    by_topic = {d["topic"]: d for d in dead}
    assert by_topic[topics.items]["reason_code"] == "schema_violation"
    assert "title" in by_topic[topics.items]["reason"]
    assert by_topic[topics.searches]["reason_code"] == "schema_violation"
    assert by_topic[topics.searches]["reason"].startswith("query:")
    assert worker.stop() == 0


def test_purchases_of_one_order_become_a_bundle_on_later_lists(deployment: Deployment) -> None:
    worker = deployment.start_worker()
    topics = deployment.topics
    now = time.time()
    with deployment.producer() as producer:
        for u in range(3):  # three shoppers buy sku-00010 and sku-00011 in one order
            for n, item in enumerate(("sku-00010", "sku-00011")):
                producer.send(
                    event(
                        "purchase",
                        f"p{u}-{n}",
                        f"buyer-{u}",
                        item,
                        now - 100 + n,
                        order_id=f"o{u}",
                        price=5.0,
                    )
                )
        producer.flush(10)
    bundles = deployment.read_json(
        topics.bundles,
        lambda rs: any(
            r["anchor_item_id"] == "sku-00010" and r["items"][0]["score"] >= 3 for r in rs
        ),
    )
    latest = [r for r in bundles if r["anchor_item_id"] == "sku-00010"][-1]
    assert latest["items"][0]["item_id"] == "sku-00011"
    # Each purchase's pairs were counted once: three orders, weight about 3.
    assert latest["items"][0]["score"] == pytest.approx(3.0, rel=0.01)
    wait_for(lambda: gauge(worker, "bundles") >= 2, "the bundles were not read back")
    with deployment.producer() as producer:
        producer.send(event("click", "c9", "browser-1", "sku-00010", now))
        producer.flush(10)
    [listed] = lists(deployment, {"c9"}).values()
    assert listed["bundle"]["anchor_item_id"] == "sku-00010"
    assert listed["bundle"]["items"][0]["item_id"] == "sku-00011"
    assert worker.stop() == 0
