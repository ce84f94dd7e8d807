"""What a training run produces: `TrainedModel` with its `TrainingStats` per epoch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from models.config import TrainConfig
from models.network import Recommender
from models.vocab import ItemVocab

__all__ = ["EpochStats", "TrainedModel", "TrainingStats"]


@dataclass(frozen=True, slots=True)
class EpochStats:
    """Per-epoch training summary.

    Attributes:
        epoch: 1-based epoch number.
        loss: Mean training cross-entropy (nats) over the epoch's target positions.
        seconds: Wall time of the epoch (training only, without validation).
        valid: Validation metrics after this epoch (empty if not evaluated).
        lr: Learning rate the epoch trained with.
    """

    epoch: int
    loss: float
    seconds: float
    valid: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0


@dataclass(slots=True)
class TrainingStats:
    """Summary of a training run.

    Attributes:
        epochs: Per-epoch stats in order.
        seconds: Total wall time including data preparation and validation.
        n_interactions: Interactions consumed.
        n_users: Users with at least one interaction.
        n_windows: Training windows (sequences) per epoch.
        n_targets: Next-item targets per epoch.
        stopped_early: Whether patience or the time budget ended training before `epochs`.
        best_epoch: Epoch whose weights were kept (the last one without validation).
        stop_reason: "max_epochs", "patience", "time_budget" or "stopped" (by `on_epoch`).
        init_from: For a warm start (`train_model(init_from=...)`): the parent's data
            fingerprint, best epoch and how many item rows were carried over / new.
        device: The torch device the run trained on ("cpu", "cuda", ...; runs recorded
            before the setting existed trained on CPU).
    """

    epochs: list[EpochStats]
    seconds: float
    n_interactions: int
    n_users: int
    n_windows: int
    n_targets: int
    stopped_early: bool
    best_epoch: int = 0
    stop_reason: str = "max_epochs"
    init_from: dict[str, Any] | None = None
    device: str = "cpu"

    @property
    def epoch_losses(self) -> list[float]:
        """Mean training loss per epoch."""
        return [e.loss for e in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by checkpoints and reports)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingStats:
        """Inverse of `to_dict`."""
        fields = dict(data)
        fields["epochs"] = [EpochStats(**e) for e in fields["epochs"]]
        return cls(**fields)


@dataclass(slots=True)
class TrainedModel:
    """Everything needed to evaluate or export a trained model.

    Attributes:
        module: The trained network, on CPU and in eval mode.
        vocab: Item vocabulary.
        popularity: Interaction counts per item index (index 0 = padding = 0).
        config: The training configuration.
        stats: Training statistics.
        data_fingerprint: sha256 of the training interactions (see
            `fingerprint_interactions`).
        metrics: Optional evaluation metrics to carry into the model metadata.
        recent_popularity: Cold-start counts ("all" and per channel) over the newest
            part of the training data (see `recent_popularity`).
        attribute_names: Attribute ids in attribute-embedding order (row i + 1 is
            `attribute_names[i]`); empty without item attributes. Lets a warm start map
            attribute embeddings by name.
    """

    module: Recommender
    vocab: ItemVocab
    popularity: list[int]
    config: TrainConfig
    stats: TrainingStats
    data_fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)
    recent_popularity: dict[str, list[int]] = field(default_factory=dict)
    attribute_names: tuple[str, ...] = ()
