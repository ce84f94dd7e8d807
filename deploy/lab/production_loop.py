"""Measurements of the production loop (``recstream bench archive|feedback``).

Archiver throughput (:func:`archive_throughput`): the three input topics of a scratch
deployment are filled with events first, then ``recstream archive`` is started as a
child process with its own archive folder and timed until every event is in the
Parquet files; its CPU seconds and peak RSS come from /proc.

Online hit rate vs offline HR@20 (:func:`feedback_vs_offline`): per-user item
sequences are replayed, all as clicks, through a live worker that remembers one list
per user (``RECSTREAM_FEEDBACK_LISTS=1``) for a window longer than the replay, so
each list is credited at most once, by the user's next event. Users advance one
event at a time in lockstep, and a user's next event is sent only after the list of
the previous one came back: the list is remembered in the profile before it is
produced, so the next event is checked against exactly that list. The worker's own
counters (``recstream_recommendation_hits_total`` / ``recstream_recommendations_total``)
then give the online hit rate; the same ONNX model ranks the same prefixes offline
(nothing excluded: there are no purchases), giving HR@20 on the same next-item cases.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from deploy.lab.bench import _proc_cpu_rss, parse_metrics
from deploy.lab.brokers import Broker
from deploy.lab.readback import poll_batch, topic_reader
from deploy.lab.scratch import (
    FAST_GROUP_SETTINGS,
    ScratchDeployment,
    WorkerProcess,
    free_port,
    lab_settings,
)
from models.scorer import OnnxScorer
from streams.client import EventProducer, event_from_dict, event_payload
from streams.events import Event

__all__ = [
    "archive_throughput",
    "feedback_vs_offline",
    "recent_shop_events",
    "user_sequences_from_shop",
]


def recent_shop_events(n: int, *, seed: int = 0, span_s: float = 3000.0) -> list[Event]:
    """``n`` synthetic-shop events (``models.synthetic``), re-timed into the last hour.

    The shop's first ``n`` events (days of simulated time) are squeezed, order kept,
    into ``span_s`` seconds ending a minute ago, never across a UTC midnight: every
    event is valid now and lands in today's folder (a production archiver sees about
    one day at a time), so parts are cut by size and age, not by day changes.
    """
    from models.synthetic import generate_shop

    n_users = max(200, n // 25)
    shop = generate_shop(n_items=1000, n_users=n_users, seed=seed)
    while len(shop.events) < n:  # ~55 events per user; grow until there are enough
        n_users *= 2
        shop = generate_shop(n_items=1000, n_users=n_users, seed=seed)
    raw = shop.events[:n]
    end = time.time() - 60.0
    midnight = end - end % 86_400
    span = min(span_s, max(1.0, end - midnight - 1.0))  # never across a UTC midnight
    first, last = raw[0].ts, raw[-1].ts
    scale = span / max(1e-9, last - first)
    out = []
    for ev in raw:
        record = {k: v for k, v in dataclasses.asdict(ev).items() if v is not None}
        record["ts"] = end - span + (ev.ts - first) * scale
        out.append(event_from_dict(record))
    return out


def _rss_peak_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, MiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


def _archived_rows(root: Path) -> tuple[int, set[str], int, int]:
    """(rows, event ids, part files, bytes) of the Parquet parts under ``root``."""
    rows, parts, size = 0, 0, 0
    ids: set[str] = set()
    for path in root.glob("day=*/part-*.parquet"):
        table = pq.read_table(path, columns=["event_id"])
        rows += table.num_rows
        ids.update(table.column("event_id").to_pylist())
        parts += 1
        size += path.stat().st_size
    return rows, ids, parts, size


def archive_throughput(
    broker: Broker,
    workdir: Path,
    events: Sequence[Event],
    *,
    partitions: int = 4,
    flush_records: int = 50_000,
    flush_interval_s: float = 0.5,
    timeout_s: float = 600.0,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Time ``recstream archive`` over ``events`` already waiting in the input topics.

    Args:
        broker: a started broker.
        workdir: the archive (``archive/``) and the archiver's log go below it.
        events: the events to archive (unique ids, valid timestamps).
        partitions: partitions of every topic.
        flush_records: ``RECSTREAM_ARCHIVE_FLUSH_RECORDS`` (the production default).
        flush_interval_s: ``RECSTREAM_ARCHIVE_FLUSH_INTERVAL_S``; short, so that the
            last parts are not held back for the production minute.
        timeout_s: give up after this long.

    Returns:
        Events/s (from the archiver's metrics endpoint answering to the last event
        on disk, and from the process start), bytes per event on disk, CPU seconds,
        peak RSS, parts, and whether every event id is in the files exactly once.
    """
    dep = ScratchDeployment.create(broker, "archive-bench", partitions)
    root = workdir / dep.tag / "archive"
    port = free_port()
    settings = lab_settings(
        kafka_bootstrap_servers=dep.bootstrap_servers,
        app_id=dep.app_id,
        partitions=partitions,
        topic_clicks=dep.topics.clicks,
        topic_browses=dep.topics.browses,
        topic_purchases=dep.topics.purchases,
        topic_recommendations=dep.topics.recommendations,
        topic_dead_letter=dep.topics.dead_letter,
        archive_dir=root,
        archive_flush_records=flush_records,
        archive_flush_interval_s=flush_interval_s,
        archive_metrics_port=port,
        log_level="INFO",
        **FAST_GROUP_SETTINGS,
    )
    with EventProducer(dep.client_config, dep.topics) as producer:
        for ev in events:
            producer.send_raw(dep.topics.for_type(ev.event_type), ev.user_id, event_payload(ev))
        if producer.flush(60):
            raise RuntimeError("the input topics could not be filled")
    input_bytes = sum(len(event_payload(ev)) for ev in events)
    log(f"{len(events)} events in the input topics ({input_bytes / len(events):.0f} B/event JSON)")

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"
    log_path = workdir / dep.tag / "archiver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}/metrics"
    expected = len(events)
    with open(log_path, "ab") as out:
        t_spawn = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "archive"], env=env, stdout=out, stderr=out
        )
    t_up: float | None = None
    cpu_up = 0.0
    archived = 0.0
    try:
        deadline = t_spawn + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"archiver exited with {proc.returncode}: see {log_path}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310
                    metrics = parse_metrics(resp.read().decode())
            except (urllib.error.URLError, OSError, TimeoutError):
                time.sleep(0.02)
                continue
            if t_up is None:
                t_up = time.monotonic()
                cpu_up = _proc_cpu_rss(proc.pid)[0]
            archived = metrics.get("recstream_archive_events_total", 0.0)
            if archived >= expected:
                break
            time.sleep(0.02)
        t_done = time.monotonic()
        cpu_done, rss_now = _proc_cpu_rss(proc.pid)
        rss_peak = _rss_peak_mb(proc.pid) or rss_now
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    rows, ids, parts, size = _archived_rows(root)
    expected_ids = {ev.event_id for ev in events}
    if t_up is None:
        t_up = t_done
    steady = max(1e-9, t_done - t_up)
    total = max(1e-9, t_done - t_spawn)
    result = {
        "events": expected,
        "partitions": partitions,
        "flush_records": flush_records,
        "flush_interval_s": flush_interval_s,
        "archived": rows,
        "all_archived_once": rows == expected and ids == expected_ids,
        "seconds": steady,
        "seconds_from_spawn": total,
        "startup_s": t_up - t_spawn,
        "events_per_s": rows / steady,
        "events_per_s_from_spawn": rows / total,
        "parts": parts,
        "bytes_on_disk": size,
        "bytes_per_event": size / max(1, rows),
        "json_bytes_per_event": input_bytes / max(1, expected),
        "cpu_s": cpu_done,
        "cpu_s_archiving": cpu_done - cpu_up,
        "cpu_us_per_event": 1e6 * (cpu_done - cpu_up) / max(1, rows),
        "rss_mb_peak": rss_peak,
        "archiver_rc": proc.returncode,
    }
    log(
        f"archived {rows}/{expected} in {steady:.2f} s after start-up "
        f"({result['events_per_s']:,.0f}/s), {result['bytes_per_event']:.1f} B/event on disk"
    )
    return result


