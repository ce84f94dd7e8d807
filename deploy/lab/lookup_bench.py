"""Lookup API latency: ``GET /users/{id}/recommendations`` against two live workers.

Two workers share the partitions; every request goes to the first one, so about half
of them are answered from its own RocksDB (``local``) and half are forwarded to the
other worker that owns the user's partition (``forwarded``). One keep-alive HTTP
connection, one request at a time: the latency of one page render's lookup.
"""

from __future__ import annotations

import http.client
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deploy.lab.brokers import Broker
from deploy.lab.readback import read_topic
from deploy.lab.scratch import ScratchDeployment, WorkerProcess
from streams.api import user_partition
from streams.client import EventProducer, event_from_dict

__all__ = ["lookup_latency"]


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}
    arr = np.asarray(values) * 1000.0
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "n": len(values),
    }


def _assigned(worker: WorkerProcess, topic: str) -> set[int]:
    """Partitions of ``topic`` the worker consumes (its consumer-lag gauge's labels)."""
    pattern = re.compile(
        r'recstream_consumer_lag_records\{partition="(\d+)",topic="' + re.escape(topic) + '"'
    )
    return {int(p) for p in pattern.findall(worker.metrics_text())}


def _start(worker: WorkerProcess, attempts: int = 3) -> None:
    """Start a worker; restart it if it never gets ready.

    On a loaded machine the embedded broker (librdkafka's mock cluster) sometimes
    answers a group's SyncGroup with INVALID_REQUEST, which aiokafka treats as fatal
    and the worker never gets ready; a restart rejoins cleanly.
    """
    for attempt in range(attempts):
        try:
            worker.start().wait_ready(90)
            return
        except (TimeoutError, RuntimeError):
            worker.kill()
            if attempt == attempts - 1:
                raise


def lookup_latency(
    broker: Broker,
    model_dir: Path,
    workdir: Path,
    *,
    users: int = 500,
    requests: int = 5000,
    partitions: int = 4,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Measure lookup latency through two workers; returns percentiles in ms.

    Returns:
        ``{"all": {...}, "local": {...}, "forwarded": {...}, "errors": n, ...}`` with
        ``p50``/``p99`` in milliseconds and ``n`` requests each.
    """
    dep = ScratchDeployment.create(broker, "lookup", partitions)
    token = secrets.token_hex(16)
    workers = [
        WorkerProcess(
            dep.worker_settings(
                model_dir,
                workdir / dep.tag / f"state-{i}",
                api_token=token,
                intra_op_threads=1,
                fetch_max_wait_ms=50,
            ),
            workdir / dep.tag / f"worker-{i}.log",
        )
        for i in range(2)
    ]
    try:
        for worker in workers:
            _start(worker)
        ids = [f"lookup-user-{u}" for u in range(users)]
        with EventProducer(dep.client_config, dep.topics) as producer:
            for u, user in enumerate(ids):
                producer.send(
                    event_from_dict(
                        {
                            "event_type": "click",
                            "event_id": f"lookup-{u}",
                            "user_id": user,
                            "item_id": f"item-{u % 50}",
                            "ts": 1_790_000_000 + u,
                        }
                    )
                )
        read_topic(
            dep.client_config,
            dep.topics.recommendations,
            partitions,
            lambda ms: len(ms) >= users,
            timeout_s=300,
        )
        for worker in workers:
            worker.wait_ready(120)
        local_parts = _assigned(workers[0], dep.topics.clicks)
        log(f"worker 0 owns partitions {sorted(local_parts)} of {partitions}")
        conn = http.client.HTTPConnection("127.0.0.1", workers[0].settings.stream.web.port)
        headers = {"Authorization": f"Bearer {token}"}
        local: list[float] = []
        forwarded: list[float] = []
        errors = 0
        for i in range(requests):
            user = ids[i % users]
            started = time.perf_counter()
            conn.request("GET", f"/users/{user}/recommendations", headers=headers)
            resp = conn.getresponse()
            resp.read()
            elapsed = time.perf_counter() - started
            if resp.status != 200:
                errors += 1
                continue
            local_user = user_partition(user, partitions) in local_parts
            (local if local_user else forwarded).append(elapsed)
        conn.close()
    finally:
        for worker in workers:
            worker.stop(timeout_s=15)
    return {
        "users": users,
        "requests": requests,
        "partitions": partitions,
        "errors": errors,
        "all": _percentiles_ms(local + forwarded),
        "local": _percentiles_ms(local),
        "forwarded": _percentiles_ms(forwarded),
    }
