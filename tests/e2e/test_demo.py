"""`recstream demo` end to end (the quick variant of what `make demo` runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.text_encoder import minilm_zip

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
    report = tmp_path / "demo" / "summary.json"
    if minilm_zip() is None:
        assert "no text encoder" in out and not report.exists()
        return
    # With MiniLM (make install): searches change lists, reasons name history items.
    assert "5. A search changes the next list" in out and "6. Summary" in out
    summary = json.loads(report.read_text())
    assert len(summary["new_items"]) == 12  # one per category, not in the model
    assert summary["searches"], out[-3000:]
    for search in summary["searches"]:
        assert search["category"] not in search["browsed_categories"]
        assert f"searches {search['query']!r}" in out
        before, after = search["before"], search["after"]
        assert [e["item_id"] for e in before] != [e["item_id"] for e in after]
        assert all(e["reason"] is not None for e in before + after)
        assert any(e["reason"]["code"] == "matches_search" for e in after)
        for entry in before + after:
            if entry["reason"]["code"] == "similar_to_viewed":
                assert entry["reason"]["item_id"] in search["history"]
        searched = [sum(e["category"] == search["category"] for e in s) for s in (before, after)]
        assert searched[1] > searched[0], search
    assert "new items" in out and "not in the model" in out
