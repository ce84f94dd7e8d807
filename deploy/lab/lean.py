"""A lean reference loop for ``recstream bench e2e --variants lean``: NOT a product.

What a Python pipeline costs with nothing durable in it, beside recstream's worker
on the same cores, model and scorer: librdkafka ``consume`` in batches of up to 256,
orjson decode (no validation), an in-memory dict profile (no RocksDB, no changelog,
no dedup, no acks: it forgets everything on exit), the same ``OnnxScorer.recommend``
on the batch, librdkafka produce of the same list message fields. An upper bound for
the worker's throughput, to read its ratio against (issue #19), never a
configuration to run.

Run as ``python -m deploy.lab.lean BOOTSTRAP MODEL_DIR OUTPUT_TOPIC INPUT_TOPIC...``;
it prints ``ready`` once the model is loaded and warmed, and runs until killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from models.scorer import OnnxScorer

__all__ = ["main"]

#: Interactions kept per user, as the worker's default ``RECSTREAM_HISTORY_LEN``.
HISTORY = 50
TOP_K = 20


def main(argv: list[str]) -> None:
    """Consume, fold, score and produce until killed; see the module docstring."""
    bootstrap, model_dir, out_topic, *inputs = argv
    scorer = OnnxScorer.load(Path(model_dir), intra_op_threads=1)
    scorer.warmup((1, 8, 64, 256))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "recstream-lean-reference",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe(inputs)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    # user -> (recent (item, type, channel), purchased items)
    profiles: dict[str, tuple[list[tuple[str, str, str]], set[str]]] = {}
    print("ready", flush=True)
    while True:
        messages = consumer.consume(256, 0.005)
        if not messages:
            producer.poll(0)
            continue
        histories: list[list[tuple[str, str, str]]] = []
        excludes: list[frozenset[str]] = []
        decoded: list[dict[str, Any]] = []
        for msg in messages:
            if msg.error():
                continue
            try:
                ev = orjson.loads(msg.value() or b"")
                user, item = ev["user_id"], ev["item_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # no dead letters here: the reference only measures
            etype = ev.get("type", "click")
            recent, bought = profiles.setdefault(user, ([], set()))
            recent.append((item, etype, ev.get("channel", "web")))
            if len(recent) > HISTORY:
                del recent[0]
            if etype == "purchase":
                bought.add(item)
            histories.append(list(recent))
            excludes.append(frozenset(bought))
            decoded.append(ev)
        if not decoded:
            continue
        for ev, rec in zip(decoded, scorer.recommend(histories, excludes, TOP_K), strict=True):
            producer.produce(
                out_topic,
                orjson.dumps(
                    {
                        "user_id": ev["user_id"],
                        "items": [{"item_id": i, "score": s} for i, s in rec.items],
                        "model_version": scorer.model_version,
                        "strategy": rec.strategy,
                        "trigger_event_id": ev["event_id"],
                        "event_ts": ev.get("ts"),
                        "produced_ts": time.time(),
                    }
                ),
                ev["user_id"].encode(),
            )
        producer.poll(0)


if __name__ == "__main__":
    main(sys.argv[1:])
