"""`recstream demo` end to end (the quick variant of what `make demo` runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_runs_the_whole_pipeline_and_exits_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "demo",
            "--quick",
            "--events",
            "400",
            "--rate",
            "200",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        env=env,
        capture_output=True,
        timeout=400,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out[-3000:] + done.stderr.decode()[-3000:]
    assert "every valid event got a recommendation" in out
    assert "400 valid + 3 malformed" in out
    assert "dead-lettered" in out and "3 (malformed" in out
    assert (tmp_path / "demo" / "models" / "current" / "model.onnx").exists()
