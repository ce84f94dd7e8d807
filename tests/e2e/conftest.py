"""End-to-end fixtures: the embedded broker run as `recstream broker`, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def cli_broker(tmp_path: Path) -> Iterator[str]:
    """`recstream broker` in the background; yields its bootstrap address."""
    env_file = tmp_path / "broker.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env["RECSTREAM_PARTITIONS"] = "2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "broker", "--env-file", str(env_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not env_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"broker did not start: {proc.communicate()[1].decode()}")
        time.sleep(0.1)
    line = env_file.read_text().strip()
    yield line.split("=", 1)[1]
    proc.terminate()
    proc.wait(10)
