"""An A/B experiment through a real Kafka protocol: arms, labels and per-arm hits on /metrics.

Two phases keep the reference count exact whatever the arrival order: every user
first gets one list (a seed event each), and only then sends one follow-up event:
a click, browse or purchase of an item of that list (a hit if within the window),
of another item, or too late. The follow-ups cannot hit each other's lists (one per
user), so the hits per arm follow from the events and the first lists alone.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.experiment import CANDIDATE, CONTROL, assign_arm, start_experiment
from models.store import ModelStore
from models.synthetic import SyntheticShop
from streams.client import event_from_dict

from .conftest import Deployment

pytestmark = pytest.mark.integration

WINDOW_S = 3600.0


def per_arm(
    page: str,
) -> tuple[dict[tuple[str, str, str], float], dict[tuple[str, str, str, str], float]]:
    """Lists by (version, arm, experiment) and hits by (event type, version, arm, experiment)."""
    lists: dict[tuple[str, str, str], float] = {}
    hits: dict[tuple[str, str, str, str], float] = {}
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            labels = s.labels
            if s.name == "recstream_recommendations_total":
                lists[(labels["model_version"], labels["arm"], labels["experiment"])] = s.value
            elif s.name == "recstream_recommendation_hits_total" and s.value:
                key = (
                    labels["event_type"],
                    labels["model_version"],
                    labels["arm"],
                    labels["experiment"],
                )
                hits[key] = s.value
    return lists, hits


def test_two_arms_are_labelled_and_their_hits_match_a_reference_count(
    deployment: Deployment, shop: SyntheticShop, model_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    for version in ("control-v", "candidate-v"):
        staging = tmp_path / f"staging-{version}"
        shutil.copytree(model_dir, staging)
        # Two copies of one model, told apart by the version their metadata names.
        meta = json.loads((staging / "metadata.json").read_text())
        (staging / "metadata.json").write_text(json.dumps({**meta, "model_version": version}))
        store.publish(staging, version)
    store.promote("control-v")
    experiment = start_experiment(store, "candidate-v", 0.5, salt="it")
    version_of = {CONTROL: "control-v", CANDIDATE: "candidate-v"}

    seeds = {}
    for e in shop.events:
        seeds.setdefault(e.user_id, e)
        if len(seeds) == 60:
            break
    arms = {u: assign_arm(u, experiment.share, experiment.salt) for u in seeds}
    assert set(arms.values()) == {CONTROL, CANDIDATE}

    worker = deployment.start_worker(model_dir=store.root, feedback_window_s=WINDOW_S)
    with deployment.producer() as producer:
        for e in seeds.values():
            producer.send(event_from_dict(dataclasses.asdict(e)))
    first = {
        r["trigger_event_id"]: r
        for r in deployment.read_json(
            deployment.topics.recommendations, lambda rs: len(rs) >= len(seeds)
        )
    }
    by_user = {r["user_id"]: r for r in first.values()}
    for user, rec in by_user.items():
        assert rec["arm"] == arms[user], user
        assert rec["model_version"] == version_of[rec["arm"]]

    rng = random.Random(5)
    follow_ups = []
    expected: dict[tuple[str, str, str, str], float] = {}
    for n, (user, seed) in enumerate(seeds.items()):
        items = [i["item_id"] for i in by_user[user]["items"]]
        kind = rng.choice(["hit", "hit", "other item", "too late"])
        item = rng.choice(items) if kind != "other item" else "sku-not-recommended"
        delay = 60.0 if kind != "too late" else 2 * WINDOW_S
        etype = rng.choice(["click", "browse", "purchase"])
        extra: dict[str, Any] = {"order_id": f"o-{n}", "price": 5.0} if etype == "purchase" else {}
        follow_ups.append(
            event_from_dict(
                {
                    "event_id": f"follow-{n}",
                    "user_id": user,
                    "item_id": item,
                    "ts": seed.ts + delay,
                    "event_type": etype,
                    "channel": seed.channel,
                    **extra,
                }
            )
        )
        if kind == "hit" and item in items:
            key = (etype, version_of[arms[user]], arms[user], experiment.id)
            expected[key] = expected.get(key, 0) + 1
    assert sum(expected.values()) >= 10
    with deployment.producer() as producer:
        for ev in follow_ups:
            producer.send(ev)
    total = len(seeds) + len(follow_ups)
    recs = deployment.read_json(deployment.topics.recommendations, lambda rs: len(rs) >= total)
    assert all(r["arm"] == arms[r["user_id"]] for r in recs)

    lists, hits = per_arm(worker.metrics_text())
    want_lists: dict[tuple[str, str, str], float] = {}
    for r in recs:
        key = (r["model_version"], r["arm"], experiment.id)
        want_lists[key] = want_lists.get(key, 0) + 1
    assert lists == want_lists
    assert hits == expected
