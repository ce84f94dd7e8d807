"""`recstream bench providers`: per-provider scoring latency on a synthetic catalog."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deploy.cli import app
from models.config import TrainConfig
from models.export import export_onnx
from models.metadata import ModelMetadata
from models.scorer import OnnxScorer
from models.session import ProviderUnavailableError
from models.speed import provider_benchmark, untrained_model

SMALL = TrainConfig(max_len=8, dim=16, n_heads=2, n_layers=1, max_k=20)


def test_untrained_model_covers_the_catalog(tmp_path: Path) -> None:
    model = untrained_model(500, SMALL)
    assert model.vocab.n_items == 500 and model.vocab.decode(1) == "item-0000000"
    scorer = OnnxScorer.load(export_onnx(model, tmp_path / "m"), provider="cpu")
    assert scorer.n_items == 500
    rec = scorer.recommend([[("item-0000007", "browse", "web")]], [set()], 10)[0]
    assert rec.strategy == "sequential" and len(rec.items) == 10


def test_provider_benchmark_rows_and_unavailable_providers(tmp_path: Path) -> None:
    fp32 = export_onnx(untrained_model(300, SMALL), tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # CPU-only onnxruntime and "cuda"
        rows = provider_benchmark({"fp32": fp32}, ["cpu", "cuda"], [1, 16], repeats=3)
    cpu = [r for r in rows if r["variant"] == "cpu"]
    assert [r["batch"] for r in cpu] == [1, 16]
    for row in cpu:
        assert row["provider"] == "cpu" and not row["io_binding"] and row["n_items"] == 300
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["rows_per_s"] == pytest.approx(row["batch"] / (row["p50_ms"] / 1000))
    cuda = [r for r in rows if r["variant"] == "cuda"]
    try:
        OnnxScorer.load(fp32, provider="cuda")
    except ProviderUnavailableError:
        assert len(cuda) == 1 and "CUDA" in cuda[0]["error"]  # reported, not raised
    else:
        assert [(r["provider"], r["io_binding"], r["batch"]) for r in cuda] == [
            ("cuda", True, 1),
            ("cuda", True, 16),
        ]


def test_bench_providers_cli_writes_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["bench", "providers", "--items", "400", "--variants", "cpu,cpu-int8"]
        + ["--batch-sizes", "1,8", "--repeats", "2", "--threads", "1", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "providers.json").read_text())
    assert [(r["variant"], r["batch"]) for r in report["rows"]] == [
        ("cpu", 1),
        ("cpu", 8),
        ("cpu-int8", 1),
        ("cpu-int8", 8),
    ]
    assert {r["graph"] for r in report["rows"]} == {"fp32", "int8"}
    assert ModelMetadata.load(tmp_path / "model-int8").variant == "int8"
    assert (tmp_path / "model-int8" / "model.onnx").stat().st_size < (
        tmp_path / "model-fp32" / "model.onnx"
    ).stat().st_size
    bad = CliRunner().invoke(
        app, ["bench", "providers", "--variants", "tpu", "--out", str(tmp_path)]
    )
    assert bad.exit_code != 0
