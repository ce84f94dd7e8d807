"""The ``recstream`` command line."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from deploy.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    help="recstream: streaming recommendations for online shops (Kafka -> Faust -> ONNX).",
    no_args_is_help=True,
    add_completion=False,
)
topics_app = typer.Typer(help="Create and inspect recstream's topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
console = Console(stderr=True)


@app.command()
def worker() -> None:
    """Run a stream worker (configured by RECSTREAM_* environment variables)."""
    from deploy.worker import run_worker

    # Faust's worker parses sys.argv itself; hand it a clean one.
    sys.argv = [sys.argv[0]]
    run_worker(Settings())


@app.command()
def broker(
    partitions: Annotated[
        int | None, typer.Option(help="Partitions per topic (default: settings).")
    ] = None,
    env_file: Annotated[
        Path | None, typer.Option(help="Write RECSTREAM_KAFKA_BOOTSTRAP_SERVERS=... here.")
    ] = None,
) -> None:
    """Run the embedded Kafka broker (librdkafka mock cluster) in the foreground.

    It serves the real Kafka protocol on 127.0.0.1, creates every recstream topic
    (it has no CreateTopics API, so workers cannot create them) and prints the
    bootstrap address. Memory only: everything is gone when it stops.
    """
    from deploy.broker import EmbeddedBroker
    from deploy.topics import topic_specs

    settings = Settings()
    if partitions is not None:
        settings = settings.model_copy(update={"partitions": partitions})
    embedded = EmbeddedBroker().start()
    specs = topic_specs(settings)
    embedded.create_topics(specs)
    line = f"RECSTREAM_KAFKA_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}"
    if env_file is not None:
        env_file.write_text(line + "\n")
    console.print(
        f"[bold green]embedded Kafka broker[/] librdkafka {embedded.version} (mock cluster)"
    )
    console.print(f"topics: {', '.join(s.name for s in specs)} ({settings.partitions} partitions)")
    console.print("in memory only; Ctrl-C stops it. Point clients at it with:")
    print(f"export {line}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        embedded.stop()


@topics_app.command("create")
def topics_create() -> None:
    """Create the input, output, dead-letter and changelog topics (Admin API)."""
    from deploy.topics import create_topics

    settings = Settings()
    created = create_topics(settings)
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")


@topics_app.command("describe")
def topics_describe() -> None:
    """List the cluster's topics and check recstream's partition counts."""
    from deploy.topics import describe_topics

    for name, (have, want) in describe_topics(Settings()).items():
        status = "ok" if have == want else ("missing" if have is None else f"expected {want}")
        print(f"{name:40s} {have if have is not None else '-':>4}  {status}")


def _type_of(payload: object) -> str | None:
    if isinstance(payload, dict):
        value = payload.get("type", payload.get("event_type"))
        return value if isinstance(value, str) else None
    return None


@app.command()
def produce(
    source: Annotated[str, typer.Argument(help="JSON-lines file, or - for stdin.")] = "-",
    event_type: Annotated[
        str | None, typer.Option("--type", help="click|browse|purchase for lines without a type.")
    ] = None,
) -> None:
    """Send events (one JSON object per line) to the input topic of their type.

    Each line goes unchanged to the topic of its ``type`` field (or ``--type``),
    keyed by its ``user_id``; the worker validates it, so a bad line ends up in the
    dead-letter topic with a reason rather than being fixed silently here.
    """
    from streams.client import EventProducer
    from streams.events import EventType

    settings = Settings()
    names = settings.topic_names()
    stream = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    sent = skipped = 0
    with EventProducer(settings.client_config(), names) as producer:
        for lineno, line in enumerate(stream, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                payload = orjson.loads(line)
            except orjson.JSONDecodeError:
                payload = None
            kind = _type_of(payload) or event_type
            try:
                topic = names.for_type(EventType(kind)) if kind else None
            except ValueError:
                topic = None
            if topic is None:
                console.print(f"line {lineno}: no known event type; use --type to send it anyway")
                skipped += 1
                continue
            key = payload.get("user_id") if isinstance(payload, dict) else None
            producer.send_raw(topic, str(key) if key is not None else None, line)
            sent += 1
    if producer.errors:
        console.print(f"[red]{len(producer.errors)} deliveries failed[/]: {producer.errors[0]}")
        raise typer.Exit(1)
    console.print(f"sent {sent} events, skipped {skipped}")


@app.command()
def consume(
    user: Annotated[str | None, typer.Option(help="Only this user's lists.")] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    from_beginning: Annotated[bool, typer.Option(help="Start at the earliest offset.")] = False,
    max_messages: Annotated[int, typer.Option("--max", help="Stop after N lists (0 = never).")] = 0,
    timeout: Annotated[
        float, typer.Option(help="Stop after this many idle seconds (0 = never).")
    ] = 0.0,
) -> None:
    """Tail the recommendations topic (de-duplicated by trigger_event_id)."""
    from streams.client import RecommendationReader

    settings = Settings()
    out = Console()
    seen = 0
    last = time.monotonic()
    with RecommendationReader(
        settings.client_config(), settings.topic_recommendations, from_beginning=from_beginning
    ) as reader:
        while not max_messages or seen < max_messages:
            rec = reader.poll(0.5)
            if rec is None:
                if timeout and time.monotonic() - last > timeout:
                    break
                continue
            last = time.monotonic()
            if user and rec.user_id != user:
                continue
            seen += 1
            if json_lines:
                print(rec.model_dump_json(), flush=True)
            else:
                top = ", ".join(f"{i.item_id} ({i.score:.2f})" for i in rec.items[:5])
                out.print(
                    f"[bold]{rec.user_id}[/] after {rec.trigger_event_type} "
                    f"[dim]{rec.strategy} {rec.model_version}[/]: {top}"
                )


@app.command()
def chaos(
    model_dir: Annotated[Path, typer.Option(help="Model directory the workers load.")],
    events: Annotated[int, typer.Option(help="Events to stream.")] = 100_000,
    kills: Annotated[int, typer.Option(help="SIGKILLs during the stream.")] = 10,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 1000.0,
    workdir: Annotated[Path, typer.Option(help="State and logs.")] = Path("var/chaos"),
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    seed: Annotated[int, typer.Option(help="Randomness of kill times and state wipes.")] = 0,
) -> None:
    """Crash drill on the embedded broker: SIGKILL workers mid-stream, then verify.

    Passes when every event has a recommendation and every profile equals a
    reference fold of the same events (nothing lost, nothing applied twice).
    """
    import dataclasses

    from deploy.broker import EmbeddedBroker
    from deploy.chaos import crash_drill
    from models.synthetic import generate_shop
    from streams.client import event_from_dict

    shop = generate_shop(n_items=500, n_users=max(100, events // 20), seed=seed)
    stream = [event_from_dict(dataclasses.asdict(e)) for e in shop.events[:events]]
    broker = EmbeddedBroker().start()
    try:
        report = crash_drill(
            broker,
            model_dir,
            workdir,
            stream,
            kills=kills,
            rate=rate,
            seed=seed,
            log=console.print,
        )
    finally:
        broker.stop()
    summary = report.to_dict()
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    if out is not None:
        out.write_text(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def schemas(
    write: Annotated[bool, typer.Option(help="Rewrite streams/schemas/*.json.")] = False,
) -> None:
    """Print (or write) the JSON Schemas of events, recommendations and dead letters."""
    from streams.schema_files import json_schemas, write_schemas

    if write:
        for path in write_schemas():
            console.print(f"wrote {path}")
        return
    print(orjson.dumps(json_schemas(), option=orjson.OPT_INDENT_2).decode())


@app.command()
def demo(
    events: Annotated[int, typer.Option(help="Live events to stream.")] = 3000,
    rate: Annotated[
        float, typer.Option(help="Events per second (0 = as fast as possible).")
    ] = 300.0,
    workdir: Annotated[Path, typer.Option(help="Where models, state and logs go.")] = Path(".demo"),
) -> None:
    """Whole pipeline on the embedded broker: synthetic shop, training, live stream."""
    from deploy.demo import run_demo

    raise typer.Exit(run_demo(workdir=workdir, live_events=events, rate=rate))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
