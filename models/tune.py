"""Hyper-parameter search with Optuna, on validation cases only, within a time budget.

`tune` runs an Optuna study (TPE sampler, median pruner): every trial trains a model
with `train_model` on the training interactions and reports validation NDCG@10 after
each epoch, so a trial that is clearly worse than the median of earlier trials at the
same epoch is stopped early. The test cases are not an argument: nothing here can touch
them. The study stops launching trials when the budget is spent, and no trial runs
past it. `write_results` stores the best configuration (loadable by `TrainConfig(**...)`),
every trial's parameters and curve, and a PNG of the search.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from models.config import TrainConfig
from models.interactions import Interaction
from models.splits import EvalCase
from models.train import SELECTION_METRIC, train_model
from models.trained import EpochStats

__all__ = ["SEARCH_SPACE", "TrialRecord", "TuneResult", "suggest_config", "tune", "write_results"]

logger = logging.getLogger("recstream.models.tune")

#: The searched hyper-parameters and their ranges (documented in `recstream tune --help`).
SEARCH_SPACE: dict[str, str] = {
    "lr": "log-uniform 3e-4 .. 5e-3",
    "dropout": "uniform 0.1 .. 0.6",
    "dim": "one of 64, 128, 256",
    "n_layers": "one of 1, 2, 3",
    "temperature": "log-uniform 0.03 .. 0.2 (cosine scoring)",
    "lr_decay": "one of 0.3, 1.0",
    "weight_decay": "one of 0, 1e-4, 1e-2",
}


def suggest_config(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """`base` with the searched fields drawn for `trial` (heads stay a divisor of dim)."""
    dim = trial.suggest_categorical("dim", [64, 128, 256])
    return replace(
        base,
        lr=trial.suggest_float("lr", 3e-4, 5e-3, log=True),
        dropout=trial.suggest_float("dropout", 0.1, 0.6),
        dim=dim,
        n_heads=math.gcd(base.n_heads, dim),
        n_layers=trial.suggest_categorical("n_layers", [1, 2, 3]),
        temperature=trial.suggest_float("temperature", 0.03, 0.2, log=True),
        lr_decay=trial.suggest_categorical("lr_decay", [0.3, 1.0]),
        weight_decay=trial.suggest_categorical("weight_decay", [0.0, 1e-4, 1e-2]),
    )


@dataclass(slots=True)
class TrialRecord:
    """One trial: its parameters, state and validation curve.

    Attributes:
        number: Optuna's trial number (0-based).
        params: The drawn hyper-parameters.
        state: "COMPLETE", "PRUNED" or "FAIL".
        value: Best validation NDCG@10 reached (None if it never evaluated).
        curve: Validation NDCG@10 after each evaluated epoch.
        minutes: Wall time of the trial.
    """

    number: int
    params: dict[str, Any]
    state: str
    value: float | None
    curve: list[float] = field(default_factory=list)
    minutes: float = 0.0


@dataclass(slots=True)
class TuneResult:
    """What `tune` found.

    Attributes:
        best_config: The best trial's full `TrainConfig`.
        best_value: Its validation NDCG@10.
        best_trial: Its number.
        trials: Every trial, in order.
        minutes: Wall time of the whole search.
    """

    best_config: TrainConfig
    best_value: float
    best_trial: int
    trials: list[TrialRecord]
    minutes: float


def tune(
    train: Sequence[Interaction],
    valid: Sequence[EvalCase],
    base: TrainConfig,
    *,
    budget_minutes: float,
    n_trials: int | None = None,
    trial_minutes: float | None = None,
    item_attributes: Mapping[str, Sequence[str]] | None = None,
    seed: int = 42,
    pruner: optuna.pruners.BasePruner | None = None,
    suggest: Callable[[optuna.Trial, TrainConfig], TrainConfig] = suggest_config,
) -> TuneResult:
    """Search hyper-parameters on the validation cases.

    Args:
        train: Training interactions.
        valid: Validation cases (the only cases any trial is ranked on).
        base: Settings that are not searched (epochs, patience, threads, device...).
        budget_minutes: Wall-clock budget of the whole search; the last trial's own
            budget is cut to what is left.
        n_trials: Stop after this many trials (None: until the budget is spent).
        trial_minutes: Budget of one trial (None: `base.max_minutes`, else unlimited).
        item_attributes: Side features, as for `train_model`.
        seed: Sampler seed (trials also train with `base.seed`).
        pruner: Optuna pruner (default: median of earlier trials at the same epoch,
            after two epochs and two finished trials).
        suggest: Draws a trial's config from `base` (default `suggest_config`).

    Returns:
        The best configuration and every trial.

    Raises:
        ValueError: Without validation cases or a positive budget; RuntimeError when no
            trial completed.
    """
    if not valid:
        raise ValueError("tuning needs validation cases")
    if not budget_minutes > 0:
        raise ValueError("budget_minutes must be > 0")
    t0 = time.perf_counter()
    deadline = t0 + budget_minutes * 60
    per_trial = trial_minutes if trial_minutes is not None else base.max_minutes
    records: list[TrialRecord] = []
    configs: dict[int, TrainConfig] = {}

    def objective(trial: optuna.Trial) -> float:
        left = (deadline - time.perf_counter()) / 60
        if left <= 0:
            raise optuna.TrialPruned("budget spent")
        config = replace(suggest(trial, base), max_minutes=min(left, per_trial or left))
        configs[trial.number] = config
        record = TrialRecord(trial.number, dict(trial.params), "RUNNING", None)
        records.append(record)
        started = time.perf_counter()
        pruned = False

        def on_epoch(stats: EpochStats) -> bool:
            nonlocal pruned
            if SELECTION_METRIC not in stats.valid:
                return False
            value = stats.valid[SELECTION_METRIC]
            record.curve.append(value)
            record.value = max(record.curve)
            trial.report(value, stats.epoch)
            pruned = trial.should_prune()
            return pruned

        try:
            train_model(
                train, config, valid=valid, item_attributes=item_attributes, on_epoch=on_epoch
            )
        except Exception:
            record.state = "FAIL"
            raise
        finally:
            record.minutes = (time.perf_counter() - started) / 60
        logger.info("trial %d %s: %s", trial.number, trial.params, record.curve)
        if pruned:
            record.state = "PRUNED"
            raise optuna.TrialPruned(f"pruned after {len(record.curve)} evaluations")
        if record.value is None:
            record.state = "FAIL"
            raise RuntimeError("the trial never evaluated on validation")
        record.state = "COMPLETE"
        return record.value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=budget_minutes * 60,
        catch=(RuntimeError,),
    )
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    if not complete:
        raise RuntimeError(
            f"no trial completed within {budget_minutes} minutes ({len(records)} started)"
        )
    best = max(complete, key=lambda r: r.value or 0.0)
    return TuneResult(
        best_config=configs[best.number],
        best_value=float(best.value or 0.0),
        best_trial=best.number,
        trials=records,
        minutes=(time.perf_counter() - t0) / 60,
    )


def write_results(result: TuneResult, out: Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``best_config.json``, ``trials.csv`` and ``search.png`` into `out`.

    Returns:
        The path of ``best_config.json``.
    """
    out.mkdir(parents=True, exist_ok=True)
    best = {
        "selection": f"validation {SELECTION_METRIC} (test cases never used)",
        "best_trial": result.best_trial,
        "best_value": result.best_value,
        "config": {k: v for k, v in asdict(result.best_config).items() if k != "max_minutes"},
        "search_space": SEARCH_SPACE,
        "n_trials": len(result.trials),
        "states": {
            s: sum(r.state == s for r in result.trials) for s in ("COMPLETE", "PRUNED", "FAIL")
        },
        "minutes": round(result.minutes, 2),
        **(extra or {}),
    }
    path = out / "best_config.json"
    path.write_text(json.dumps(best, indent=2) + "\n")
    names = sorted({k for r in result.trials for k in r.params})
    with (out / "trials.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial", "state", "value", "minutes", "epochs", *names])
        for r in result.trials:
            writer.writerow(
                [r.number, r.state, r.value, round(r.minutes, 2), len(r.curve)]
                + [r.params.get(k) for k in names]
            )
    _plot(result, out / "search.png")
    return path


