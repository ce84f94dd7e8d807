"""The CLI as a user runs it: broker, worker (also via `faust -A`), produce, consume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.lab.scratch import FAST_GROUP_SETTINGS, WorkerProcess, free_port, settings_env
from deploy.settings import Settings
from deploy.topics import topic_specs

pytestmark = pytest.mark.e2e


def cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def base_env(bootstrap: str, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env.update(settings_env(kafka_bootstrap_servers=bootstrap, partitions=2, **extra))
    return env


EVENTS = [
    {
        "type": "browse",
        "event_id": "e1",
        "user_id": "alice",
        "item_id": "sku-00001",
        "ts": 1790000000,
        "dwell_ms": 900,
    },
    {
        "type": "click",
        "event_id": "e2",
        "user_id": "alice",
        "item_id": "sku-00002",
        "ts": 1790000005,
    },
    {
        "type": "purchase",
        "event_id": "e3",
        "user_id": "alice",
        "item_id": "sku-00002",
        "ts": 1790000009,
        "order_id": "o1",
        "price": 12.5,
    },
    {
        "type": "click",
        "event_id": "e4",
        "user_id": "bob",
        "item_id": "sku-00003",
        "ts": 1790000010,
        "channel": "app",
    },
]


def test_broker_produce_worker_consume(cli_broker: str, model_dir: Path, tmp_path: Path) -> None:
    worker = WorkerProcess(
        {
            "kafka_bootstrap_servers": cli_broker,
            "partitions": 2,
            "model_dir": model_dir,
            "state_dir": tmp_path / "state",
            "provider": "cpu",
            "fetch_max_wait_ms": 50,
            **FAST_GROUP_SETTINGS,
        },
        tmp_path / "worker.log",
    ).start()
    try:
        worker.wait_ready(90)
        lines = "\n".join(json.dumps(e) for e in EVENTS) + "\nnot an event\n"
        produced = cli("produce", "-", env=base_env(cli_broker), stdin=lines.encode())
        assert produced.returncode == 0, produced.stderr.decode()
        assert b"sent 4 events, skipped 1" in produced.stderr

        consumed = cli(
            "consume",
            "--json",
            "--from-beginning",
            "--max",
            "4",
            "--timeout",
            "30",
            env=base_env(cli_broker),
        )
        assert consumed.returncode == 0, consumed.stderr.decode()
        recs = [json.loads(line) for line in consumed.stdout.decode().splitlines()]
        assert {r["trigger_event_id"] for r in recs} == {"e1", "e2", "e3", "e4"}
        after_purchase = [r for r in recs if r["trigger_event_id"] == "e3"][0]
        assert "sku-00002" not in {i["item_id"] for i in after_purchase["items"]}

        only_bob = cli(
            "consume",
            "--from-beginning",
            "--user",
            "bob",
            "--max",
            "1",
            "--timeout",
            "20",
            env=base_env(cli_broker),
        )
        assert (
            only_bob.returncode == 0
            and b"bob" in only_bob.stdout
            and b"alice" not in only_bob.stdout
        )
    finally:
        assert worker.stop() == 0, worker.log_tail()


def test_faust_cli_runs_the_same_app(cli_broker: str, model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = base_env(
        cli_broker,
        model_dir=model_dir,
        state_dir=tmp_path / "state",
        provider="cpu",
        fetch_max_wait_ms=50,
        web_port=port,
        web_host="127.0.0.1",
        **FAST_GROUP_SETTINGS,
    )
    log = open(tmp_path / "faust.log", "wb")  # noqa: SIM115
    faust_bin = Path(sys.executable).with_name("faust")
    proc = subprocess.Popen(
        [str(faust_bin), "-A", "deploy.app", "worker", "-l", "info", "--web-port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    probe = WorkerProcess({"web_port": port}, tmp_path / "unused.log")
    probe.proc = proc
    try:
        probe.wait_ready(90)
        produced = cli(
            "produce", "-", env=base_env(cli_broker), stdin=json.dumps(EVENTS[0]).encode()
        )
        assert produced.returncode == 0, produced.stderr.decode()
        consumed = cli(
            "consume",
            "--json",
            "--from-beginning",
            "--max",
            "1",
            "--timeout",
            "30",
            env=base_env(cli_broker),
        )
        assert json.loads(consumed.stdout.decode().splitlines()[0])["trigger_event_id"] == "e1"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_help_lists_every_command() -> None:
    out = cli("--help", env=dict(os.environ))
    text = out.stdout.decode()
    for command in ("demo", "broker", "worker", "produce", "consume", "topics", "schemas"):
        assert command in text


def test_replay_a_sequence_file_and_describe_topics(
    cli_broker: str, model_dir: Path, tmp_path: Path
) -> None:
    seqs = tmp_path / "seqs.txt"
    seqs.write_text("u1 sku-00001 sku-00002 sku-00003\nu2 sku-00004 sku-00005\n")
    described = cli("topics", "describe", env=base_env(cli_broker))
    assert described.returncode == 0, described.stderr.decode()
    lines = described.stdout.decode().splitlines()
    assert any(
        line.startswith("recstream-profiles-changelog") and line.endswith("ok") for line in lines
    )
    # Every topic a deployment needs was created by `recstream broker`, with its count.
    wanted = topic_specs(Settings.defaults().replace(partitions=2))
    assert len([line for line in lines if line.endswith(" ok")]) == len(wanted) >= 9

    worker = WorkerProcess(
        {
            "kafka_bootstrap_servers": cli_broker,
            "partitions": 2,
            "model_dir": model_dir,
            "state_dir": tmp_path / "state",
            "provider": "cpu",
            "fetch_max_wait_ms": 50,
            **FAST_GROUP_SETTINGS,
        },
        tmp_path / "worker.log",
    ).start()
    try:
        worker.wait_ready(90)
        replayed = cli(
            "replay", str(seqs), "--format", "sequences", "--rate", "100", env=base_env(cli_broker)
        )
        assert replayed.returncode == 0, replayed.stderr.decode()
        assert b"replayed 5 events" in replayed.stderr
        consumed = cli(
            "consume",
            "--json",
            "--from-beginning",
            "--max",
            "5",
            "--timeout",
            "30",
            env=base_env(cli_broker),
        )
        triggers = {
            json.loads(line)["trigger_event_id"] for line in consumed.stdout.decode().splitlines()
        }
        assert triggers == {"u1-0", "u1-1", "u1-2", "u2-0", "u2-1"}
    finally:
        worker.stop()


def test_bench_lookup_times_local_and_forwarded_lookups(model_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    args = ["--model-dir", str(model_dir), "--users", "20", "--requests", "60"]
    out = tmp_path / "bench"
    result = cli(
        "bench", "lookup", *args, "--partitions", "2", "--out", str(out), env=env, timeout=240
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    row = json.loads((out / "lookup.json").read_text())["rows"][0]
    assert row["errors"] == 0 and row["all"]["n"] == 60
    # Two workers, two partitions: some lookups answered here, some forwarded.
    assert row["local"]["n"] > 0 and row["forwarded"]["n"] > 0
    assert 0 < row["all"]["p50"] <= row["all"]["p99"]
