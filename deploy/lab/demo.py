"""``recstream demo``: the whole product on one machine in a few minutes.

1. generate a synthetic shop (catalog with categories and titles, shoppers with
   tastes, a browse -> click -> purchase funnel);
2. train the sequential transformer on the first 80 % of the event log and
   export it to ONNX;
3. start the embedded Kafka broker and a worker process;
4. stream the remaining events (plus a few malformed ones) at a fixed rate and
   show recommendations arriving live;
5. print a summary and stop everything cleanly.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table

from deploy.lab.brokers import EmbeddedBroker
from deploy.lab.scratch import FAST_GROUP_SETTINGS, WorkerProcess, lab_settings
from deploy.settings import Settings
from deploy.topics import topic_specs
from streams.client import EventProducer, RecommendationReader, event_from_dict
from streams.messages import RecommendationMessage

__all__ = ["run_demo"]

MALFORMED: list[tuple[str, bytes]] = [
    ("clicks", b'{"event_id": "bad-1", "user_id": "user-0001", "item_id": '),
    (
        "purchases",
        b'{"event_id": "bad-2", "user_id": "user-0001", "item_id": "sku-00001", "ts": 1790000000}',
    ),
    ("browses", b"\xff\xfe not utf-8"),
]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@contextmanager
def _live(console: Console, renderable: RenderableType) -> Iterator[Live]:
    """A rich `Live` display that leaves the next output on a line of its own.

    On a terminal rich ends the display with a line break itself. Written to a file
    or a pipe (``make demo | tee``, a test capturing stdout) it prints the final
    render without one, so the next section's rule continued the table's bottom
    border (``└──┘──── 5. Summary ───``).
    """
    with Live(renderable, console=console, refresh_per_second=4) as view:
        yield view
    if not console.is_terminal:
        console.line()


def run_demo(
    workdir: Path = Path(".demo"),
    live_events: int = 3000,
    rate: float = 300.0,
    *,
    quick: bool = False,
) -> int:
    """Run the demo; returns the process exit code (0 when every event was answered)."""
    from models.config import TrainConfig
    from models.export import export_onnx
    from models.synthetic import generate_shop
    from models.train import train_model

    console = Console()
    started = time.monotonic()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)

    console.rule("[bold]1. A synthetic shop")
    # quick: a smaller shop and a 2-epoch model, for the end-to-end test of the demo.
    shop = generate_shop(n_items=300 if quick else 800, n_users=300 if quick else 1500, seed=7)
    cut = max(1, len(shop.events) - live_events)
    history, live = shop.events[:cut], shop.events[cut:]
    categories = sorted({item.category for item in shop.catalog})
    console.print(
        f"{len(shop.catalog)} items in {len(categories)} categories, "
        f"{len({e.user_id for e in shop.events})} shoppers, {len(shop.events)} events "
        f"({len(history)} for training, {len(live)} to stream live)"
    )

    console.rule("[bold]2. Train and export the transformer")
    t0 = time.perf_counter()
    config = TrainConfig(
        max_len=30, dim=64, n_layers=2, n_heads=2, epochs=2 if quick else 8, seed=7
    )
    trained = train_model([e.to_interaction() for e in history], config, progress=True)
    train_s = time.perf_counter() - t0
    model_dir = export_onnx(trained, workdir / "models" / "current")
    console.print(f"trained in {train_s:.1f} s, exported to {model_dir}")

    console.rule("[bold]3. Embedded Kafka broker and a worker")
    broker = EmbeddedBroker().start()
    # The demo's own settings (defaults + these; not the caller's RECSTREAM_*
    # environment), validated, and passed whole to the worker process.
    settings = lab_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        state_dir=workdir / "state",
        model_dir=model_dir,
        provider="auto",
        fetch_max_wait_ms=20,
        max_wait_ms=2.0,
        **FAST_GROUP_SETTINGS,
    )
    broker.create_topics(topic_specs(settings))
    console.print(
        f"broker on {broker.bootstrap_servers} (librdkafka {broker.version} mock cluster)"
    )
    worker = WorkerProcess(settings, workdir / "worker.log").start()
    code = 1
    try:
        worker.wait_ready(120)
        console.print(f"worker ready (log: {worker.log_path}, metrics: {worker.url}/metrics)")
        code = _stream(console, shop, live, settings, rate, worker)
    finally:
        worker.stop()
        broker.stop()
    console.print(f"demo finished in {time.monotonic() - started:.0f} s")
    return code


def _stream(
    console: Console,
    shop: Any,
    live: list[Any],
    settings: Settings,
    rate: float,
    worker: WorkerProcess,
) -> int:
    console.rule("[bold]4. Streaming events, recommendations arriving live")
    client = {"bootstrap.servers": settings.stream.kafka.bootstrap_servers}
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    received: dict[str, RecommendationMessage] = {}
    strategies: dict[str, int] = {}
    recent: dict[str, RecommendationMessage] = {}  # latest list of the last few users
    done = threading.Event()

    reader = RecommendationReader(
        client, settings.stream.topics.recommendations, from_beginning=True
    )
    reader.wait_assigned()  # so the first events' latencies are not the group join

    def consume() -> None:
        while not done.is_set():
            rec = reader.poll(0.1)
            if rec is None:
                continue
            now = time.time()
            received[rec.trigger_event_id] = rec
            strategies[rec.strategy] = strategies.get(rec.strategy, 0) + 1
            if rec.trigger_event_id in sent_at:
                latencies.append(now - sent_at[rec.trigger_event_id])
            recent.pop(rec.user_id, None)
            recent[rec.user_id] = rec
            while len(recent) > 8:
                del recent[next(iter(recent))]

    consumer_thread = threading.Thread(target=consume, daemon=True)
    consumer_thread.start()

    def render() -> Table:
        table = Table(title=f"latest recommendations ({len(received)}/{len(live)} events answered)")
        table.add_column("user")
        table.add_column("after")
        table.add_column("strategy")
        table.add_column("top 3 recommended items")
        for rec in list(recent.values())[::-1]:
            titles = []
            for item in rec.items[:3]:
                try:
                    titles.append(shop.item(item.item_id).title)
                except KeyError:
                    titles.append(item.item_id)
            table.add_row(rec.user_id, rec.trigger_event_type, rec.strategy, "; ".join(titles))
        return table

    producer = EventProducer(client, settings.stream.topics)
    spacing = max(1, len(live) // (len(MALFORMED) + 1))
    bad_at = {spacing * (j + 1): j for j in range(len(MALFORMED))}
    t_start = time.monotonic()
    with _live(console, render()) as view:
        for i, shop_event in enumerate(live):
            if rate > 0:
                delay = t_start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            event = event_from_dict(dataclasses.asdict(shop_event))
            sent_at[event.event_id] = time.time()
            producer.send(event)
            if i in bad_at:
                topic, payload = MALFORMED[bad_at[i]]
                producer.send_raw(topic, b"user-0001", payload)
            if i % 50 == 0:
                view.update(render())
        producer.flush()
        send_s = time.monotonic() - t_start
        deadline = time.monotonic() + 60
        while len(received) < len(live) and time.monotonic() < deadline:
            time.sleep(0.2)
            view.update(render())
        view.update(render())
    done.set()
    consumer_thread.join(2)
    reader.close()

    metrics = worker.metrics_text()
    invalid = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("recstream_events_invalid_total{")
    )
    provider = next(
        (
            line.split('provider="')[1].split('"')[0]
            for line in metrics.splitlines()
            if line.startswith("recstream_model_info{")
        ),
        "?",
    )
    model_version = next(iter(received.values())).model_version if received else "?"

    console.rule("[bold]5. Summary")
    summary = Table(show_header=False)
    summary.add_row(
        "events streamed", f"{len(live)} valid + {len(MALFORMED)} malformed in {send_s:.1f} s"
    )
    summary.add_row(
        "recommendation lists",
        f"{len(received)} ({', '.join(f'{k}: {v}' for k, v in sorted(strategies.items()))})",
    )
    summary.add_row(
        "dead-lettered",
        f"{invalid:.0f} (malformed events, with reasons, in {settings.stream.topics.dead_letter})",
    )
    summary.add_row(
        "event -> recommendation latency",
        f"p50 {_percentile(latencies, 50) * 1000:.0f} ms, "
        f"p99 {_percentile(latencies, 99) * 1000:.0f} ms "
        f"(producer send to consumer receive, {len(latencies)} events)",
    )
    summary.add_row("model", f"{model_version}, onnxruntime {provider}")
    console.print(summary)
    missing = len(live) - len(received)
    if missing:
        console.print(f"[red]{missing} events got no recommendation[/]")
        return 1
    console.print("[bold green]every valid event got a recommendation; bad ones are in the DLQ[/]")
    return 0
