"""`recstream train | evaluate | export | models` on a small event log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deploy.model_cli import register
from models.metadata import ModelMetadata
from models.store import ModelStore
from models.synthetic import SyntheticShop


def _flat(output: str) -> str:
    """CLI output without whitespace and box characters (rich wraps error panels)."""
    return re.sub(r"[\s│╭╮╰╯─]", "", output)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    register(cli)
    return cli


@pytest.fixture(scope="module")
def event_log(tiny_shop: SyntheticShop, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "events.jsonl"
    with open(path, "w") as fh:
        for n, it in enumerate(tiny_shop.interactions()):
            fh.write(
                json.dumps(
                    {
                        "event_id": f"e{n}",
                        "user_id": it.user_id,
                        "item_id": it.item_id,
                        "ts": it.ts,
                        "type": it.event_type,
                        "channel": it.channel,
                    }
                )
                + "\n"
            )
    return path


def test_help_lists_commands(app: typer.Typer) -> None:
    runner = CliRunner()
    for command in ("train", "evaluate", "export", "tune", "models"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_train_evaluate_export_on_event_log(
    app: typer.Typer, event_log: Path, tmp_path: Path, tiny_shop: SyntheticShop
) -> None:
    runner = CliRunner()
    run_dir, store = tmp_path / "run", tmp_path / "store"
    small = ["--max-len", "20", "--dim", "32", "--epochs", "2", "--threads", "1"]
    result = runner.invoke(
        app,
        [
            "train",
            "--device",
            "cpu",
            str(event_log),
            "--format",
            "events",
            "--out",
            str(run_dir),
            *small,
            "--store",
            str(store),
            "--promote",
            "--similarity",
            "cosine",
            "--temperature",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["model"] for r in report["results"]] == [
        "transformer",
        "most-popular",
        "item-transitions",
        "item-cooccurrence",
    ]
    assert report["command"].startswith("recstream ")
    assert report["config"]["device"] == "cpu" and report["training"]["device"] == "cpu"
    assert report["data_files"] == [str(event_log)]
    assert (run_dir / "training_curve.png").is_file() and (run_dir / "metrics.png").is_file()
    model_store = ModelStore(store)
    current = model_store.current()
    assert current is not None and model_store.versions() == [current]
    meta = ModelMetadata.load(model_store.current_dir())
    assert meta.metrics["ndcg@10"] == report["results"][0]["ndcg@10"]
    assert (meta.similarity, meta.temperature) == ("cosine", 0.1)

    result = runner.invoke(app, ["models", "list", str(store)])
    assert result.exit_code == 0 and current in result.output

    # Warm start from the run: the parent's architecture is inherited, not overridden.
    warm_dir = tmp_path / "warm"
    warm_args = ["train", str(event_log), "--format", "events", "--out", str(warm_dir)]
    warm_args += ["--epochs", "1", "--threads", "1", "--init-from", str(run_dir)]
    result = runner.invoke(app, [*warm_args, "--dim", "16"])
    assert result.exit_code != 0 and "--dim16(theparenthas32)" in _flat(result.output)
    result = runner.invoke(app, [*warm_args, "--similarity", "dot"])
    assert result.exit_code != 0 and "--similaritydot(theparenthascosine)" in _flat(result.output)
    result = runner.invoke(app, [*warm_args[:4], "--out", str(run_dir), *warm_args[6:]])
    assert result.exit_code != 0 and "--outmustdiffer" in _flat(result.output)
    result = runner.invoke(app, [*warm_args, "--no-baselines"])
    assert result.exit_code == 0, result.output
    warm = json.loads((warm_dir / "report.json").read_text())
    assert warm["config"]["dim"] == 32 and warm["config"]["max_len"] == 20
    assert (warm["config"]["similarity"], warm["config"]["temperature"]) == ("cosine", 0.1)
    lineage = warm["training"]["init_from"]
    assert lineage["checkpoint"] == str(run_dir.resolve())
    assert "valid_ndcg@10" in lineage  # the parent was scored before training on
    assert lineage["n_items_copied"] == report["training"]["n_items"]

    result = runner.invoke(
        app,
        [
            "evaluate",
            str(run_dir),
            str(event_log),
            "--format",
            "events",
            "--no-baselines",
            "--onnx",
            str(model_store.current_dir()),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "onnx-fp32" in result.output
    assert (tmp_path / "eval" / "metrics.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "report.json").exists()

    # The per-category cap's cost, measured the worker's way (categories as attributes).
    attributes = tmp_path / "attributes.json"
    attributes.write_text(json.dumps({i.item_id: [i.category] for i in tiny_shop.catalog}))
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(run_dir),
            str(event_log),
            "--format",
            "events",
            "--no-baselines",
            "--attributes",
            str(attributes),
            "--category-cap",
            "1",
            "--category-cap",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "cap 1/category" in result.output and "cap 3/category" in result.output

    result = runner.invoke(
        app, ["export", str(run_dir), "--store", str(store), "--variant", "int8"]
    )
    assert result.exit_code == 0, result.output
    assert len(model_store.versions()) == 2
    int8 = next(i for i in model_store.list() if i.variant == "int8")
    assert model_store.current() == current  # export without --promote does not switch
    result = runner.invoke(app, ["models", "promote", str(store), int8.version])
    assert result.exit_code == 0 and model_store.current() == int8.version

    result = runner.invoke(
        app, ["models", "latency", str(store), "--threads", "1", "--repeats", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "int8" in result.output  # the store resolves to CURRENT

    result = runner.invoke(app, ["export", str(run_dir)])
    assert result.exit_code != 0  # needs --out or --store


def test_models_rollback(app: typer.Typer, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for version in ("v1", "v2"):
        (store.root / version).mkdir(parents=True)
        (store.root / version / "model.onnx").write_bytes(b"onnx")
        (store.root / version / "metadata.json").write_text(json.dumps({"model_version": version}))
    runner = CliRunner()
    result = runner.invoke(app, ["models", "--help"])
    assert result.exit_code == 0 and "rollback" in result.output
    result = runner.invoke(app, ["models", "rollback", str(store.root)])
    assert result.exit_code == 1 and "nothingtorollback" in _flat(result.output)
    for version in ("v1", "v2"):
        result = runner.invoke(app, ["models", "promote", str(store.root), version])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["models", "rollback", str(store.root)])
    assert result.exit_code == 0, result.output
    assert "CURRENT->v1" in _flat(result.output) and store.current() == "v1"
    result = runner.invoke(app, ["models", "rollback", str(store.root)])
    assert result.exit_code == 1 and store.current() == "v1"
    assert "nothingtorollback" in _flat(result.output)


def test_train_with_the_session_11_levers_and_export(
    app: typer.Typer, event_log: Path, tmp_path: Path
) -> None:
    """The BENCHMARKS commands of the levers: train with each flag, then export."""
    runner = CliRunner()
    run_dir, model_dir = tmp_path / "run", tmp_path / "model"
    levers = ["--transition-head", "--label-smoothing", "0.1", "--contrastive-weight", "0.1"]
    levers += ["--weight-ema", "0.99"]
    small = ["--max-len", "20", "--dim", "32", "--epochs", "1", "--threads", "1"]
    args = ["train", str(event_log), "--format", "events", "--out", str(run_dir)]
    result = runner.invoke(app, [*args, *small, *levers, "--device", "cpu", "--no-baselines"])
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "report.json").read_text())["config"]
    assert config["transition_head"] is True
    assert (config["label_smoothing"], config["contrastive_weight"]) == (0.1, 0.1)
    assert config["weight_ema"] == 0.99
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(model_dir)])
    assert result.exit_code == 0, result.output
    meta = ModelMetadata.load(model_dir)
    assert meta.transition_head and meta.explains
    assert meta.onnx_outputs[-2:] == ["successor_items", "successor_scores"]


def test_train_device_cuda_fails_clearly_without_cuda(
    app: typer.Typer, event_log: Path, tmp_path: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args = ["train", str(event_log), "--format", "events", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, "--device", "cuda"])
    assert result.exit_code == 2, result.output  # a usage error, before any data is read
    assert "CUDAisnotavailable" in _flat(result.output)
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, [*args, "--device", "tpu"])
    assert result.exit_code == 2 and "auto,cpu,cudaorcuda:N" in _flat(result.output)


def test_tune_searches_on_validation_and_writes_the_best_config(
    app: typer.Typer, event_log: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    result = CliRunner().invoke(
        app,
        [
            "tune",
            str(event_log),
            "--format",
            "events",
            "--out",
            str(out),
            "--budget-minutes",
            "3",
            "--trials",
            "2",
            "--epochs",
            "2",
            "--max-len",
            "20",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "testcasesarenotused" in _flat(result.output)
    best = json.loads((out / "best_config.json").read_text())
    assert best["n_trials"] == 2 and best["config"]["max_len"] == 20
    assert 0.0 < best["best_value"] <= 1.0
    assert best["command"].startswith("recstream ")
    assert (out / "search.png").stat().st_size > 1000
    assert len((out / "trials.csv").read_text().splitlines()) == 3
