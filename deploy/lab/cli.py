"""``recstream broker | replay | chaos | demo | bench``: the lab's commands.

Registered on the main app by `deploy.cli` (the only production module that imports
the lab). Heavy imports (torch, the broker harness, the benchmarks) happen inside the
commands so that ``recstream --help`` stays fast.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from deploy.settings import Settings

__all__ = ["register"]

console = Console(stderr=True)
bench_app = typer.Typer(
    help="Benchmarks: end to end, inference, soak, archiver, online feedback.", no_args_is_help=True
)


def _type_of(payload: object) -> str | None:
    """The event type a JSON line names (``type`` or ``event_type``); as in `deploy.cli`."""
    if isinstance(payload, dict):
        value = payload.get("type", payload.get("event_type"))
        return value if isinstance(value, str) else None
    return None


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
    from deploy.lab.brokers import EmbeddedBroker
    from deploy.topics import topic_specs

    settings = Settings()
    if partitions is not None:
        settings = settings.replace(partitions=partitions)
    embedded = EmbeddedBroker().start()
    specs = topic_specs(settings)
    embedded.create_topics(specs)
    line = f"RECSTREAM_KAFKA_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}"
    if env_file is not None:
        env_file.write_text(line + "\n")
    console.print(
        f"[bold green]embedded Kafka broker[/] librdkafka {embedded.version} (mock cluster)"
    )
    console.print(
        f"topics: {', '.join(s.name for s in specs)} ({settings.stream.partitions} partitions)"
    )
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


def replay(
    path: Annotated[Path, typer.Argument(help="Dataset file (never copied; read in place).")],
    fmt: Annotated[
        str, typer.Option("--format", help="events (JSON lines), sequences, sessions, or auto.")
    ] = "auto",
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible).")] = 0.0,
    limit: Annotated[int | None, typer.Option(help="Stop after N events.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the event-type mix for sequence files.")] = 0,
) -> None:
    """Stream a dataset into the input topics, keyed by user, with a progress bar.

    ``events``: recstream event JSON lines (each goes to the topic of its type).
    ``sequences``: ``user item1 item2 ...`` lines (e.g. Amazon Beauty). ``sessions``:
    one anonymous session of items per line (e.g. DIGINETICA; a session is a user).
    Sequence and session items become browse/click/purchase events with synthetic,
    increasing timestamps, users interleaved.
    """
    from rich.progress import Progress

    from deploy.lab.replay import events_from_sequences
    from streams.client import EventProducer, event_payload
    from streams.events import EventType

    if fmt == "auto":
        fmt = "events" if path.suffix in (".json", ".jsonl", ".ndjson") else "sequences"
    settings = Settings()
    names = settings.stream.topics
    records: list[tuple[str, str | None, bytes]] = []
    if fmt == "events":
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                payload = orjson.loads(line)
            except orjson.JSONDecodeError:
                payload = None
            kind = _type_of(payload)
            if kind not in ("click", "browse", "purchase"):
                console.print("[yellow]skipping a line without a known type[/]")
                continue
            assert isinstance(payload, dict)
            topic = names.for_type(EventType(kind))
            records.append((topic, str(payload.get("user_id")), line))
    elif fmt in ("sequences", "sessions"):
        from models.datasets import read_sequences, read_sessions

        seqs = (
            list(read_sequences(path).items())
            if fmt == "sequences"
            else [(f"session-{i}", items) for i, items in enumerate(read_sessions(path), 1)]
        )
        for ev in events_from_sequences(seqs, seed=seed, limit=limit):
            records.append((names.for_type(ev.event_type), ev.user_id, event_payload(ev)))
    else:
        raise typer.BadParameter(f"unknown format {fmt!r}")
    if limit is not None:
        records = records[:limit]
    started = time.monotonic()
    with (
        EventProducer(settings.client_config(), names) as producer,
        Progress(console=console) as bar,
    ):
        task = bar.add_task(f"replaying {path.name}", total=len(records))
        for i, (topic, key, value) in enumerate(records):
            if rate > 0:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            producer.send_raw(topic, key, value)
            if i % 500 == 0:
                bar.update(task, completed=i)
        bar.update(task, completed=len(records))
    elapsed = time.monotonic() - started
    console.print(
        f"replayed {len(records)} events in {elapsed:.1f} s "
        f"({len(records) / max(elapsed, 1e-9):,.0f}/s)"
    )


def chaos(
    model_dir: Annotated[Path, typer.Option(help="Model directory the workers load.")],
    events: Annotated[int, typer.Option(help="Events to stream.")] = 100_000,
    kills: Annotated[int, typer.Option(help="SIGKILLs during the stream.")] = 10,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 1000.0,
    workdir: Annotated[Path, typer.Option(help="State and logs.")] = Path("var/chaos"),
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    seed: Annotated[int, typer.Option(help="Randomness of kill times and state wipes.")] = 0,
    partitions: Annotated[
        int, typer.Option(help="Partitions (the embedded broker keeps 5 MiB per partition).")
    ] = 16,
) -> None:
    """Crash drill on the embedded broker: SIGKILL workers mid-stream, then verify.

    Passes when every event has a recommendation and every profile equals a
    reference fold of the same events (nothing lost, nothing applied twice).
    """
    import dataclasses

    from deploy.lab.brokers import EmbeddedBroker
    from deploy.lab.chaos import crash_drill
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
            partitions=partitions,
            log=console.print,
        )
    finally:
        broker.stop()
    summary = report.to_dict()
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    if out is not None:
        out.write_text(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    raise typer.Exit(0 if report.ok else 1)


def demo(
    events: Annotated[int, typer.Option(help="Live events to stream.")] = 3000,
    rate: Annotated[
        float, typer.Option(help="Events per second (0 = as fast as possible).")
    ] = 300.0,
    quick: Annotated[bool, typer.Option(help="Smaller shop and model (for tests).")] = False,
    workdir: Annotated[Path, typer.Option(help="Where models, state and logs go.")] = Path(".demo"),
) -> None:
    """Whole pipeline on the embedded broker: synthetic shop, training, live stream."""
    from deploy.lab.demo import run_demo

    raise typer.Exit(run_demo(workdir=workdir, live_events=events, rate=rate, quick=quick))


def _bench_events(sequences: Path | None, n: int, seed: int) -> tuple[list[Any], list[Any]]:
    """Measured events and distinct warm-up events, from a sequence file or a synthetic shop."""
    import dataclasses

    from deploy.lab.replay import events_from_sequences
    from streams.client import event_from_dict

    if sequences is not None:
        from models.datasets import read_sequences

        seqs = list(read_sequences(sequences).items())
        events = events_from_sequences(seqs, seed=seed, limit=n + 500)
    else:
        from models.synthetic import generate_shop

        shop = generate_shop(n_items=1000, n_users=max(200, n // 25), seed=seed)
        events = [event_from_dict(dataclasses.asdict(e)) for e in shop.events[: n + 500]]
    return events[500:], events[:500]


def _bench_model(model_dir: Path | None, sequences: Path | None, workdir: Path) -> tuple[Path, Any]:
    """The model to serve: the given directory, or a 1-epoch model of the default shape."""
    if model_dir is not None:
        return model_dir, None
    from models.config import TrainConfig
    from models.export import export_onnx
    from models.train import train_model

    if sequences is not None:
        from models.datasets import read_sequences
        from models.interactions import Interaction

        data = [
            Interaction(user, item, "click", float(i))
            for user, items in read_sequences(sequences).items()
            for i, item in enumerate(items)
        ]
    else:
        from models.synthetic import generate_shop

        data = generate_shop(n_items=1000, n_users=1000, seed=0).interactions()
    console.print(f"training a 1-epoch model of the default shape on {len(data)} interactions")
    trained = train_model(data, TrainConfig(epochs=1))
    return export_onnx(trained, workdir / "model", model_version="bench-1epoch"), trained


@bench_app.command("e2e")
def bench_e2e(
    model_dir: Annotated[
        Path | None, typer.Option(help="Model to serve (default: train one).")
    ] = None,
    sequences: Annotated[
        Path | None, typer.Option(help="user item1 item2 ... file (e.g. Amazon Beauty).")
    ] = None,
    events: Annotated[int, typer.Option(help="Measured events per variant.")] = 20_000,
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible.")] = 0.0,
    variants: Annotated[
        str,
        typer.Option(
            help="Comma list: batched, per-event, inline, gil-5ms, gc-default, gc-N, asyncio-loop, "
            "faust-changelog, faust-stream, no-feedback, cuda, batch-N, threads-N, or several "
            "joined by + (inline+batch-256); lean (the non-durable reference "
            "loop of deploy.lab.lean, for the ratio: not a worker); baseline (--baseline)."
        ),
    ] = "batched,per-event",
    preloaded: Annotated[
        bool,
        typer.Option(
            help="Load all input before starting the workers and time them on the output "
            "side (10th-90th percentile), with no load generator running."
        ),
    ] = False,
    repeats: Annotated[
        int, typer.Option(help="Run the variant list this many times, interleaved.")
    ] = 1,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    bootstrap: Annotated[
        str | None, typer.Option(help="External Kafka (default: embedded).")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Checkout (e.g. `git worktree add /tmp/base HEAD~3`) whose worker runs as "
            "variant `baseline` (default settings), side by side with this code's."
        ),
    ] = None,
    profile: Annotated[
        bool,
        typer.Option(
            help="Sample the workers with py-spy over the measured span; collapsed stacks "
            "and a summary go to OUT/profiles."
        ),
    ] = False,
    out: Annotated[Path, typer.Option(help="Directory for bench.json and bench.png.")] = Path(
        "var/bench"
    ),
) -> None:
    """Events/s and event->recommendation latency through broker, worker(s) and back."""
    from deploy.lab.bench import WorkerVariant, plot_e2e, run_e2e
    from deploy.lab.brokers import EmbeddedBroker, ExternalBroker

    out.mkdir(parents=True, exist_ok=True)
    model, _ = _bench_model(model_dir, sequences, out)
    measured, warmup = _bench_events(sequences, events, seed=1)
    presets: dict[str, dict[str, Any]] = {
        "batched": {},
        "per-event": {"max_batch": 1, "max_wait_ms": 0},
        "inline": {"inference_thread": False},
        "gil-5ms": {"gil_switch_interval_ms": 0},
        # Python's garbage-collector defaults (700 allocations, nothing frozen).
        "gc-default": {"gc_threshold": 0},
        "asyncio-loop": {"event_loop": "asyncio"},
        "faust-changelog": {"changelog_producer": "faust"},
        # Input records through Faust's conductor and stream instead of the batch feed.
        "faust-stream": {"batch_feed": False},
        # Online feedback off: no remembered lists, one changelog record per event.
        "no-feedback": {"feedback_lists": 0},
        # GPU hosts: CUDA execution provider (fails loudly without one), bigger batches.
        "cuda": {"provider": "cuda", "max_batch": 256},
    }

    def worker_settings(part: str) -> dict[str, Any]:
        if part.startswith("batch-") and part[6:].isdigit():
            return {"max_batch": int(part[6:])}
        if part.startswith("gc-") and part[3:].isdigit():
            return {"gc_threshold": int(part[3:])}
        if part.startswith("threads-") and part[8:].isdigit():
            return {"intra_op_threads": int(part[8:])}
        if part in presets:
            return presets[part]
        raise typer.BadParameter(f"unknown variant {part!r}")

    chosen = []
    for name in (v.strip() for v in variants.split(",") if v.strip()):
        if name == "lean":
            chosen.append(WorkerVariant(name, kind="lean"))
        elif name == "baseline":
            if baseline is None:
                raise typer.BadParameter("variant baseline needs --baseline CHECKOUT")
            chosen.append(WorkerVariant(name, source=baseline.resolve()))
        else:  # a preset, or presets joined by "+" (e.g. inline+threads-2)
            merged: dict[str, Any] = {}
            for part in name.split("+"):
                merged.update(worker_settings(part))
            chosen.append(WorkerVariant(name, merged))
    broker = (ExternalBroker(bootstrap) if bootstrap else EmbeddedBroker()).start()
    results = []
    try:
        for r in range(repeats):
            for variant in chosen:
                # Fresh event ids per run: every run has its own topics, ids only need
                # to be unique within it.
                res = run_e2e(
                    broker,
                    model,
                    out / "runs",
                    measured,
                    variant,
                    rate=rate,
                    partitions=partitions,
                    workers=workers,
                    warmup_events=warmup,
                    preloaded=preloaded,
                    profile_dir=out / "profiles" / f"run{r + 1}" if profile else None,
                    log=console.print,
                )
                results.append(res)
                console.print(
                    f"  {res.variant} (run {r + 1}): {res.events_per_s:,.0f} events/s, "
                    f"p50 {res.latency_ms['p50']:.1f} ms, p99 {res.latency_ms['p99']:.1f} ms "
                    f"(send->produced p50 {res.to_produced_ms['p50']:.1f}, "
                    f"p99 {res.to_produced_ms['p99']:.1f} ms), "
                    f"batch {res.mean_batch:.1f}, worker CPU {res.worker_cpu_util:.2f} cores, "
                    f"{res.worker_cpu_us_per_event:,.0f} us/event"
                    + ("" if res.durable else " (NOT durable: reference only)")
                )
    finally:
        broker.stop()
    summaries = [r.summary() for r in results]
    report = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "model_dir": str(model),
        "results": summaries,
    }
    (out / "bench.json").write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    png = plot_e2e(results, out / "bench.png")
    _print_results(summaries)
    if profile:
        _print_profiles(out / "profiles")
    console.print(f"wrote {out / 'bench.json'}" + (f" and {png}" if png else ""))


def _print_profiles(directory: Path, top: int = 25) -> None:
    """Each worker's top functions by share of GIL-holding samples (summary.txt too)."""
    from deploy.lab.profile import summarise

    lines = []
    for path in sorted(directory.glob("run*/*.txt")):
        total, shares = summarise(path, top)
        lines.append(f"{path.relative_to(directory)}: {total} samples; incl % / self %")
        lines += [f"  {s.inclusive:5.1f} {s.self:5.1f}  {s.function}" for s in shares]
    text = "\n".join(lines)
    (directory / "summary.txt").write_text(text + "\n")
    console.print(text, markup=False, highlight=False)


