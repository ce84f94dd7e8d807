"""Train the sequential recommender on interactions (torch; offline only).

Pipeline: interactions -> item vocabulary + per-user timelines (sorted by ts) ->
fixed-length left-padded windows -> full-softmax next-item cross-entropy at every
position. The loop is split into small pieces (`build_vocab`, `build_training_windows`,
`_Trainer.train_epoch`, `_Trainer.should_stop`) so that validation-based early stopping,
checkpointing, sampled softmax or other data readers can be slotted in later.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from models.encoding import CHANNEL_INDEX, EVENT_TYPE_INDEX, PAD_INDEX, vocab_index
from models.interactions import Interaction, fingerprint_interactions
from models.network import SequentialRecommender

__all__ = [
    "EpochStats",
    "ItemVocab",
    "TrainConfig",
    "TrainedModel",
    "TrainingStats",
    "TrainingWindows",
    "build_training_windows",
    "build_vocab",
    "group_timelines",
    "train_model",
]

logger = logging.getLogger("recstream.models.train")

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyper-parameters and run settings for `train_model`.

    Attributes:
        max_len: Fixed sequence length (most recent events kept).
        dim: Model width.
        n_layers: Transformer blocks.
        n_heads: Attention heads.
        dropout: Dropout probability.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: Training windows per optimizer step.
        epochs: Maximum number of epochs.
        seed: Seed for parameter init, dropout and shuffling.
        max_k: Results per row of the exported graph (clamped to the catalog size).
        patience: Stop after this many epochs without a training-loss improvement larger
            than `min_delta` (0 disables). A later change can switch this to validation
            NDCG@10 via `_Trainer.should_stop`.
        min_delta: Minimum loss decrease (nats) that counts as an improvement.
        grad_clip: Max global gradient norm (0 disables).
        device: Torch device for training ("cpu", "cuda", ...); the result is moved to CPU.
        num_threads: torch intra-op threads while training (None leaves torch's setting).
    """

    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 20
    seed: int = 42
    max_k: int = 100
    patience: int = 3
    min_delta: float = 1e-3
    grad_clip: float = 1.0
    device: str = "cpu"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_len < 2:
            raise ValueError("max_len must be >= 2")
        if self.dim % self.n_heads:
            raise ValueError("dim must be divisible by n_heads")
        if self.batch_size < 1 or self.epochs < 1 or self.max_k < 1:
            raise ValueError("batch_size, epochs and max_k must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class ItemVocab:
    """Bidirectional external item id <-> model index mapping (index 0 = padding).

    Attributes:
        ids: External ids in index order; `ids[0]` is None (padding).
    """

    ids: tuple[str | None, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.ids or self.ids[0] is not None:
            raise ValueError("ids[0] must be None (padding)")
        object.__setattr__(self, "index", vocab_index(self.ids))

    @property
    def n_items(self) -> int:
        """Number of real items (excluding padding)."""
        return len(self.ids) - 1

    def __len__(self) -> int:
        """Vocabulary size including the padding index."""
        return len(self.ids)

    def decode(self, index: int) -> str:
        """External id of a model index (raises KeyError for padding / out of range)."""
        if index <= 0 or index >= len(self.ids):
            raise KeyError(index)
        item = self.ids[index]
        assert item is not None  # guaranteed by the padding check above
        return item


@dataclass(frozen=True, slots=True)
class EpochStats:
    """Per-epoch training summary.

    Attributes:
        epoch: 1-based epoch number.
        loss: Mean training cross-entropy (nats) over the epoch's target positions.
        seconds: Wall time of the epoch.
    """

    epoch: int
    loss: float
    seconds: float


@dataclass(slots=True)
class TrainingStats:
    """Summary of a training run.

    Attributes:
        epochs: Per-epoch stats in order.
        seconds: Total wall time including data preparation.
        n_interactions: Interactions consumed.
        n_users: Users with at least one interaction.
        n_windows: Training windows (sequences) per epoch.
        n_targets: Next-item targets per epoch.
        stopped_early: Whether `patience` ended training before `epochs`.
    """

    epochs: list[EpochStats]
    seconds: float
    n_interactions: int
    n_users: int
    n_windows: int
    n_targets: int
    stopped_early: bool

    @property
    def epoch_losses(self) -> list[float]:
        """Mean training loss per epoch."""
        return [e.loss for e in self.epochs]


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
    """

    module: SequentialRecommender
    vocab: ItemVocab
    popularity: list[int]
    config: TrainConfig
    stats: TrainingStats
    data_fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrainingWindows:
    """Left-padded training windows: inputs at positions t, next item as target at t.

    Attributes:
        item_seq: int64 [N, L] input items.
        type_seq: int64 [N, L] input event types.
        channel_seq: int64 [N, L] input channels.
        targets: int64 [N, L] next item per position (0 = no target).
    """

    item_seq: IntArray
    type_seq: IntArray
    channel_seq: IntArray
    targets: IntArray

    def __len__(self) -> int:
        """Number of windows (rows)."""
        return int(self.item_seq.shape[0])


# One encoded step: (item index, event type index, channel index).
_Step = tuple[int, int, int]


def build_vocab(interactions: Sequence[Interaction]) -> tuple[ItemVocab, list[int]]:
    """Build the item vocabulary (sorted external ids) and per-index popularity counts.

    Sorting the ids makes the vocabulary independent of event order.

    Args:
        interactions: Training interactions.

    Returns:
        (vocab, popularity) where popularity[i] counts interactions with item index i.
    """
    counts = Counter(it.item_id for it in interactions)
    vocab = ItemVocab((None, *sorted(counts)))
    popularity = [0] + [counts[item] for item in vocab.ids[1:] if item is not None]
    return vocab, popularity


def group_timelines(
    interactions: Sequence[Interaction], vocab: ItemVocab
) -> dict[str, list[_Step]]:
    """Group interactions per user, ordered by ts (ties keep input order), and encode.

    Items missing from `vocab` are skipped; unknown event types / channels map to 0.

    Args:
        interactions: Interactions in any order.
        vocab: Item vocabulary.

    Returns:
        user_id -> oldest-first list of (item, type, channel) indices.
    """
    per_user: dict[str, list[tuple[float, int, _Step]]] = defaultdict(list)
    for order, it in enumerate(interactions):
        idx = vocab.index.get(it.item_id)
        if idx is None:
            continue
        step = (
            idx,
            EVENT_TYPE_INDEX.get(it.event_type, PAD_INDEX),
            CHANNEL_INDEX.get(it.channel, PAD_INDEX),
        )
        per_user[it.user_id].append((it.ts, order, step))
    return {
        user: [step for _, _, step in sorted(rows, key=lambda r: (r[0], r[1]))]
        for user, rows in per_user.items()
    }


def build_training_windows(timelines: Iterable[Sequence[_Step]], max_len: int) -> TrainingWindows:
    """Cut timelines into left-padded windows of `max_len` inputs plus shifted targets.

    A timeline of n events yields n - 1 (input, next item) pairs. Long timelines are cut
    from the most recent end into windows of `max_len + 1` events overlapping by one, so
    every transition is trained on exactly once per epoch; the oldest window may be short.

    Args:
        timelines: Oldest-first encoded steps per user.
        max_len: Model sequence length.

    Returns:
        The windows (possibly zero rows).
    """
    chunks: list[Sequence[_Step]] = []
    for steps in timelines:
        end = len(steps)
        while end >= 2:
            start = max(0, end - max_len - 1)
            chunks.append(steps[start:end])
            end = start + 1  # overlap by one so the boundary transition is kept
            if start == 0:
                break
    n = len(chunks)
    item_seq = np.zeros((n, max_len), dtype=np.int64)
    type_seq = np.zeros((n, max_len), dtype=np.int64)
    channel_seq = np.zeros((n, max_len), dtype=np.int64)
    targets = np.zeros((n, max_len), dtype=np.int64)
    for row, chunk in enumerate(chunks):
        arr = np.asarray(chunk, dtype=np.int64)  # [m, 3]
        m = arr.shape[0] - 1  # number of input positions
        item_seq[row, max_len - m :] = arr[:-1, 0]
        type_seq[row, max_len - m :] = arr[:-1, 1]
        channel_seq[row, max_len - m :] = arr[:-1, 2]
        targets[row, max_len - m :] = arr[1:, 0]
    return TrainingWindows(item_seq, type_seq, channel_seq, targets)


class _Trainer:
    """Owns model, optimizer and data tensors for one training run."""

    def __init__(
        self, model: SequentialRecommender, windows: TrainingWindows, config: TrainConfig
    ) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.data = tuple(
            torch.from_numpy(a).to(self.device)
            for a in (windows.item_seq, windows.type_seq, windows.channel_seq, windows.targets)
        )
        # Own generator: shuffling is reproducible and independent of global RNG use.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.best_loss = float("inf")
        self.epochs_without_improvement = 0

    def train_epoch(self) -> float:
        """Run one shuffled pass; return the target-weighted mean loss."""
        self.model.train()
        n = self.data[0].shape[0]
        order = torch.randperm(n, generator=self.generator).to(self.device)
        total_loss = 0.0
        total_targets = 0
        for start in range(0, n, self.config.batch_size):
            idx = order[start : start + self.config.batch_size]
            item_seq, type_seq, channel_seq, targets = (t[idx] for t in self.data)
            n_targets = int((targets != 0).sum())
            if n_targets == 0:
                continue
            loss = self.model.next_item_loss(item_seq, type_seq, channel_seq, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            total_loss += float(loss.detach()) * n_targets
            total_targets += n_targets
        return total_loss / max(1, total_targets)

    def should_stop(self, stats: EpochStats) -> bool:
        """Patience rule on the training loss (hook point for validation metrics)."""
        if stats.loss < self.best_loss - self.config.min_delta:
            self.best_loss = stats.loss
            self.epochs_without_improvement = 0
            return False
        self.epochs_without_improvement += 1
        return 0 < self.config.patience <= self.epochs_without_improvement


def train_model(
    interactions: Iterable[Interaction], config: TrainConfig, *, progress: bool = False
) -> TrainedModel:
    """Train a `SequentialRecommender` on next-item prediction.

    Args:
        interactions: Training interactions (any order; grouped per user and sorted by ts).
        config: Hyper-parameters.
        progress: Log one INFO line per epoch on logger "recstream.models.train".

    Returns:
        The trained model (CPU, eval mode) with vocabulary, popularity and stats.

    Raises:
        ValueError: If there is no user with at least two known interactions.
    """
    t0 = time.perf_counter()
    data = list(interactions)
    fingerprint = fingerprint_interactions(data)
    vocab, popularity = build_vocab(data)
    timelines = group_timelines(data, vocab)
    windows = build_training_windows(timelines.values(), config.max_len)
    if len(windows) == 0:
        raise ValueError("no user has two or more interactions; nothing to train on")

    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        torch.manual_seed(config.seed)  # parameter init and dropout
        model = SequentialRecommender(
            vocab.n_items,
            max_len=config.max_len,
            dim=config.dim,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            dropout=config.dropout,
        )
        trainer = _Trainer(model, windows, config)
        epochs: list[EpochStats] = []
        stopped_early = False
        for epoch in range(1, config.epochs + 1):
            e0 = time.perf_counter()
            loss = trainer.train_epoch()
            stats = EpochStats(epoch=epoch, loss=loss, seconds=time.perf_counter() - e0)
            epochs.append(stats)
            if progress:
                logger.info(
                    "epoch %d/%d loss=%.4f (%.2fs)", epoch, config.epochs, loss, stats.seconds
                )
            if trainer.should_stop(stats) and epoch < config.epochs:
                stopped_early = True
                break
    finally:
        if config.num_threads is not None:
            torch.set_num_threads(previous_threads)

    model = model.to("cpu").eval()
    stats_all = TrainingStats(
        epochs=epochs,
        seconds=time.perf_counter() - t0,
        n_interactions=len(data),
        n_users=len(timelines),
        n_windows=len(windows),
        n_targets=int((windows.targets != 0).sum()),
        stopped_early=stopped_early,
    )
    return TrainedModel(
        module=model,
        vocab=vocab,
        popularity=popularity,
        config=config,
        stats=stats_all,
        data_fingerprint=fingerprint,
    )
