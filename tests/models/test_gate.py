"""The retraining gate, and `recstream train --from-archive ... --store --promote`."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from deploy.model_cli import register
from models.export import export_onnx
from models.gate import GATE_METRICS, decide, run_gate
from models.metadata import CHECKPOINT_FILENAME
from models.splits import EvalCase, time_split
from models.store import ModelStore
from models.synthetic import SyntheticShop
from models.trained import TrainedModel
from tests.models.test_archive import event, write_archive

FIGURES = {"hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@20"}


@pytest.fixture(scope="module")
def cases(tiny_shop: SyntheticShop) -> list[EvalCase]:
    return time_split(tiny_shop.interactions(), max_cases=300, seed=1).test


@pytest.fixture(scope="module")
def random_model_dir(tiny_trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's architecture and vocabulary with fresh random weights."""
    crippled = copy.deepcopy(tiny_trained)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in crippled.module.parameters():
            param.normal_(0.0, 0.5)
    out = tmp_path_factory.mktemp("random") / "model"
    return export_onnx(crippled, out, model_version="random-v1")


def test_decide() -> None:
    good = dict.fromkeys(GATE_METRICS, 0.30)
    bad = dict.fromkeys(GATE_METRICS, 0.10)
    assert decide(good, bad, metric="ndcg@10", margin=0.0, n_cases=5)[0]
    assert not decide(bad, good, metric="ndcg@10", margin=0.0, n_cases=5)[0]
    assert not decide(good, good, metric="ndcg@10", margin=0.0, n_cases=5)[0]  # a tie keeps
    assert not decide(good, bad, metric="hr@10", margin=0.25, n_cases=5)[0]
    promote, reason = decide(bad, None, metric="mrr@20", margin=0.5, n_cases=0)
    assert promote and "no serving model" in reason
    assert not decide(good, bad, metric="ndcg@10", margin=0.0, n_cases=0)[0]
    with pytest.raises(ValueError, match="gate metric"):
        decide(good, bad, metric="auc", margin=0.0, n_cases=5)


def test_gate_refuses_a_random_candidate_and_promotes_the_trained_one(
    tiny_model_dir: Path, random_model_dir: Path, cases: list[EvalCase]
) -> None:
    refused = run_gate(random_model_dir, tiny_model_dir, cases, threads=1)
    assert not refused.promote and "serving model is kept" in refused.reason
    assert refused.serving is not None and refused.serving["ndcg@10"] > refused.candidate["ndcg@10"]
    section = refused.to_dict()
    assert section["decision"] == "keep" and section["serving"]["version"] == "test-v1"
    assert (
        FIGURES
        <= section["candidate"]["metrics"].keys()
        <= {*FIGURES, *section["serving"]["metrics"]}
    )
    assert section["n_cases"] == len(cases)

    promoted = run_gate(tiny_model_dir, random_model_dir, cases, metric="hr@10", threads=1)
    assert promoted.promote and "beats" in promoted.reason
    # The same model against itself is a tie: not better, so the serving one stays.
    assert not run_gate(tiny_model_dir, tiny_model_dir, cases, threads=1).promote


