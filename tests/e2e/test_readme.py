"""The README's Python examples run as written against a real broker and worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.lab.scratch import FAST_GROUP_SETTINGS, WorkerProcess

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_examples() -> dict[str, str]:
    pattern = re.compile(r"<!-- readme-test: (\w+) -->\s*```python\n(.*?)```", re.S)
    return {name: code for name, code in pattern.findall(README.read_text())}


def test_readme_has_the_examples() -> None:
    assert set(readme_examples()) == {"producer", "consumer", "asyncio"}


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
    finally:
        worker.stop()