@bench_app.command("soak")
def bench_soak(
    model_dir: Annotated[Path, typer.Option(help="Model the worker serves.")],
    minutes: Annotated[float, typer.Option(help="How long to run.")] = 30.0,
    rate: Annotated[float, typer.Option(help="Constant events per second.")] = 500.0,
    users: Annotated[int, typer.Option(help="Distinct users cycled through.")] = 20_000,
    out: Annotated[Path, typer.Option(help="Directory for soak.json and soak.png.")] = Path(
        "var/bench"
    ),
) -> None:
    """Constant load for a long time; RSS and lag sampled every 5 s (memory must stay flat)."""
    from deploy.lab.bench import plot_soak, soak
    from deploy.lab.brokers import EmbeddedBroker
    from streams.client import event_from_dict

    out.mkdir(parents=True, exist_ok=True)

    def make_event(i: int) -> Any:
        kind = ("browse", "click", "browse", "purchase")[i % 4]
        record: dict[str, Any] = {
            "event_type": kind,
            "event_id": f"soak-{i}",
            "user_id": f"u{(i * 7919) % users}",
            "item_id": f"sku-{(i * 31) % 1000:05d}",
            "ts": 1_790_000_000 + i * 0.01,
        }
        if kind == "purchase":
            record.update(order_id=f"o{i}", price=9.5)
        return event_from_dict(record)

    broker = EmbeddedBroker().start()
    try:
        result = soak(
            broker,
            model_dir,
            out / "soak-runs",
            make_event,
            minutes=minutes,
            rate=rate,
            log=console.print,
        )
    finally:
        broker.stop()
    report = {
        "command": " ".join(sys.argv),
        "machine": _machine(),
        **result.summary(),
        "samples": result.samples,
    }
    (out / "soak.json").write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    plot_soak(result, out / "soak.png")
    print(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode())