def _plot(result: TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in result.trials:
        if not r.curve:
            continue
        style = {"COMPLETE": "-", "PRUNED": ":", "FAIL": "--"}.get(r.state, "-")
        width = 2.5 if r.number == result.best_trial else 1.0
        left.plot(range(1, len(r.curve) + 1), r.curve, style, lw=width, label=f"#{r.number}")
    left.set_xlabel("evaluation (epoch)")
    left.set_ylabel(f"validation {SELECTION_METRIC}")
    left.set_title("trial curves (dotted: pruned; thick: best)")
    numbers = [r.number for r in result.trials if r.value is not None]
    values = [r.value or 0.0 for r in result.trials if r.value is not None]
    colors = [
        "tab:blue" if r.state == "COMPLETE" else "tab:gray"
        for r in result.trials
        if r.value is not None
    ]
    right.scatter(numbers, values, c=colors)
    running: list[float] = []
    for r in result.trials:
        if r.state == "COMPLETE" and r.value is not None:
            running.append(max([r.value, *running[-1:]]))
        elif running:
            running.append(running[-1])
        else:
            running.append(math.nan)
    right.step(
        [r.number for r in result.trials],
        running,
        where="post",
        color="tab:red",
        label="best so far",
    )
    right.set_xlabel("trial")
    right.set_ylabel(f"validation {SELECTION_METRIC}")
    right.set_title("search history (grey: pruned)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
