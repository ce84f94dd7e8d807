"""The ``recstream`` command line.

This module holds the operating commands (``worker``, ``archive``, ``topics``,
``produce``, ``consume``, ``forget``, ``config``, ``schemas``); the model commands are
registered from `deploy.model_cli` and the test and measurement lab's (``broker``,
``replay``, ``chaos``, ``demo``, ``bench``) from `deploy.lab.cli`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console

from deploy.settings import Settings

if TYPE_CHECKING:
    from streams.topics import TopicNames

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
def archive() -> None:
    """Archive accepted input events to day-partitioned Parquet (RECSTREAM_ARCHIVE_*).

    Its own consumer group (``<app_id>-archiver``). SIGTERM or Ctrl-C: the open parts
    are written, their offsets committed, and the process exits 0.
    """
    import logging.config
    import signal
    import threading

    from deploy.logs import logging_config
    from streams.archive import Archiver, ArchiverMetrics, serve_metrics

    settings = Settings()
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_json))
    for unknown in Settings.unknown_env(os.environ):
        logging.getLogger("recstream.archive").warning(
            "ignoring %s: not a recstream setting", unknown
        )
    options = settings.archive
    metrics = ArchiverMetrics()
    if options.metrics_port:
        serve_metrics(metrics, options.metrics_port)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    Archiver(
        settings.stream,
        options.dir,
        retention_days=options.retention_days,
        flush_records=options.flush_records,
        max_buffered=options.max_buffered_records,
        flush_interval_s=options.flush_interval_s,
        retention_interval_s=options.retention_interval_s,
        metrics=metrics,
    ).run(stopping.is_set)


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


def route_line(
    payload: object, names: TopicNames, default_type: str | None
) -> tuple[str, str | None] | None:
    """The topic and key a ``recstream produce`` line goes to, or ``None`` if unknown.

    Interactions go to their type's input topic and searches to ``searches``, keyed by
    ``user_id``; a catalog record (``"type": "item"``) goes to ``items``, keyed by its
    ``item_id`` (the worker ignores the two routing fields in the value).
    """
    from streams.events import EventType

    kind = _type_of(payload) or default_type
    field = "item_id" if kind == "item" else "user_id"
    value = payload.get(field) if isinstance(payload, dict) else None
    key = str(value) if value is not None else None
    if kind == "item":
        return names.items, key
    if kind == "search":
        return names.searches, key
    try:
        return (names.for_type(EventType(kind)), key) if kind else None
    except (ValueError, KeyError):
        return None


@app.command()
def produce(
    source: Annotated[str, typer.Argument(help="JSON-lines file, or - for stdin.")] = "-",
    event_type: Annotated[
        str | None,
        typer.Option("--type", help="click|browse|purchase|search|item for lines without a type."),
    ] = None,
) -> None:
    """Send events, searches and catalog records (one JSON object per line).

    Each line goes unchanged to the topic of its ``type`` field (or ``--type``):
    interactions to their input topic and searches to ``searches``, keyed by
    ``user_id``; ``"type": "item"`` lines to the ``items`` catalog, keyed by
    ``item_id``. The worker validates them, so a bad line ends up in the dead-letter
    topic with a reason rather than being fixed silently here.
    """
    from streams.client import EventProducer

    settings = Settings()
    names = settings.stream.topics
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
            route = route_line(payload, names, event_type)
            if route is None:
                console.print(f"line {lineno}: no known event type; use --type to send it anyway")
                skipped += 1
                continue
            producer.send_raw(route[0], route[1], line)
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
        settings.client_config(),
        settings.stream.topics.recommendations,
        from_beginning=from_beginning,
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
def forget(
    user_id: Annotated[str, typer.Argument(help="The user to erase.")],
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the audit record (0 = do not wait).")
    ] = 60.0,
) -> None:
    """Erase a user: profile (RocksDB and changelog), latest recommendations; audited.

    Sends an erasure request to the user-erasure topic (keyed by the user, so the
    worker owning the user's partition handles it) and waits for the worker's record
    in the audit topic, which names the user only by a keyed pseudonym. Exits 1 when
    no audit record arrived in time (the request stays queued and is done later).
    """
    from streams.client import ErasureClient
    from streams.privacy import UserKeys

    settings = Settings()
    privacy = settings.stream
    pseudonym = UserKeys(
        privacy.data_privacy.user_key.get_secret_value(),
        privacy.privacy.pseudonym_key.get_secret_value(),
    ).audit(user_id)
    record = ErasureClient(settings.client_config(), settings.stream.topics).forget(
        user_id, audit_pseudonym=pseudonym, wait_s=wait
    )
    if wait <= 0:
        console.print(f"erasure of {pseudonym} requested")
        return
    if record is None:
        console.print(f"[red]no audit record for {pseudonym} after {wait:.0f} s[/]")
        raise typer.Exit(1)
    print(orjson.dumps(record).decode())


@app.command()
def config(
    markdown: Annotated[
        bool, typer.Option(help="Print the README's table of every setting instead.")
    ] = False,
) -> None:
    """Print the settings a worker started here would use (secrets masked).

    One line per ``RECSTREAM_*`` variable, from the environment and ``.env``; an
    invalid value fails here as it would in the worker.
    """
    from deploy.settings import markdown_table

    if markdown:
        print(markdown_table(), end="")
        return
    settings = Settings()
    for name, spec in Settings.fields().items():
        value = settings.get(name)
        shown = "-" if value is None else str(value)  # SecretStr prints as **********
        print(f"{spec.env}={shown}")


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


from deploy.lab.cli import register as _register_lab_commands  # noqa: E402
from deploy.model_cli import register as _register_model_commands  # noqa: E402
from deploy.text_cli import register as _register_text_commands  # noqa: E402

_register_model_commands(app)
_register_lab_commands(app)
_register_text_commands(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
