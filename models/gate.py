"""The retraining gate: promote a candidate only if it ranks better than the serving model.

Both models are exported ONNX directories and are ranked by the same harness
(`models.ranking.OnnxRanker` + `evaluate_ranker`, full catalog, nothing excluded) on
exactly the same cases, each through its own item vocabulary (a target a model has
never seen is a miss for that model). The candidate is promoted only if its gate
metric is strictly greater than the serving model's plus the margin; with no serving
model (an empty store) the first candidate is promoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.metadata import ModelMetadata
from models.ranking import OnnxRanker, evaluate_ranker
from models.splits import EvalCase

__all__ = ["GATE_METRICS", "GateDecision", "decide", "evaluate_model_dir", "run_gate"]

#: Metrics a gate may compare (all reported for both models).
GATE_METRICS: tuple[str, ...] = (
    "hr@5",
    "hr@10",
    "hr@20",
    "ndcg@5",
    "ndcg@10",
    "ndcg@20",
    "mrr@20",
)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The outcome of a gate, ready for report.json (`to_dict`).

    Attributes:
        metric: The compared metric (one of `GATE_METRICS`).
        margin: Required lead of the candidate over the serving model.
        promote: Whether the candidate passed.
        reason: Why, in one sentence.
        n_cases: Cases both models were ranked on.
        candidate_version: The candidate's model version.
        candidate: The candidate's figures (HR/NDCG@5/10/20, MRR@20, coverage, ...).
        serving_version: The serving (CURRENT) version, None for an empty store.
        serving: The serving model's figures, None for an empty store.
    """

    metric: str
    margin: float
    promote: bool
    reason: str
    n_cases: int
    candidate_version: str
    candidate: dict[str, float]
    serving_version: str | None
    serving: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the ``gate`` section of report.json)."""
        return {
            "metric": self.metric,
            "margin": self.margin,
            "decision": "promote" if self.promote else "keep",
            "reason": self.reason,
            "n_cases": self.n_cases,
            "candidate": {"version": self.candidate_version, "metrics": self.candidate},
            "serving": (
                None
                if self.serving_version is None
                else {"version": self.serving_version, "metrics": self.serving}
            ),
        }


def evaluate_model_dir(
    model_dir: Path, cases: Sequence[EvalCase], *, name: str, threads: int = 0
) -> dict[str, float]:
    """Full-ranking metrics of an exported model directory on `cases`.

    Args:
        model_dir: Directory with model.onnx + metadata.json.
        cases: The cases.
        name: Ranker name (for logs).
        threads: onnxruntime intra-op threads (0 = onnxruntime's default).

    Returns:
        HR/NDCG@5/10/20, MRR@20, coverage@10, n_cases, unknown_targets.
    """
    ranker = OnnxRanker(model_dir, threads=threads, name=name)
    items = ModelMetadata.load(Path(model_dir)).items
    index = {item: i for i, item in enumerate(items) if item is not None}
    return evaluate_ranker(ranker, cases, index).metrics


def decide(
    candidate: dict[str, float],
    serving: dict[str, float] | None,
    *,
    metric: str,
    margin: float,
    n_cases: int,
) -> tuple[bool, str]:
    """(promote, reason) for two models' figures on the same cases.

    Raises:
        ValueError: If `metric` is not one of `GATE_METRICS`.
    """
    if metric not in GATE_METRICS:
        raise ValueError(f"gate metric must be one of {', '.join(GATE_METRICS)}")
    if serving is None:
        return True, "the store has no serving model (no CURRENT): the first candidate is promoted"
    if n_cases == 0:
        return False, "no evaluation cases on the held-out days: the serving model is kept"
    cand, serv = candidate[metric], serving[metric]
    if cand > serv + margin:
        return True, (
            f"candidate {metric} {cand:.4f} beats the serving model's {serv:.4f} "
            f"by more than the margin {margin:g}"
        )
    return False, (
        f"candidate {metric} {cand:.4f} does not beat the serving model's {serv:.4f} "
        f"by more than the margin {margin:g}: the serving model is kept"
    )


def run_gate(
    candidate_dir: Path,
    serving_dir: Path | None,
    cases: Sequence[EvalCase],
    *,
    metric: str = "ndcg@10",
    margin: float = 0.0,
    threads: int = 0,
) -> GateDecision:
    """Rank `cases` with both models and decide whether the candidate replaces the serving one.

    Args:
        candidate_dir: The candidate's exported model directory.
        serving_dir: The serving (CURRENT) model directory, or None for an empty store.
        cases: The held-out cases.
        metric: Metric compared (one of `GATE_METRICS`).
        margin: The candidate must exceed the serving model's metric by more than this.
        threads: onnxruntime intra-op threads.

    Returns:
        The decision with both models' figures.

    Raises:
        ValueError: If `metric` is not one of `GATE_METRICS`.
    """
    if metric not in GATE_METRICS:
        raise ValueError(f"gate metric must be one of {', '.join(GATE_METRICS)}")
    todo = list(cases)
    candidate = evaluate_model_dir(candidate_dir, todo, name="candidate", threads=threads)
    serving = (
        None
        if serving_dir is None
        else evaluate_model_dir(serving_dir, todo, name="serving", threads=threads)
    )
    promote, reason = decide(candidate, serving, metric=metric, margin=margin, n_cases=len(todo))
    return GateDecision(
        metric=metric,
        margin=margin,
        promote=promote,
        reason=reason,
        n_cases=len(todo),
        candidate_version=ModelMetadata.load(Path(candidate_dir)).model_version,
        candidate=candidate,
        serving_version=(
            None if serving_dir is None else ModelMetadata.load(Path(serving_dir)).model_version
        ),
        serving=serving,
    )