@bench_app.command("inference")
def bench_inference(
    sequences: Annotated[
        Path | None, typer.Option(help="user item1 item2 ... file (catalog size).")
    ] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma list of batch sizes.")] = "1,8,64,256",
    threads: Annotated[int, typer.Option(help="Threads for both engines (0 = default).")] = 0,
    out: Annotated[Path, typer.Option(help="Directory for inference.json.")] = Path("var/bench"),
) -> None:
    """onnxruntime vs torch eager, same model and inputs, per batch size."""
    from models.speed import inference_benchmark

    out.mkdir(parents=True, exist_ok=True)
    model, trained = _bench_model(None, sequences, out)
    rows = inference_benchmark(trained, model, _int_list(batch_sizes), threads=threads)
    _write_rows(out / "inference.json", rows)
    for row in rows:
        print(
            f"batch {row['batch']:>4}: onnxruntime {row['onnxruntime_ms']:8.2f} ms, "
            f"torch eager {row['torch_eager_ms']:8.2f} ms, speed-up {row['speedup']:.2f}x"
        )


@bench_app.command("providers")
def bench_providers(
    items: Annotated[
        int, typer.Option(help="Catalog size of the synthetic, untrained model.")
    ] = 1_000_000,
    model_dir: Annotated[
        Path | None,
        typer.Option(help="Score with this exported fp32 model instead (fp16/int8 derived)."),
    ] = None,
    variants: Annotated[
        str, typer.Option(help="Comma list: cpu, cpu-int8, cuda, cuda-run, cuda-fp16.")
    ] = "cpu,cuda,cuda-run,cuda-fp16",
    batch_sizes: Annotated[str, typer.Option(help="Comma list of batch sizes.")] = "1,64,256,1024",
    repeats: Annotated[int, typer.Option(help="Timed calls per batch size.")] = 20,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads (0 = default).")] = 0,
    out: Annotated[Path, typer.Option(help="Directory for models and providers.json.")] = Path(
        "var/bench"
    ),
) -> None:
    """Scoring latency per execution provider (CPU, CUDA with and without IO binding,
    fp16 on CUDA, int8 on CPU) on a large catalog; unusable providers are reported."""
    from dataclasses import replace

    from models.export import convert_variant, export_onnx
    from models.metadata import ModelMetadata
    from models.speed import PROVIDER_VARIANTS, provider_benchmark

    names = [v for v in variants.split(",") if v]
    unknown = sorted(set(names) - set(PROVIDER_VARIANTS))
    if unknown:
        raise typer.BadParameter(f"unknown variants: {', '.join(unknown)}")
    graphs = {PROVIDER_VARIANTS[v][0] for v in names}
    dirs: dict[str, Path] = {}
    if model_dir is not None:
        from models.store import resolve_model_dir

        dirs["fp32"] = resolve_model_dir(model_dir)
    else:
        from models.speed import untrained_model

        console.print(f"exporting an untrained default-shape model over {items:,} items")
        dirs["fp32"] = export_onnx(
            untrained_model(items), out / "model-fp32", model_version=f"synthetic-{items}"
        )
    for graph in sorted(graphs - {"fp32"}):
        target = out / f"model-{graph}"
        shutil.copytree(dirs["fp32"], target, dirs_exist_ok=True)
        convert_variant(target / "model.onnx", target / "model.onnx", graph)
        meta = ModelMetadata.load(target)
        replace(meta, variant=graph).save(target / "metadata.json")
        dirs[graph] = target
    rows = provider_benchmark(
        dirs,
        names,
        _int_list(batch_sizes),
        repeats=repeats,
        threads=threads,
    )
    _write_rows(out / "providers.json", rows)
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:>10}: unavailable ({row['error']})")
            continue
        print(
            f"{row['variant']:>10} batch {row['batch']:>5}: p50 {row['p50_ms']:8.2f} ms, "
            f"p99 {row['p99_ms']:8.2f} ms, {row['rows_per_s']:>10,.0f} rows/s"
        )


