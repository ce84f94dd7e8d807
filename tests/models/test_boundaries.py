"""Import boundaries of the models package, checked statically with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
FORBIDDEN_ROOTS = {"faust", "aiokafka", "confluent_kafka", "kafka", "streams", "deploy"}
# Serving-path modules: must not import torch (nor onnx / transformers) even indirectly.
TORCH_FREE = {
    "__init__",
    "contract",
    "interactions",
    "synthetic",
    "metadata",
    "encoding",
    "scorer",
    "catalog",
    "store",
    "datasets",
    "splits",
    "ranking",
    "metrics",
    "session",
    "grouping",
    "diversity",
}
TORCH_LIKE = {"torch", "onnx", "onnxscript", "transformers"}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _internal_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("models."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("models."))
    return names


# Every module, architectures/ included (one file per architecture).
MODULES = sorted(MODELS_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(MODELS_DIR)))
def test_no_stream_or_kafka_imports(path: Path) -> None:
    assert not _imported_roots(path) & FORBIDDEN_ROOTS


@pytest.mark.parametrize("name", sorted(TORCH_FREE))
def test_serving_modules_are_torch_free(name: str) -> None:
    path = MODELS_DIR / f"{name}.py"
    assert not _imported_roots(path) & TORCH_LIKE
    # ... and they only import other torch-free modules of the package.
    assert _internal_imports(path) <= TORCH_FREE


def test_every_public_module_declares_all() -> None:
    for path in MODULES:
        tree = ast.parse(path.read_text())
        assert any(
            isinstance(node, ast.Assign | ast.AnnAssign)
            and any(
                isinstance(t, ast.Name) and t.id == "__all__"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
            for node in tree.body
        ), path.name