def test_train_from_archive_gates_promotion(tiny_shop: SyntheticShop, tmp_path: Path) -> None:
    archive = write_archive(
        tmp_path / "archive",
        [
            event(
                e.event_id,
                e.user_id,
                e.item_id,
                e.ts,
                e.event_type,
                e.channel,
                order_id=e.order_id,
                quantity=e.quantity,
                price=e.price,
                dwell_ms=e.dwell_ms,
            )
            for e in tiny_shop.events
        ],
    )
    store = tmp_path / "store"
    store.mkdir()  # a fresh, empty volume: the first retrain has nothing to warm start from
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    common = ["train", "--from-archive", str(archive), "--days", "12", "--holdout-days", "2"]
    common += ["--device", "cpu", "--max-len", "20", "--dim", "32", "--threads", "1"]
    common += ["--max-cases", "300", "--no-baselines", "--store", str(store), "--promote"]

    first = tmp_path / "first"
    result = runner.invoke(
        app, [*common, "--out", str(first), "--epochs", "4", "--init-from", str(store)]
    )
    assert result.exit_code == 0, result.output
    assert "training from scratch" in result.output
    gate = json.loads((first / "report.json").read_text())["gate"]
    assert gate["decision"] == "promote" and gate["promoted"] and gate["serving"] is None
    assert "no serving model" in gate["reason"]
    model_store = ModelStore(store)
    serving = model_store.current()
    assert serving == gate["candidate"]["version"] == gate["current"]
    assert (model_store.current_dir() / CHECKPOINT_FILENAME).is_file()

    # A crippled candidate (random weights that barely move) is published but not promoted.
    crippled = tmp_path / "crippled"
    result = runner.invoke(
        app, [*common, "--out", str(crippled), "--epochs", "1", "--lr", "1e-9", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((crippled / "report.json").read_text())
    gate = report["gate"]
    assert gate["decision"] == "keep" and not gate["promoted"]
    assert gate["metric"] == "ndcg@10" and gate["margin"] == 0.0
    assert gate["serving"]["version"] == serving and gate["current"] == serving
    assert (
        FIGURES <= gate["candidate"]["metrics"].keys()
        and FIGURES <= gate["serving"]["metrics"].keys()
    )
    assert gate["serving"]["metrics"]["ndcg@10"] > gate["candidate"]["metrics"]["ndcg@10"]
    assert "does not beat" in gate["reason"]
    assert model_store.current() == serving and len(model_store.versions()) == 2
    assert report["data_files"] == [str(archive)]

    # The next retrain warm-starts from CURRENT's checkpoint in the store.
    warm = tmp_path / "warm"
    result = runner.invoke(
        app, [*common, "--out", str(warm), "--epochs", "1", "--init-from", str(store)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((warm / "report.json").read_text())
    assert report["training"]["init_from"]["checkpoint"].endswith(
        f"{serving}/{CHECKPOINT_FILENAME}"
    )
    assert report["gate"]["serving"]["version"] == serving

    result = runner.invoke(app, [*common, "--out", str(warm), "--gate-metric", "auc"])
    assert result.exit_code != 0 and "gate-metric" in result.output


def test_train_from_archive_argument_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    archive = write_archive(tmp_path / "archive", [event("a", "u", "i", 1_700_000_000.0)])
    result = runner.invoke(
        app, ["train", str(tmp_path / "x.jsonl"), "--from-archive", str(archive)]
    )
    assert result.exit_code != 0 and "exactlyoneofDATAor--from-archive" in _flat(result.output)
    # A store whose CURRENT was published before versions kept their checkpoint.
    store = ModelStore(tmp_path / "store")
    staging = store.staging_dir()
    shutil.copytree(tiny_model_dir, staging)
    store.promote(store.publish(staging))
    args = ["train", "--from-archive", str(archive), "--init-from", str(store.root)]
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and "nocheckpoint.pt" in _flat(result.output)
    # One day folder: nothing left to train on once the newest day is held out.
    result = runner.invoke(app, ["train", "--from-archive", str(archive), "--device", "cpu"])
    assert result.exit_code != 0 and "atleastonemoreday" in _flat(result.output)


def _flat(output: str) -> str:
    """CLI output without whitespace and box characters (rich wraps error panels)."""
    return re.sub(r"[\s│╭╮╰╯─]", "", output)


def test_a_passing_candidate_is_not_promoted_while_an_experiment_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CURRENT is the control arm of a running A/B test: the gate publishes only."""
    import models.gate
    from deploy import model_cli
    from models.experiment import start_experiment
    from models.gate import GateDecision
    from tests.models.test_experiment import make_store

    store = make_store(tmp_path / "store", "v1", "v2", "v3")
    store.promote("v1")
    start_experiment(store, "v2", 0.1)
    monkeypatch.setattr(model_cli, "_export_to_store", lambda *_a, **_k: "v3")

    def passing(candidate: Path, serving: Path | None, cases: object, **kw: object) -> GateDecision:
        return GateDecision(
            metric="ndcg@10", margin=0.0, promote=True, reason="beats it", n_cases=10,
            candidate_version="v3", candidate={"ndcg@10": 0.2},
            serving_version="v1", serving={"ndcg@10": 0.1},
        )  # fmt: skip

    monkeypatch.setattr(models.gate, "run_gate", passing)
    section = model_cli._publish_with_gate(
        None, store.root, [], promote=True, metric="ndcg@10", margin=0.0, threads=1
    )
    assert not section["promoted"] and store.current() == "v1"
    assert "experiment is running" in section["reason"]