@bench_app.command("grouping")
def bench_grouping(
    sequences: Annotated[Path, typer.Option(help="user item1 item2 ... file to replay.")],
    model_dir: Annotated[Path, typer.Option(help="Model to score with.")],
    batch_sizes: Annotated[str, typer.Option(help="Comma list of batch sizes.")] = "16,64,256",
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads.")] = 1,
    out: Annotated[Path, typer.Option(help="Directory for grouping.json.")] = Path("var/bench"),
) -> None:
    """Length-grouped vs one-call inference on the history lengths of a replay."""
    from models.datasets import read_sequences
    from models.speed import grouping_benchmark

    # Every prefix of every user, as the worker sees them during a replay (the scorer
    # keeps the newest max_len items of each).
    histories = [
        [(item, "browse", "web") for item in items[:n]]
        for items in read_sequences(sequences).values()
        for n in range(1, len(items) + 1)
    ]
    rows = grouping_benchmark(model_dir, histories, _int_list(batch_sizes), threads=threads)
    _write_rows(out / "grouping.json", rows)
    for row in rows:
        print(
            f"batch {row['batch']:>4}: one call {row['one_call_us_per_row']:6.0f} us/row, "
            f"grouped {row['grouped_us_per_row']:6.0f} us/row ({row['speedup']:.2f}x), "
            f"with measured costs {row['grouped_measured_us_per_row']:6.0f} us/row "
            f"({row['speedup_measured']:.2f}x); longest history per batch "
            f"{row['mean_longest']:.1f} on average"
        )
    measured = rows[0]["measured_costs"] if rows else {}
    print(f"measured costs (positions): row {measured.get('row')}, call {measured.get('call')}")


