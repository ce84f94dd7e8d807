"""``recstream models experiment start | stop | status | promote``: A/B tests of model versions.

Registered under ``recstream models`` by `deploy.model_cli`. The experiment lives in
the model store (``EXPERIMENT``, see `models.experiment`); workers polling the store
start and stop serving the candidate within ``RECSTREAM_MODEL_RELOAD_INTERVAL_S``.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["ArmCounts", "experiment_app", "read_arm_counts"]

console = Console(stderr=True)
experiment_app = typer.Typer(
    help="A/B test a candidate version beside CURRENT on a share of users.",
    no_args_is_help=True,
)

StoreArg = Annotated[Path, typer.Argument(help="Model store root.")]
EVENT_TYPES = ("click", "browse", "purchase")


@dataclass
class ArmCounts:
    """Lists and hits (by event type) of one arm, summed over workers."""

    lists: float = 0.0
    hits: dict[str, float] = field(default_factory=dict)

    def rate(self, event_type: str) -> float:
        """Hits of ``event_type`` per list (0 without lists)."""
        return self.hits.get(event_type, 0.0) / self.lists if self.lists else 0.0


def read_arm_counts(
    pages: Iterable[str],
    versions: dict[str, str] | None = None,
    experiment: str | None = None,
) -> dict[str, ArmCounts]:
    """Sum ``recstream_recommendations_total`` and ``..._hits_total`` per arm.

    Args:
        pages: Prometheus text pages (one per worker's ``/metrics``).
        versions: if given, only count an arm's series of this model version
            (arm -> version), e.g. the candidate arm's candidate.
        experiment: if given, only count series whose ``experiment`` label is this
            experiment id (`models.experiment.Experiment.id`), in both arms: lists
            scored before the experiment (or in another one) are left out.
    """
    from prometheus_client.parser import text_string_to_metric_families

    arms: dict[str, ArmCounts] = {}
    for page in pages:
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                arm = sample.labels.get("arm")
                if arm is None or not sample.name.endswith("_total"):
                    continue
                if experiment is not None and sample.labels.get("experiment") != experiment:
                    continue
                if (
                    versions
                    and arm in versions
                    and sample.labels.get("model_version") != versions[arm]
                ):
                    continue
                counts = arms.setdefault(arm, ArmCounts())
                if sample.name == "recstream_recommendations_total":
                    counts.lists += sample.value
                elif sample.name == "recstream_recommendation_hits_total":
                    etype = sample.labels.get("event_type", "")
                    counts.hits[etype] = counts.hits.get(etype, 0.0) + sample.value
    return arms


def _fetch(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--metrics")
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310  # http(s) checked above
        text: str = resp.read().decode("utf-8")
    return text


@experiment_app.command("start")
def experiment_start(
    store: StoreArg,
    version: Annotated[str, typer.Argument(help="Candidate version (in the store, not CURRENT).")],
    share: Annotated[
        float, typer.Option(help="Fraction of users served by the candidate.", min=0.0, max=1.0)
    ] = 0.1,
    salt: Annotated[
        str | None, typer.Option(help="Hash salt for the user split (default: random).")
    ] = None,
) -> None:
    """Serve VERSION to a stable share of users beside CURRENT (replaces a running experiment)."""
    from models.experiment import start_experiment
    from models.store import ModelStore, StoreError

    try:
        experiment = start_experiment(ModelStore(store), version, share, salt)
    except StoreError as exc:
        console.print(f"[red]experiment refused:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"experiment started: {experiment.candidate} for {experiment.share:.1%} of users "
        f"(salt {experiment.salt})"
    )


@experiment_app.command("stop")
def experiment_stop(store: StoreArg) -> None:
    """End the experiment: every user back on CURRENT."""
    from models.experiment import stop_experiment
    from models.store import ModelStore

    experiment = stop_experiment(ModelStore(store))
    if experiment is None:
        console.print("no experiment was running")
    else:
        console.print(f"experiment stopped: {experiment.candidate}")


@experiment_app.command("promote")
def experiment_promote(store: StoreArg) -> None:
    """Make the candidate CURRENT and end the experiment (one command)."""
    from models.experiment import promote_candidate
    from models.store import ModelStore, StoreError

    try:
        experiment = promote_candidate(ModelStore(store))
    except StoreError as exc:
        console.print(f"[red]promotion refused:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"CURRENT -> {experiment.candidate}; experiment ended")


@experiment_app.command("status")
def experiment_status(
    store: StoreArg,
    metrics: Annotated[
        list[str],
        typer.Option("--metrics", help="A worker's /metrics URL (repeat for every worker)."),
    ],
) -> None:
    """Per-arm hit rates from the workers' /metrics, and a two-proportion z-test per event type.

    Only the running experiment's series count (their ``experiment`` label is its id),
    in both arms; the candidate arm counts only the candidate version's lists.
    """
    from models.experiment import CANDIDATE, CONTROL, read_experiment, two_proportion_z_test
    from models.store import ModelStore

    model_store = ModelStore(store)
    experiment = read_experiment(model_store)
    if experiment is None:
        console.print("no experiment is running")
    else:
        print(
            f"experiment: {experiment.candidate} for {experiment.share:.1%} of users, "
            f"since {experiment.started_at} (salt {experiment.salt}); "
            f"CURRENT {model_store.current()}"
        )
    versions = {CANDIDATE: experiment.candidate} if experiment is not None else None
    arms = read_arm_counts(
        (_fetch(url) for url in metrics),
        versions,
        experiment.id if experiment is not None else None,
    )
    control, candidate = arms.get(CONTROL, ArmCounts()), arms.get(CANDIDATE, ArmCounts())
    print(f"{'arm':10} {'lists':>10} " + " ".join(f"{t + ' rate':>14}" for t in EVENT_TYPES))
    for name, counts in ((CONTROL, control), (CANDIDATE, candidate)):
        rates = " ".join(f"{counts.rate(t):14.4%}" for t in EVENT_TYPES)
        print(f"{name:10} {counts.lists:10.0f} {rates}")
    for etype in EVENT_TYPES:
        z, p = two_proportion_z_test(
            round(control.hits.get(etype, 0.0)),
            round(control.lists),
            round(candidate.hits.get(etype, 0.0)),
            round(candidate.lists),
        )
        print(f"{etype:10} candidate - control: z = {z:+.3f}, p = {p:.4g}")
    print(
        "note: the test treats lists as independent, but users are what is randomised; "
        "a user's lists are correlated, so with heavy users the p-values are optimistic."
    )
