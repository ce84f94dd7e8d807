"""A new model version is served without restarting the worker or losing events."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from models.store import ModelStore
from streams.client import event_from_dict

from .conftest import Deployment

pytestmark = pytest.mark.integration


def version_copy(model_dir: Path, dest: Path, version: str) -> Path:
    shutil.copytree(model_dir, dest)
    meta = json.loads((dest / "metadata.json").read_text())
    meta["model_version"] = version
    (dest / "metadata.json").write_text(json.dumps(meta))
    return dest


def test_promoting_a_version_switches_serving_without_dropping_events(
    deployment: Deployment, model_dir: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish(version_copy(model_dir, store.staging_dir(), "v1"))
    store.promote("v1")
    deployment.start_worker(model_dir=store.root, model_reload_interval_s=0.5)

    def click(i: int) -> object:
        return event_from_dict(
            {
                "event_type": "click",
                "event_id": f"hr-{i}",
                "user_id": f"u{i % 13}",
                "item_id": "sku-00003",
                "ts": 1_790_000_000 + i,
            }
        )

    events = [click(i) for i in range(600)]
    with deployment.producer() as producer:
        for i, ev in enumerate(events):
            producer.send(ev)
            if i == 200:
                producer.flush()
                store.publish(version_copy(model_dir, store.staging_dir(), "v2"))
                store.promote("v2")
            if i >= 200:
                time.sleep(0.004)  # keep events flowing across the swap
    recs = deployment.read_json(
        deployment.topics.recommendations,
        lambda rs: {e.event_id for e in events} <= {r["trigger_event_id"] for r in rs},
    )
    by_trigger = {r["trigger_event_id"]: r["model_version"] for r in recs}
    assert {e.event_id for e in events} <= set(by_trigger)
    assert by_trigger["hr-0"] == "v1"
    assert by_trigger["hr-599"] == "v2"
    versions = [by_trigger[e.event_id] for e in events]
    assert set(versions) == {"v1", "v2"}