@bench_app.command("archive")
def bench_archive(
    events: Annotated[int, typer.Option(help="Events in the input topics.")] = 50_000,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    flush_records: Annotated[
        int, typer.Option(help="RECSTREAM_ARCHIVE_FLUSH_RECORDS (production default).")
    ] = 50_000,
    flush_interval_s: Annotated[
        float, typer.Option(help="RECSTREAM_ARCHIVE_FLUSH_INTERVAL_S (short: no minute's wait).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic shop.")] = 0,
    out: Annotated[Path, typer.Option(help="Directory for archive.json and the archive.")] = Path(
        "var/bench"
    ),
) -> None:
    """Archiver throughput: events/s into Parquet, bytes/event on disk, CPU, peak RSS.

    The three input topics of the embedded broker are filled with synthetic-shop
    events (re-timed into the last hour) first; then ``recstream archive`` runs as a
    child process and is timed until every event is in its Parquet files.
    """
    from deploy.lab.brokers import EmbeddedBroker
    from deploy.lab.production_loop import archive_throughput, recent_shop_events

    evs = recent_shop_events(events, seed=seed)
    broker = EmbeddedBroker().start()
    try:
        row = archive_throughput(
            broker,
            out / "archive-runs",
            evs,
            partitions=partitions,
            flush_records=flush_records,
            flush_interval_s=flush_interval_s,
            log=console.print,
        )
    finally:
        broker.stop()
    row["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_rows(out / "archive.json", [row])
    print(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode())
    console.print(f"wrote {out / 'archive.json'}")
    if not row["all_archived_once"]:
        raise typer.Exit(1)


@bench_app.command("feedback")
def bench_feedback(
    model_dir: Annotated[
        Path | None, typer.Option(help="Model to serve (default: train one).")
    ] = None,
    sequences: Annotated[
        Path | None,
        typer.Option(help="user item1 item2 ... file to replay (default: a synthetic shop)."),
    ] = None,
    users: Annotated[int, typer.Option(help="Users replayed.")] = 2000,
    max_items: Annotated[int, typer.Option(help="Last items replayed per user.")] = 20,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    out: Annotated[Path, typer.Option(help="Directory for feedback.json.")] = Path("var/bench"),
) -> None:
    """Online hit rate (the worker's feedback counters) vs offline HR@20, same cases.

    Every item is replayed as a click (nothing excluded), users in lockstep, with
    RECSTREAM_FEEDBACK_LISTS=1 and a window longer than the replay: each list is
    credited at most once, by the user's next event.
    """
    from deploy.lab.brokers import EmbeddedBroker
    from deploy.lab.production_loop import feedback_vs_offline, user_sequences_from_shop

    out.mkdir(parents=True, exist_ok=True)
    model, _ = _bench_model(model_dir, sequences, out)
    if sequences is not None:
        from models.datasets import read_sequences

        seqs = [
            (user, items[-max_items:])
            for user, items in list(read_sequences(sequences).items())[:users]
        ]
    else:
        seqs = user_sequences_from_shop(users, max_items=max_items)
    broker = EmbeddedBroker().start()
    try:
        row = feedback_vs_offline(
            seqs, model, out / "feedback-runs", broker, partitions=partitions, log=console.print
        )
    finally:
        broker.stop()
    row["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_rows(out / "feedback.json", [row])
    print(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode())
    console.print(f"wrote {out / 'feedback.json'}")


@bench_app.command("lookup")
def bench_lookup(
    model_dir: Annotated[
        Path | None, typer.Option(help="Model to serve (default: train one).")
    ] = None,
    users: Annotated[int, typer.Option(help="Users with a recommendation list.")] = 500,
    requests: Annotated[int, typer.Option(help="Lookups timed, one at a time.")] = 5000,
    partitions: Annotated[int, typer.Option(help="Partitions per topic.")] = 4,
    bootstrap: Annotated[
        str | None, typer.Option(help="External Kafka (default: embedded).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for lookup.json.")] = Path("var/bench"),
) -> None:
    """Latency of GET /users/{id}/recommendations on two workers (local and forwarded)."""
    from deploy.lab.brokers import EmbeddedBroker, ExternalBroker
    from deploy.lab.lookup_bench import lookup_latency

    out.mkdir(parents=True, exist_ok=True)
    model, _ = _bench_model(model_dir, None, out)
    broker = (ExternalBroker(bootstrap) if bootstrap else EmbeddedBroker()).start()
    try:
        row = lookup_latency(
            broker,
            model,
            out / "lookup-runs",
            users=users,
            requests=requests,
            partitions=partitions,
            log=console.print,
        )
    finally:
        broker.stop()
    row["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_rows(out / "lookup.json", [row])
    print(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode())
    console.print(f"wrote {out / 'lookup.json'}")


def _int_list(text: str) -> list[int]:
    """``"1,64,256"`` -> ``[1, 64, 256]`` (a comma list option)."""
    return [int(part) for part in text.split(",")]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A benchmark's rows as JSON, with the command line and the machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(sys.argv), "machine": _machine(), "rows": rows}
    path.write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


def _machine() -> dict[str, Any]:
    import os
    import platform

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version()}


def _print_results(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="end to end")
    for col in (
        "variant",
        "events/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "batch",
        "decode us",
        "profile us",
        "inference us",
        "produce us",
        "worker CPU",
        "CPU us/event",
        "RSS MiB",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        st = r["stage_us_per_event"]
        table.add_row(
            r["variant"] + ("" if r.get("durable", True) else " (not durable)"),
            f"{r['events_per_s']:,.0f}",
            f"{r['latency_ms']['p50']:.1f}",
            f"{r['latency_ms']['p95']:.1f}",
            f"{r['latency_ms']['p99']:.1f}",
            f"{r['mean_batch']:.1f}",
            f"{st['decode']:.0f}",
            f"{st['profile']:.0f}",
            f"{st['inference']:.0f}",
            f"{st['produce']:.0f}",
            f"{r['worker_cpu_util']:.2f}",
            f"{r.get('worker_cpu_us_per_event', float('nan')):,.0f}",
            f"{r['worker_rss_mb_peak']:.0f}",
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``broker``, ``replay``, ``chaos``, ``demo`` and ``bench`` to the ``recstream`` app."""
    app.command()(broker)
    app.command()(replay)
    app.command()(chaos)
    app.command()(demo)
    app.add_typer(bench_app, name="bench")


import deploy.lab.semantic_bench  # noqa: E402, F401 - registers ``bench semantic`` on bench_app
