"""One harness for every dataset and model: load, split, train, rank the full catalog.

`load_split` turns a dataset on disk into a `SplitData`; `evaluate_all` ranks the test
cases with the transformer and the baselines under the same protocol; `write_report`
stores the numbers (JSON) and figures (PNG) next to the checkpoint.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from models.datasets import (
    read_event_log,
    read_item_attributes,
    read_prefix_targets,
    read_sequences,
    read_sessions,
)
from models.evaluate import ModuleRanker
from models.ranking import (
    CooccurrenceRanker,
    PopularityRanker,
    Ranker,
    RankingReport,
    TransitionRanker,
    evaluate_ranker,
)
from models.splits import EvalCase, SplitData, leave_one_out, session_split, time_split
from models.trained import TrainedModel
from models.vocab import group_timelines

__all__ = [
    "DatasetFormat",
    "EvaluationRun",
    "baseline_rankers",
    "evaluate_all",
    "load_split",
    "write_report",
]

#: Dataset formats understood by `load_split`.
DatasetFormat = Literal["sequences", "sessions", "events"]


def load_split(
    fmt: DatasetFormat,
    path: Path,
    *,
    test_path: Path | None = None,
    attributes_path: Path | None = None,
    max_train_sessions: int | None = None,
    max_cases: int | None = 20_000,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> SplitData:
    """Read a dataset and split it with the protocol of its format.

    Args:
        fmt: "sequences" (``user item...`` lines, leave-one-out), "sessions" (training
            sessions + `test_path` prefix/target file) or "events" (recstream event log,
            time split).
        path: The data file (training sessions for "sessions").
        test_path: The ``prefix<TAB>target`` file (required for "sessions").
        attributes_path: Optional ``{item: [attribute, ...]}`` JSON (side features).
        max_train_sessions: "sessions" only: train on the most recent N sessions.
        max_cases: Validation cases ("sessions": the newest sessions that give them are
            held out, see `session_split`) / cases per window ("events").
        valid_fraction: Share held out for validation: at most this share of the newest
            training sessions ("sessions") or the events before the test window ("events").
        seed: Sampling seed for capped case lists.

    Returns:
        The split (with `item_attributes` when given).

    Raises:
        ValueError: On an unknown format or a missing test file.
    """
    if fmt == "sequences":
        split = leave_one_out(read_sequences(path))
    elif fmt == "sessions":
        if test_path is None:
            raise ValueError("the sessions format needs --test (prefix<TAB>target file)")
        split = session_split(
            read_sessions(path),
            read_prefix_targets(test_path),
            max_train_sessions=max_train_sessions,
            max_valid_cases=max_cases,
            valid_fraction=valid_fraction,
            seed=seed,
        )
    elif fmt == "events":
        split = time_split(
            read_event_log(path),
            valid_fraction=valid_fraction,
            max_cases=max_cases,
            seed=seed,
        )
    else:
        raise ValueError(f"unknown dataset format {fmt!r}")
    if attributes_path is not None:
        split.item_attributes = read_item_attributes(attributes_path)
    return split


def baseline_rankers(trained: TrainedModel, split: SplitData) -> list[Ranker]:
    """Most-popular, item-transition and co-occurrence baselines on the same training data."""
    timelines = [
        [step[0] for step in steps]
        for steps in group_timelines(split.train, trained.vocab).values()
    ]
    n_items = trained.vocab.n_items
    return [
        PopularityRanker(trained.popularity),
        TransitionRanker(timelines, trained.popularity, n_items),
        CooccurrenceRanker(timelines, trained.popularity, n_items),
    ]


@dataclass(slots=True)
class EvaluationRun:
    """Test results of one model and its baselines.

    Attributes:
        reports: One report per ranker, the transformer first.
        protocol: The split's description.
        n_train_interactions: Training interactions.
    """

    reports: list[RankingReport]
    protocol: str
    n_train_interactions: int

    def table(self) -> list[dict[str, Any]]:
        """Rows {"model": name, **metrics, "eval_seconds": s} for printing / JSON."""
        return [
            {"model": r.name, **r.metrics, "eval_seconds": round(r.seconds, 2)}
            for r in self.reports
        ]


def evaluate_all(
    trained: TrainedModel,
    split: SplitData,
    *,
    cases: Sequence[EvalCase] | None = None,
    baselines: bool = True,
    exclude_history: bool = False,
    extra: Sequence[Ranker] = (),
) -> EvaluationRun:
    """Rank `cases` (default: the test cases) with the model, `extra` and the baselines.

    Args:
        trained: The transformer.
        split: The split it was trained on (baselines are fitted on `split.train`).
        cases: Cases to rank (default `split.test`).
        baselines: Also run the baselines.
        exclude_history: Mask history items before ranking (off in published protocols).
        extra: Further rankers to include (e.g. an ONNX variant).

    Returns:
        The run.
    """
    todo = list(split.test if cases is None else cases)
    rankers: list[Ranker] = [ModuleRanker(trained.module), *extra]
    if baselines:
        rankers.extend(baseline_rankers(trained, split))
    reports = [
        evaluate_ranker(r, todo, trained.vocab.index, exclude_history=exclude_history)
        for r in rankers
    ]
    return EvaluationRun(reports, split.protocol, len(split.train))


def write_report(
    out_dir: Path,
    trained: TrainedModel,
    run: EvaluationRun,
    *,
    command: str,
    data_files: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `report.json` and the training-curve PNG into `out_dir`.

    Args:
        out_dir: Run directory.
        trained: The trained model (its stats and config are recorded).
        run: Test results.
        command: The exact command line that produced this run.
        data_files: Input files.
        extra: More JSON-ready fields.

    Returns:
        The path of `report.json`.
    """
    from models.plots import plot_metrics, plot_training_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "data_files": list(data_files),
        "protocol": run.protocol,
        "machine": _machine(),
        "config": _config_dict(trained),
        "training": {
            "seconds": round(trained.stats.seconds, 1),
            "epochs_run": len(trained.stats.epochs),
            "best_epoch": trained.stats.best_epoch,
            "stop_reason": trained.stats.stop_reason,
            "device": trained.stats.device,
            "n_train_interactions": run.n_train_interactions,
            "n_items": trained.vocab.n_items,
            "init_from": trained.stats.init_from,
            "curve": [
                {"epoch": e.epoch, "loss": e.loss, "seconds": e.seconds, "lr": e.lr, **e.valid}
                for e in trained.stats.epochs
            ],
        },
        "results": run.table(),
        **(dict(extra) if extra else {}),
    }
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot_training_curve(trained.stats, out_dir / "training_curve.png")
    plot_metrics(run.table(), out_dir / "metrics.png")
    return path


def _config_dict(trained: TrainedModel) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(trained.config)


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {platform.system()}"