def _dedupe_runs(items: Sequence[str]) -> list[str]:
    """Consecutive repeats collapsed (a shop's browse, click, purchase of one item)."""
    out: list[str] = []
    for item in items:
        if not out or out[-1] != item:
            out.append(item)
    return out


def feedback_vs_offline(
    sequences: Sequence[tuple[str, Sequence[str]]],
    model_dir: Path,
    workdir: Path,
    broker: Broker,
    *,
    partitions: int = 4,
    top_k: int = 20,
    history_len: int = 50,
    round_timeout_s: float = 120.0,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """The worker's online hit rate vs offline HR@``top_k`` on the same next-item cases.

    Args:
        sequences: ``(user_id, [item_id, ...])`` in order; every item becomes a click.
            Users with fewer than two items give no case and are skipped.
        model_dir: the exported model the worker serves and the offline ranking uses.
        workdir: worker state and log go below it.
        broker: a started broker.
        partitions: partitions of every topic.
        top_k: ``RECSTREAM_TOP_K`` and the K of HR@K.
        history_len: ``RECSTREAM_HISTORY_LEN``; offline histories keep the same tail.
        round_timeout_s: longest wait for one lockstep round's recommendations.

    Returns:
        ``online_hit_rate`` (the worker's hits / lists with a later event of the
        user), ``offline_hr`` (HR@K of the same model on the same cases), the raw
        counts, and ``online_lists_differ`` (cases whose online list holds other items
        than the offline one: the only way the two rates can differ).
    """
    users = [(u, list(items)) for u, items in sequences if len(items) >= 2]
    if not users:
        raise ValueError("no user with two or more items")
    n_events = sum(len(items) for _, items in users)
    cases = n_events - len(users)

    # Offline: every prefix (tail of history_len, as the profile keeps it) ranks the
    # next item; click-only histories, so nothing is excluded (no purchases).
    scorer = OnnxScorer.load(model_dir, provider="cpu")
    prefixes = [
        [(item, "click", "web") for item in items[max(0, t - history_len) : t]]
        for _, items in users
        for t in range(1, len(items))
    ]
    targets = [items[t] for _, items in users for t in range(1, len(items))]
    offline_lists: list[list[str]] = []
    for start in range(0, len(prefixes), 256):
        chunk = prefixes[start : start + 256]
        recs = scorer.recommend(chunk, [frozenset()] * len(chunk), top_k)
        offline_lists.extend([item for item, _ in r.items] for r in recs)
    offline_hits = sum(t in lst for t, lst in zip(targets, offline_lists, strict=True))

    dep = ScratchDeployment.create(broker, "feedback", partitions)
    worker = WorkerProcess(
        dep.worker_settings(
            model_dir,
            workdir / dep.tag / "state",
            top_k=top_k,
            history_len=history_len,
            feedback_lists=1,
            feedback_window_s=10 * 365 * 86_400.0,
        ),
        workdir / dep.tag / "worker.log",
    ).start()
    got: dict[str, list[str]] = {}
    stop = threading.Event()
    consumer = topic_reader(dep.client_config, dep.topics.recommendations, partitions)

    def consume() -> None:
        while not stop.is_set():
            for msg in poll_batch(consumer, 2000, 0.05):
                if not msg.error():
                    rec = orjson.loads(msg.value() or b"{}")
                    got[rec["trigger_event_id"]] = [i["item_id"] for i in rec["items"]]

    reader = threading.Thread(target=consume, daemon=True)
    start_ts = time.time() - 86_400.0
    started = time.monotonic()
    try:
        worker.wait_ready(120)
        reader.start()
        longest = max(len(items) for _, items in users)
        with EventProducer(dep.client_config, dep.topics) as producer:
            for pos in range(longest):
                ids = []
                for user, items in users:
                    if pos >= len(items):
                        continue
                    event_id = f"{user}-{pos}"
                    ids.append(event_id)
                    producer.send(
                        event_from_dict(
                            {
                                "event_type": "click",
                                "event_id": event_id,
                                "user_id": user,
                                "item_id": items[pos],
                                "ts": start_ts + pos,
                                "channel": "web",
                            }
                        )
                    )
                producer.flush(30)
                deadline = time.monotonic() + round_timeout_s
                while any(i not in got for i in ids):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"round {pos}: lists missing:\n{worker.log_tail()}")
                    time.sleep(0.01)
        seconds = time.monotonic() - started
        # The counters are published once per delivered batch; the last round's batch
        # (and the hits its events found) is delivered by now.
        metrics = parse_metrics(worker.metrics_text())
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(5)
        consumer.close()
        worker.stop()

    hits = sum(
        v for k, v in metrics.items() if k.startswith("recstream_recommendation_hits_total{")
    )
    lists = sum(v for k, v in metrics.items() if k.startswith("recstream_recommendations_total{"))
    online_lists = [got[f"{user}-{t - 1}"] for user, items in users for t in range(1, len(items))]
    topic_hits = sum(t in lst for t, lst in zip(targets, online_lists, strict=True))
    differ = sum(set(a) != set(b) for a, b in zip(online_lists, offline_lists, strict=True))
    online_rate = hits / max(1, cases)
    offline_rate = offline_hits / max(1, cases)
    result = {
        "users": len(users),
        "events": n_events,
        "cases": cases,
        "top_k": top_k,
        "lists": lists,
        "online_hits": hits,
        "online_hit_rate": online_rate,
        "offline_hits": offline_hits,
        "offline_hr": offline_rate,
        "difference": online_rate - offline_rate,
        "hits_in_received_lists": topic_hits,
        "online_lists_differ": differ,
        "identical_lists": sum(a == b for a, b in zip(online_lists, offline_lists, strict=True)),
        "popular_fallback_lists": metrics.get(
            'recstream_recommendations_produced_total{strategy="popular"}', 0.0
        ),
        "seconds": seconds,
        "model_dir": str(model_dir),
    }
    log(
        f"{cases} cases: online hit rate {online_rate:.4f} ({hits:.0f}), offline HR@{top_k} "
        f"{offline_rate:.4f} ({offline_hits}); {differ} lists differ in membership"
    )
    return result


def user_sequences_from_shop(
    n_users: int, *, seed: int = 0, max_items: int = 20
) -> list[tuple[str, list[str]]]:
    """Per-user item sequences of a synthetic shop (repeats of one item collapsed),
    the last ``max_items`` of each user."""
    from models.synthetic import generate_shop

    shop = generate_shop(n_items=1000, n_users=n_users, seed=seed)
    per_user: dict[str, list[str]] = {}
    for ev in shop.events:
        per_user.setdefault(ev.user_id, []).append(ev.item_id)
    return [(u, _dedupe_runs(items)[-max_items:]) for u, items in sorted(per_user.items())]
