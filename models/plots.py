"""Training-curve and metrics figures (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in containers / CI

import matplotlib.pyplot as plt  # noqa: E402 - backend must be chosen first

from models.trained import TrainingStats  # noqa: E402

__all__ = ["plot_metrics", "plot_training_curve"]


def plot_training_curve(stats: TrainingStats, path: Path) -> Path:
    """Training loss and validation HR@10 / NDCG@10 per epoch, best epoch marked.

    Args:
        stats: Training statistics.
        path: Output PNG.

    Returns:
        `path`.
    """
    epochs = [e.epoch for e in stats.epochs]
    fig, ax_loss = plt.subplots(figsize=(7, 4))
    ax_loss.plot(epochs, [e.loss for e in stats.epochs], color="tab:blue", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy (nats)", color="tab:blue")
    evaluated = [e for e in stats.epochs if e.valid]
    if evaluated:
        ax_val = ax_loss.twinx()
        for key, color in (("ndcg@10", "tab:red"), ("hr@10", "tab:orange")):
            ax_val.plot(
                [e.epoch for e in evaluated],
                [e.valid.get(key, float("nan")) for e in evaluated],
                color=color,
                marker=".",
                label=f"valid {key}",
            )
        ax_val.set_ylabel("validation metric")
        ax_val.legend(loc="center right")
    if stats.best_epoch:
        ax_loss.axvline(stats.best_epoch, color="grey", linestyle=":", label="best epoch")
    ax_loss.legend(loc="upper right")
    ax_loss.set_title(f"training curve ({stats.stop_reason}, {stats.seconds / 60:.1f} min)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    keys: Sequence[str] = ("hr@10", "ndcg@10", "hr@20", "mrr@20"),
    published: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Grouped bars of test metrics per model (plus optional published numbers).

    Args:
        rows: {"model": name, metric: value, ...} per model.
        path: Output PNG.
        keys: Metrics to draw.
        published: Optional {label: {metric: value}} drawn as extra hatched bars.

    Returns:
        `path`.
    """
    series = [(str(r["model"]), {k: float(r.get(k, 0.0)) for k in keys}, False) for r in rows]
    for label, values in (published or {}).items():
        series.append((label, {k: float(values.get(k, 0.0)) for k in keys}, True))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (label, values, hatched) in enumerate(series):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(
            xs,
            [values[k] for k in keys],
            width=width,
            label=label,
            hatch="//" if hatched else None,
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], list(keys))
    ax.set_ylabel("test metric (full ranking)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
