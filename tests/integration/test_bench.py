"""The benchmark harnesses measure what they claim (not how fast: that is docs/BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from deploy.lab.bench import WorkerVariant, run_e2e, soak
from deploy.lab.brokers import Broker
from models.synthetic import SyntheticShop
from streams.client import event_from_dict

pytestmark = pytest.mark.integration


def test_e2e_run_answers_every_event_and_reads_the_worker_stages(
    broker: Broker, model_dir: Path, shop: SyntheticShop, tmp_path: Path
) -> None:
    events = [event_from_dict(dataclasses.asdict(e)) for e in shop.events[:400]]
    result = run_e2e(
        broker,
        model_dir,
        tmp_path,
        events[100:],
        WorkerVariant("batched"),
        partitions=2,
        warmup_events=events[:100],
        timeout_s=120,
    )
    assert result.answered == result.events == 300
    assert len(result.latencies_ms) == 300 and min(result.latencies_ms) > 0
    assert result.events_per_s > 0 and result.worker_cpu_s > 0
    # Every stage was timed by the worker over exactly the measured events.
    assert all(v > 0 for v in result.stage_us_per_event.values()), result.stage_us_per_event
    assert set(result.stage_us_per_event) == {"decode", "profile", "inference", "produce"}
    assert result.mean_batch >= 1


@pytest.mark.parametrize("variant", [WorkerVariant("batched"), WorkerVariant("lean", kind="lean")])
def test_preloaded_run_times_the_backlog_on_the_output_side(
    variant: WorkerVariant, broker: Broker, model_dir: Path, shop: SyntheticShop, tmp_path: Path
) -> None:
    events = [event_from_dict(dataclasses.asdict(e)) for e in shop.events[:1100]]
    result = run_e2e(
        broker,
        model_dir,
        tmp_path,
        events[100:],
        variant,
        partitions=2,
        warmup_events=events[:100],
        timeout_s=120,
        preloaded=True,
    )
    assert result.preloaded and result.answered == result.events == 1000
    # Timed over the middle 80 % of the answers, with the CPU of that span.
    assert 0 < result.seconds < max(result.latencies_ms) / 1000
    assert result.events_per_s == pytest.approx(800 / result.seconds, rel=0.01)
    assert result.worker_cpu_s > 0 and result.worker_cpu_us_per_event > 0
    assert result.durable is (variant.kind == "worker")
    if variant.kind == "worker":
        # The worker's stages cover the warm-up and the measured events.
        assert all(v > 0 for v in result.stage_us_per_event.values())
    else:
        assert all(v == 0 for v in result.stage_us_per_event.values())  # not timed


def test_a_baseline_checkout_runs_beside_this_code(
    broker: Broker,
    model_dir: Path,
    shop: SyntheticShop,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A checkout elsewhere (here: this one's packages, linked), started in its root;
    # the bench's relative paths still resolve from where it was called.
    root = Path(__file__).resolve().parents[2]
    checkout = tmp_path / "baseline"
    checkout.mkdir()
    for package in ("deploy", "streams", "models"):
        (checkout / package).symlink_to(root / package)
    monkeypatch.chdir(tmp_path)
    events = [event_from_dict(dataclasses.asdict(e)) for e in shop.events[:300]]
    result = run_e2e(
        broker,
        model_dir.relative_to(tmp_path) if model_dir.is_relative_to(tmp_path) else model_dir,
        Path("runs"),
        events[50:],
        WorkerVariant("baseline", source=checkout),
        partitions=2,
        warmup_events=events[:50],
        timeout_s=120,
    )
    assert result.answered == result.events == 250
    logs = list((tmp_path / "runs").rglob("worker-0.log"))
    assert logs and not list(checkout.glob("runs"))  # state and logs where the bench runs


def test_bench_e2e_command_preloaded_beside_lean_and_a_baseline_with_profiles(
    model_dir: Path, tmp_path: Path
) -> None:
    """The command BENCHMARKS gives, small: the variants in one run, profiled (and
    presets joined by +)."""
    from typer.testing import CliRunner

    from deploy.cli import app

    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        ["bench", "e2e", "--model-dir", str(model_dir), "--events", "300"]
        + ["--variants", "batched,baseline,faust-stream,lean,gc-100000+threads-1"]
        + ["--baseline", str(Path.cwd())]
        + ["--preloaded", "--profile", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads((out / "bench.json").read_bytes())
    runs = {r["variant"]: r for r in report["results"]}
    assert list(runs) == ["batched", "baseline", "faust-stream", "lean", "gc-100000+threads-1"]
    assert all(r["answered"] == 300 and r["preloaded"] for r in runs.values())
    assert runs["batched"]["durable"] and not runs["lean"]["durable"]
    # The summary is written (300 events can end before py-spy takes a sample, so
    # which workers it lists is not asserted; tests/unit/test_profile_summary.py is).
    assert (out / "profiles" / "summary.txt").is_file()


def test_soak_samples_rss_rocksdb_memory_and_lag(
    broker: Broker, model_dir: Path, shop: SyntheticShop, tmp_path: Path
) -> None:
    events = [event_from_dict(dataclasses.asdict(e)) for e in shop.events]
    result = soak(
        broker,
        model_dir,
        tmp_path,
        lambda i: events[i % len(events)].model_copy(update={"event_id": f"soak-{i}"}),
        minutes=0.4,
        rate=100,
        partitions=2,
        sample_every_s=2.0,
    )
    assert len(result.samples) >= 8
    assert result.sent > 0 and result.answered > 0.8 * result.sent
    assert all(s["rss_mb"] > 0 for s in result.samples)
    assert result.rocksdb_max_mb > 0  # the worker's RocksDB memory metric is read
    assert result.rss_max_mb >= max(s["rss_mb"] for s in result.samples)
