"""The benchmark scripts docs/BENCHMARKS.md quotes run as documented (small sizes)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_archive_erasure_bench_erases_and_reports() -> None:
    out = _run("docs/bench/archive_erasure.py", "12", "200")
    assert "absent-user scanned 12" in out and "rewritten 0 rows 0" in out
    assert "100 users" in out


def test_catalog_scoring_bench_compares_both_ways_and_builds_the_view() -> None:
    out = _run("docs/bench/catalog_scoring.py", "hidden")  # asserts equal lists itself
    assert "exclude=own|hidden" in out and "exclude=own, hidden=" in out
    out = _run("docs/bench/catalog_scoring.py", "build")
    assert "view build at 50000 items" in out and "texts precomputed in the view" in out


def test_hot_path_encoding_bench_compares_equal_documents() -> None:
    out = _run("docs/bench/hot_path_encoding.py", "50")  # asserts equal outputs itself
    for name in (
        "list message, dict per item (kept)",
        "list message, one fragment (tried)",
        "pseudonym, before",
        "pseudonym, after",
    ):
        assert f"{name}: " in out
