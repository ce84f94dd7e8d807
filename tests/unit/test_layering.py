"""Dependencies point one way: deploy -> streams -> models."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "models": {
        "streams",
        "deploy",
        "faust",
        "aiokafka",
        "confluent_kafka",
        "mode",
        "testcontainers",
    },
    "streams": {"deploy", "torch", "transformers", "testcontainers"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_arrow(package: str) -> None:
    offenders = {}
    for path in (ROOT / package).rglob("*.py"):
        bad = imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"imports against deploy -> streams -> models: {offenders}"


def test_the_checker_catches_a_wrong_arrow(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import faust\nfrom deploy.cli import app\n")
    assert imported_roots(bad) & FORBIDDEN["models"] == {"faust", "deploy"}


def test_worker_import_does_not_load_torch() -> None:
    code = "import sys, deploy.worker, streams.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
