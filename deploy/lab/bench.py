"""End-to-end Kafka benchmarks (``recstream bench e2e|soak``).

End to end: a broker (embedded unless told otherwise), fresh topics per variant,
worker(s) as separate processes, a load generator sending events at a fixed rate or
as fast as it can, and a consumer timing every recommendation. Variants run one
after another in the same command (optionally repeated, interleaved), so their
ratios are measured side by side on the same noisy machine.

Soak: constant load for a long time, worker RSS and consumer lag sampled.

The model-only speed benchmarks (inference, providers, grouping) are in
`models.speed`; they need no broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from deploy.lab.brokers import Broker
from deploy.lab.readback import poll_batch, topic_reader
from deploy.lab.scratch import ScratchDeployment, WorkerProcess
from deploy.settings import Settings
from streams.client import EventProducer, event_payload
from streams.events import Event

__all__ = [
    "E2EResult",
    "SoakResult",
    "WorkerVariant",
    "parse_metrics",
    "plot_e2e",
    "plot_soak",
    "run_e2e",
    "soak",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class WorkerVariant:
    """A worker configuration to measure: setting changes by flat name.

    The changes are validated when the variant is made (``Settings.replace``), so a
    misspelt or out-of-range setting fails at once instead of being ignored.
    """

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    #: ``"worker"``: recstream's worker; ``"lean"``: the non-durable reference loop
    #: (``deploy.lab.lean``), measured beside it for the ratio.
    kind: str = "worker"
    #: Run the worker code of this checkout instead (e.g. the commit before a change,
    #: measured in the same command; ``git worktree add DIR COMMIT``).
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("worker", "lean"):
            raise ValueError(f"unknown variant kind {self.kind!r}")
        Settings.defaults().replace(**self.settings)


class LeanProcess:
    """The lean reference loop (``deploy.lab.lean``) as a child process, with the parts
    of :class:`WorkerProcess`'s interface the benchmark uses. No metrics page: its
    stages are not timed."""

    def __init__(
        self, bootstrap: str, model_dir: Path, output: str, inputs: Sequence[str], log_path: Path
    ) -> None:
        self.args = [bootstrap, str(model_dir), output, *inputs]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LeanProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deploy.lab.lean", *self.args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"lean loop exited with {self.proc.returncode}")
            if b"ready" in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise TimeoutError(f"lean loop not ready after {timeout_s} s")

    def metrics_text(self) -> str:
        return ""

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()  # nothing to flush: it persists nothing
        return self.proc.wait(timeout_s)


@dataclass
class E2EResult:
    """What one end-to-end run measured."""

    variant: str
    events: int
    rate: float
    seconds: float
    events_per_s: float
    latency_ms: dict[str, float]
    #: Send -> the worker's ``produced_ts`` of the recommendation (broker in, worker).
    to_produced_ms: dict[str, float]
    stage_us_per_event: dict[str, float]
    mean_batch: float
    worker_cpu_s: float
    worker_cpu_util: float
    worker_rss_mb_peak: float
    answered: int
    #: Worker CPU (user + system, all its threads) per measured event.
    worker_cpu_us_per_event: float = float("nan")
    #: Input sent before the workers started (timed on the output side).
    preloaded: bool = False
    #: Whether the variant keeps recstream's guarantees (the lean reference does not).
    durable: bool = True
    timeline: list[tuple[float, int]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """The result without the raw per-event series."""
        out = asdict(self)
        out.pop("latencies_ms")
        out.pop("timeline")
        return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{"name{labels}": value}`` (samples only)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(user+system CPU seconds, RSS MiB) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        with open(f"/proc/{pid}/status") as fh:
            rss_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        return cpu, rss_kb / 1024
    except (OSError, StopIteration, IndexError, ValueError):
        return 0.0, 0.0


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


def run_e2e(
    broker: Broker,
    model_dir: Path,
    workdir: Path,
    events: Sequence[Event],
    variant: WorkerVariant,
    *,
    rate: float = 0.0,
    partitions: int = 4,
    workers: int = 1,
    warmup_events: Sequence[Event] = (),
    timeout_s: float = 600.0,
    preloaded: bool = False,
    profile_dir: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> E2EResult:
    """Measure one variant end to end; see the module docstring.

    Flooded or paced (default): workers start and answer the warm-up events, then the
    load generator sends; latency is send -> recommendation received, events/s is
    answered events over first send -> last answer.

    Pre-loaded (``preloaded``): warm-up and measured events are all in the input
    topics before the workers start, so no load generator competes for the cores.
    Events/s is 80 % of the measured events over the time between the 10th and the
    90th percentile of their answers (start-up and the tail left out); worker CPU is
    read over the same span; latency is from the workers' start (backlog draining,
    not a service latency).

    Args:
        broker: a started broker.
        model_dir: model the workers load.
        workdir: worker state and logs go below it.
        events: the measured stream (event ids must be unique).
        variant: worker settings to apply.
        rate: events per second; 0 sends as fast as the client can (ignored when
            ``preloaded``).
        partitions: partitions of every topic.
        workers: worker processes (at most ``partitions`` do work).
        warmup_events: sent and answered before measuring (distinct event ids).
        timeout_s: give up waiting for recommendations after this long.
        preloaded: send everything before starting the workers (see above).
        profile_dir: sample each worker with py-spy (``--gil``, 100 Hz, pausing
            it) from its start (pre-loaded) or the first measured send until the
            last answer; collapsed stacks go to ``<variant>-<i>.txt`` there (see
            :mod:`deploy.lab.profile`).
    """
    # Absolute: a worker of another checkout (``variant.source``) starts there.
    model_dir, workdir = model_dir.resolve(), workdir.resolve()
    dep = ScratchDeployment.create(broker, "bench", partitions)
    topics, tag, client = dep.topics, dep.tag, dep.client_config
    base = {
        "fetch_max_wait_ms": 10,
        **variant.settings,
    }
    procs: list[WorkerProcess | LeanProcess]
    if variant.kind == "lean":
        procs = [
            LeanProcess(
                broker.bootstrap_servers,
                model_dir,
                topics.recommendations,
                list(topics.inputs()),
                workdir / tag / f"lean-{i}.log",
            )
            for i in range(workers)
        ]
    else:
        procs = [
            WorkerProcess(
                dep.worker_settings(model_dir, workdir / tag / f"state-{i}", **base),
                workdir / tag / f"worker-{i}.log",
                source=variant.source,
            )
            for i in range(workers)
        ]

    def start_workers() -> None:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_ready(120)

    if not preloaded:
        start_workers()

    sent_at: dict[str, float] = {}
    received: dict[str, float] = {}
    produced: dict[str, float] = {}
    expected = {e.event_id for e in events}
    warm_ids = {e.event_id for e in warmup_events}
    warm_seen: set[str] = set()
    stop = threading.Event()
    warmed = threading.Event()
    if not warm_ids:
        warmed.set()

    consumer = topic_reader(client, topics.recommendations, partitions, fetch_wait_ms=5)

    def consume() -> None:
        while not stop.is_set():
            for msg in poll_batch(consumer, 2000, 0.05):
                if msg.error():
                    continue
                now = time.time()
                rec = orjson.loads(msg.value() or b"{}")
                tid = rec.get("trigger_event_id")
                if tid in expected and tid not in received:
                    received[tid] = now
                    produced[tid] = float(rec.get("produced_ts") or now)
                elif tid in warm_ids:
                    warm_seen.add(tid)
                    if warm_seen >= warm_ids:
                        warmed.set()

    samples: list[tuple[float, float, float]] = []

    def sample() -> None:
        while not stop.is_set():
            cpu = rss = 0.0
            for proc in procs:
                if proc.proc is not None:
                    c, r = _proc_cpu_rss(proc.proc.pid)
                    cpu, rss = cpu + c, rss + r
            samples.append((time.time(), cpu, rss))
            time.sleep(0.1)

    threads = [
        threading.Thread(target=consume, daemon=True),
        threading.Thread(target=sample, daemon=True),
    ]
    for t in threads:
        t.start()
    producer = EventProducer(client, topics)
    # Serialised up front: the load generator shares the cores with the worker, so
    # its per-event work is kept out of the measured loop.
    records = [(topics.for_type(e.event_type), e.user_id, event_payload(e)) for e in events]
    spies: list[subprocess.Popen[bytes]] = []

    def start_profiles() -> None:
        if profile_dir is None:
            return
        profile_dir.mkdir(parents=True, exist_ok=True)
        for i, proc in enumerate(procs):
            if proc.proc is not None:
                spies.append(start_py_spy(proc.proc.pid, profile_dir / f"{variant.name}-{i}.txt"))

    try:
        if preloaded:
            log(f"{variant.name}: pre-loading {len(warmup_events) + len(events)} events")
            for ev in warmup_events:
                producer.send(ev)
            for topic, key, value in records:
                producer.send_raw(topic, key, value)
            producer.flush()
            t_start = time.time()
            sent_at.update(dict.fromkeys(expected, t_start))
            start_workers()
            start_profiles()
            before: list[dict[str, float]] = [{} for _ in procs]  # counters start at 0
            cpu0 = 0.0
        else:
            for ev in warmup_events:
                producer.send(ev)
            producer.flush()
            if not warmed.wait(120):
                raise TimeoutError("warm-up events were not answered")
            before = [parse_metrics(p.metrics_text()) for p in procs]
            cpu0 = sum(_proc_cpu_rss(p.proc.pid)[0] for p in procs if p.proc is not None)
            log(
                f"{variant.name}: sending {len(events)} events at "
                f"{'max rate' if rate <= 0 else f'{rate:.0f}/s'}"
            )
            start_profiles()
            t_start = time.time()
            mono0 = time.monotonic()
            for i, (ev, (topic, key, value)) in enumerate(zip(events, records, strict=True)):
                if rate > 0:
                    delay = mono0 + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                sent_at[ev.event_id] = time.time()
                producer.send_raw(topic, key, value)
            producer.flush()
        deadline = time.monotonic() + timeout_s
        while len(received) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        t_end = max(received.values()) if received else time.time()
        stop_py_spies(spies)
        cpu1 = sum(_proc_cpu_rss(p.proc.pid)[0] for p in procs if p.proc is not None)
        after = [parse_metrics(p.metrics_text()) for p in procs]
    finally:
        stop_py_spies(spies)
        stop.set()
        for t in threads:
            t.join(5)
        consumer.close()
        for proc in procs:
            proc.stop(timeout_s=20)

    seconds = max(1e-9, t_end - t_start)
    measured_n = len(received)
    events_per_s = len(received) / seconds
    cpu_s = cpu1 - cpu0
    if preloaded and len(received) >= 10:
        # The steady middle: 10th to 90th percentile of the answers, CPU over it.
        arrivals = sorted(received.values())
        lo, hi = len(arrivals) // 10, len(arrivals) * 9 // 10
        seconds = max(1e-9, arrivals[hi] - arrivals[lo])
        measured_n = hi - lo
        events_per_s = measured_n / seconds
        wall = [x[0] for x in samples]
        cpus = [x[1] for x in samples]
        cpu_s = float(np.interp(arrivals[hi], wall, cpus) - np.interp(arrivals[lo], wall, cpus))
    latencies = [1000 * (received[i] - sent_at[i]) for i in received if i in sent_at]
    to_produced = [1000 * (produced[i] - sent_at[i]) for i in received if i in sent_at]
    stages = {}
    # Pre-loaded counters start at 0, so they cover the warm-up events too.
    n = max(1, len(received) + (len(warm_seen) if preloaded else 0))
    for stage in ("decode", "profile", "inference", "produce"):
        key = f'recstream_stage_seconds_total{{stage="{stage}"}}'
        total = sum(a.get(key, 0) - b.get(key, 0) for a, b in zip(after, before, strict=True))
        stages[stage] = 1e6 * total / n
    batch_sum = sum(
        a.get("recstream_inference_batch_size_sum", 0)
        - b.get("recstream_inference_batch_size_sum", 0)
        for a, b in zip(after, before, strict=True)
    )
    batch_n = sum(
        a.get("recstream_inference_batch_size_count", 0)
        - b.get("recstream_inference_batch_size_count", 0)
        for a, b in zip(after, before, strict=True)
    )
    timeline: list[tuple[float, int]] = []
    if received:
        arr = np.sort(np.asarray(list(received.values())) - t_start)
        edges = np.arange(0.0, float(arr[-1]) + 0.5, 0.5)
        counts = np.histogram(arr, bins=np.append(edges, edges[-1] + 0.5))[0]
        timeline = [(float(t), int(c)) for t, c in zip(edges, counts, strict=True)]
    return E2EResult(
        variant=variant.name,
        events=len(events),
        rate=rate,
        seconds=seconds,
        events_per_s=events_per_s,
        latency_ms=_percentiles(latencies),
        to_produced_ms=_percentiles(to_produced),
        stage_us_per_event=stages,
        mean_batch=batch_sum / batch_n if batch_n else float("nan"),
        worker_cpu_s=cpu_s,
        worker_cpu_util=cpu_s / seconds,
        worker_rss_mb_peak=max((s[2] for s in samples), default=0.0),
        answered=len(received),
        worker_cpu_us_per_event=1e6 * cpu_s / max(1, measured_n),
        preloaded=preloaded,
        durable=variant.kind != "lean",
        timeline=timeline,
        latencies_ms=latencies,
    )


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """Sample ``pid`` with py-spy until :func:`stop_py_spies`: collapsed stacks of the
    thread holding the GIL, 100 Hz (each sample pauses the process briefly: exact stacks)."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        raise FileNotFoundError(f"{exe} missing: pip install py-spy (the test extra has it)")
    return subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--rate", "100", "--gil"]
        + ["--format", "raw", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_py_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    """Stop the samplers (SIGINT: py-spy writes its file) and wait for the files."""
    for spy in spies:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
    spies.clear()


def plot_e2e(results: Sequence[E2EResult], path: Path) -> Path | None:
    """Latency distribution and throughput over time per variant, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for res in results:
        if res.latencies_ms:
            lat = np.sort(np.asarray(res.latencies_ms))
            ax1.plot(
                lat, np.linspace(0, 1, len(lat)), label=f"{res.variant} ({res.rate or 'max'}/s)"
            )
        if res.timeline:
            ts, counts = zip(*res.timeline, strict=True)
            ax2.plot(ts, np.asarray(counts) / 0.5, label=res.variant)
    ax1.set_xscale("log")
    ax1.set_xlabel("event -> recommendation latency (ms)")
    ax1.set_ylabel("fraction of events")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("seconds since first event sent")
    ax2.set_ylabel("recommendations / s")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class SoakResult:
    """A soak run: constant load, resources sampled every few seconds."""

    minutes: float
    rate: float
    sent: int
    answered: int
    samples: list[dict[str, float]]
    rss_growth_mb_per_h: float
    max_lag: float
    #: Slope of RSS minus the RocksDB memory the worker reports (caches and
    #: memtables fill up to their caps; a leak shows here).
    non_rocksdb_growth_mb_per_h: float = 0.0
    rss_max_mb: float = 0.0
    rocksdb_max_mb: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The result without the samples."""
        out = asdict(self)
        out.pop("samples")
        return out


def soak(
    broker: Broker,
    model_dir: Path,
    workdir: Path,
    make_event: Callable[[int], Event],
    *,
    minutes: float = 30.0,
    rate: float = 500.0,
    partitions: int = 4,
    sample_every_s: float = 5.0,
    log: Callable[[str], None] = lambda _m: None,
) -> SoakResult:
    """Constant load for ``minutes``; records worker RSS, CPU and consumer lag.

    ``rss_growth_mb_per_h`` is the slope of a least-squares line through the RSS
    samples of the second half of the run (the first half includes warm-up and
    RocksDB/table growth as new users arrive); ``non_rocksdb_growth_mb_per_h`` is
    the same for RSS minus the RocksDB memory the worker reports.
    """
    dep = ScratchDeployment.create(broker, "soak", partitions)
    topics, tag, client = dep.topics, dep.tag, dep.client_config
    worker = WorkerProcess(
        dep.worker_settings(model_dir, workdir / tag / "state"), workdir / tag / "worker.log"
    ).start()
    worker.wait_ready(120)
    stop = threading.Event()
    answered = [0]
    sent = [0]
    consumer = topic_reader(client, topics.recommendations, partitions)

    def consume() -> None:
        while not stop.is_set():
            answered[0] += sum(1 for m in poll_batch(consumer, 2000, 0.1) if not m.error())

    def produce() -> None:
        producer = EventProducer(client, topics)
        t0 = time.monotonic()
        i = 0
        while not stop.is_set():
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.5))
                continue
            producer.send(make_event(i))
            i += 1
            sent[0] = i
        producer.flush()

    threads = [
        threading.Thread(target=consume, daemon=True),
        threading.Thread(target=produce, daemon=True),
    ]
    for t in threads:
        t.start()
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < minutes * 60:
            time.sleep(sample_every_s)
            assert worker.proc is not None
            cpu, rss = _proc_cpu_rss(worker.proc.pid)
            metrics = parse_metrics(worker.metrics_text())
            lag = sum(
                v for k, v in metrics.items() if k.startswith("recstream_consumer_lag_records")
            )
            rocksdb = sum(
                v for k, v in metrics.items() if k.startswith("recstream_table_memory_bytes")
            )
            sample = {
                "t": time.monotonic() - started,
                "rss_mb": rss,
                "rocksdb_mb": rocksdb / 2**20,
                "cpu_s": cpu,
                "lag": lag,
                "sent": float(sent[0]),
                "answered": float(answered[0]),
            }
            samples.append(sample)
            if len(samples) % 12 == 0:
                log(
                    f"soak {sample['t'] / 60:.1f} min: RSS {rss:.0f} MiB, lag {lag:.0f}, "
                    f"answered {answered[0]}/{sent[0]}"
                )
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        consumer.close()
        worker.stop()
    half = samples[len(samples) // 2 :]
    growth = other_growth = 0.0
    if len(half) >= 2:
        hours = np.asarray([s["t"] for s in half]) / 3600
        rss_mb = np.asarray([s["rss_mb"] for s in half])
        other_mb = rss_mb - np.asarray([s["rocksdb_mb"] for s in half])
        growth = float(np.polyfit(hours, rss_mb, 1)[0])
        other_growth = float(np.polyfit(hours, other_mb, 1)[0])
    return SoakResult(
        minutes=minutes,
        rate=rate,
        sent=sent[0],
        answered=answered[0],
        samples=samples,
        rss_growth_mb_per_h=growth,
        max_lag=max((s["lag"] for s in samples), default=0.0),
        non_rocksdb_growth_mb_per_h=other_growth,
        rss_max_mb=max((s["rss_mb"] for s in samples), default=0.0),
        rocksdb_max_mb=max((s["rocksdb_mb"] for s in samples), default=0.0),
    )


def plot_soak(result: SoakResult, path: Path) -> Path | None:
    """RSS and consumer lag over the soak, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [s["t"] / 60 for s in result.samples]
    fig, ax1 = plt.subplots(figsize=(9, 4))
    ax1.plot(t, [s["rss_mb"] for s in result.samples], color="tab:blue", label="worker RSS (MiB)")
    ax1.plot(
        t,
        [s.get("rocksdb_mb", 0.0) for s in result.samples],
        color="tab:green",
        label="RocksDB memory (MiB)",
    )
    ax1.set_xlabel("minutes")
    ax1.set_ylabel("MiB")
    ax2 = ax1.twinx()
    ax2.plot(t, [s["lag"] for s in result.samples], color="tab:orange", label="consumer lag")
    ax2.set_ylabel("lag (records)")
    fig.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
