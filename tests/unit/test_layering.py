"""Dependencies point one way: deploy -> streams -> models; production never needs the lab."""

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
        "kafka",
        "mode",
        "testcontainers",
    },
    "streams": {"deploy", "torch", "transformers", "testcontainers"},
}
#: What a running deployment imports; none of it may import the lab (`deploy.lab`).
#: `deploy/cli.py` may, to register the lab's commands.
PRODUCTION = ("settings.py", "worker.py", "app.py", "topics.py", "logs.py")


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, dotted in full (``from a import b`` gives ``a.b``)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imports_the_lab(path: Path) -> list[str]:
    return sorted(
        name for name in imported_modules(path) if name.split(".")[:2] == ["deploy", "lab"]
    )


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


@pytest.mark.parametrize("module", PRODUCTION)
def test_production_modules_do_not_import_the_lab(module: str) -> None:
    assert not imports_the_lab(ROOT / "deploy" / module)


def test_the_lab_checker_catches_every_spelling(tmp_path: Path) -> None:
    for line in (
        "import deploy.lab.scratch",
        "from deploy.lab.brokers import EmbeddedBroker",
        "from deploy import lab",
        "def f():\n    from deploy.lab.bench import run_e2e",
    ):
        bad = tmp_path / "x.py"
        bad.write_text(line + "\n")
        assert imports_the_lab(bad), line
    assert "deploy.lab.cli" in imports_the_lab(ROOT / "deploy" / "cli.py")  # registration


def test_worker_import_does_not_load_the_lab() -> None:
    code = (
        # deploy.app builds the worker at import (it needs a model): checked statically above.
        "import sys, deploy.worker, deploy.topics, deploy.settings, deploy.logs; "
        "print(sorted(m for m in sys.modules if m.startswith('deploy.lab')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_worker_import_does_not_load_torch() -> None:
    code = (
        "import sys, deploy.worker, streams.app, models.text_encoder, models.bundles; "
        "print('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
