"""`recstream tune`'s engine: Optuna on validation only, pruning, budget, outputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from models.config import TrainConfig
from models.splits import leave_one_out
from models.synthetic import SyntheticShop
from models.tune import TuneResult, tune, write_results


def _split(shop: SyntheticShop):  # type: ignore[no-untyped-def]
    seqs: dict[str, list[str]] = {}
    for it in sorted(shop.interactions(), key=lambda i: i.ts):
        seqs.setdefault(it.user_id, []).append(it.item_id)
    return leave_one_out(seqs)


def _small(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    # A cheap space for the test: the real one (`suggest_config`) is exercised below.
    return replace(
        base,
        lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        dropout=trial.suggest_float("dropout", 0.0, 0.3),
    )


@pytest.fixture(scope="module")
def result(tiny_shop: SyntheticShop, tiny_config: TrainConfig) -> TuneResult:
    split = _split(tiny_shop)
    base = replace(tiny_config, epochs=4, val_patience=0)
    return tune(
        split.train,
        split.valid,
        base,
        budget_minutes=5,
        n_trials=5,
        seed=1,
        # Prune anything below the best earlier trial at the same epoch, from epoch 1.
        pruner=optuna.pruners.PercentilePruner(99.0, n_startup_trials=1, n_warmup_steps=0),
        suggest=_small,
    )


def test_best_trial_is_the_best_validation_value(result: TuneResult) -> None:
    complete = [r for r in result.trials if r.state == "COMPLETE"]
    assert complete and len(result.trials) == 5
    assert result.best_value == max(r.value or 0.0 for r in complete)
    best = result.trials[result.best_trial]
    assert result.best_config.lr == pytest.approx(best.params["lr"])
    assert result.best_config.dropout == pytest.approx(best.params["dropout"])
    # The searched values differ between trials (the sampler explores).
    assert len({r.params["lr"] for r in result.trials}) == 5


def test_bad_trials_are_pruned_early(result: TuneResult) -> None:
    pruned = [r for r in result.trials if r.state == "PRUNED"]
    assert pruned, [(r.state, r.curve) for r in result.trials]
    assert all(len(r.curve) < 4 for r in pruned)  # stopped before the 4 epochs


def test_results_written(result: TuneResult, tmp_path: Path) -> None:
    path = write_results(result, tmp_path, extra={"data": "synthetic"})
    best = json.loads(path.read_text())
    assert best["best_value"] == result.best_value
    assert "test" in best["selection"] and best["data"] == "synthetic"
    TrainConfig(**best["config"])  # loadable as it is
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + len(result.trials)
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_space_draws_valid_configs(tiny_config: TrainConfig) -> None:
    from models.tune import suggest_config

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        config = suggest_config(study.ask(), tiny_config)
        assert config.dim % config.n_heads == 0 and 3e-4 <= config.lr <= 5e-3


def test_budget_and_validation_are_required(
    tiny_shop: SyntheticShop, tiny_config: TrainConfig
) -> None:
    split = _split(tiny_shop)
    with pytest.raises(ValueError, match="validation"):
        tune(split.train, [], tiny_config, budget_minutes=1)
    with pytest.raises(ValueError, match="budget"):
        tune(split.train, split.valid, tiny_config, budget_minutes=0)
