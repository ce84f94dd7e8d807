"""Online evaluation: replay held-out histories through a running pipeline.

Each test case's history is streamed as events (its own event types and channels)
through the embedded broker and a worker process; the recommendation triggered by
the last history event is scored against the held-out next item. The same ONNX model
ranks the same histories offline (purchased items excluded, as the worker does), so
any difference between the two numbers is the pipeline's doing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from deploy.lab.brokers import EmbeddedBroker
from deploy.lab.readback import poll_batch, topic_reader
from deploy.lab.scratch import ScratchDeployment, WorkerProcess
from models.metrics import list_ranks, metrics_from_ranks
from models.scorer import OnnxScorer
from models.splits import EvalCase
from streams.client import EventProducer, event_from_dict

__all__ = ["online_vs_offline"]


def _metrics(ranked: list[list[str]], targets: list[str]) -> dict[str, float]:
    return metrics_from_ranks(list_ranks(ranked, targets), ks=(10, 20), mrr_k=None)


def online_vs_offline(
    cases: Sequence[EvalCase],
    model_dir: Path,
    workdir: Path,
    *,
    partitions: int = 8,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """HR/NDCG@{10,20} of the live pipeline and of the same model offline."""
    k = 20
    scorer = OnnxScorer.load(model_dir, provider="cpu")
    histories = [list(c.history) for c in cases]
    excludes = [{item for item, etype, _ in c.history if etype == "purchase"} for c in cases]
    offline = [[i for i, _ in r.items] for r in scorer.recommend(histories, excludes, k)]

    broker = EmbeddedBroker().start()
    try:
        dep = ScratchDeployment.create(broker, "online", partitions)
        topics, tag, client = dep.topics, dep.tag, dep.client_config
        worker = WorkerProcess(
            dep.worker_settings(model_dir, workdir / tag / "state", top_k=k),
            workdir / tag / "worker.log",
        ).start()
        worker.wait_ready(120)
        last_ids = {}
        got: dict[str, list[str]] = {}
        stop = threading.Event()
        consumer = topic_reader(client, topics.recommendations, partitions)

        def consume() -> None:
            while not stop.is_set():
                for msg in poll_batch(consumer, 1000, 0.1):
                    if not msg.error():
                        rec = orjson.loads(msg.value() or b"{}")
                        got[rec["trigger_event_id"]] = [i["item_id"] for i in rec["items"]]

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        with EventProducer(client, topics) as producer:
            for n, case in enumerate(cases):
                user = f"{case.user_id}#{n}"
                for step, (item, etype, channel) in enumerate(case.history):
                    event_id = f"{user}-{step}"
                    record: dict[str, Any] = {
                        "event_type": etype,
                        "event_id": event_id,
                        "user_id": user,
                        "item_id": item,
                        "ts": 1_700_000_000 + step,
                        "channel": channel or "web",
                    }
                    if etype == "purchase":
                        record.update(order_id=f"o-{event_id}", price=1.0)
                    producer.send(event_from_dict(record))
                    last_ids[n] = event_id
        log(f"replayed {sum(len(c.history) for c in cases)} events for {len(cases)} cases")
        deadline = time.monotonic() + 600
        while not set(last_ids.values()) <= got.keys() and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        reader.join(5)
        consumer.close()
        worker.stop()
    finally:
        broker.stop()
    online = [got.get(last_ids[n], []) for n in range(len(cases))]
    targets = [c.target for c in cases]
    return {
        "cases": len(cases),
        "answered": sum(1 for n in range(len(cases)) if last_ids[n] in got),
        "online": _metrics(online, targets),
        "offline": _metrics(offline, targets),
        "identical_lists": sum(a == b for a, b in zip(online, offline, strict=True)),
        "mean_overlap": sum(
            len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(online, offline, strict=True)
        )
        / max(1, len(cases)),
    }
