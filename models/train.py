"""Train the sequential recommender on interactions (torch; offline only).

Pipeline: interactions -> item vocabulary + per-user timelines (sorted by ts) ->
fixed-length left-padded windows -> next-item cross-entropy at every position (full
softmax over the catalog, or sampled softmax with `TrainConfig.n_negatives`). The loop
is built from small pieces (`build_vocab`, `build_training_windows`,
`_Trainer.train_epoch`, `_Trainer.should_stop`). `train_model` stops early on
validation NDCG@10 when given validation cases (else on the training loss), can write
checkpoints, and can warm-start from a trained model (`warm_start`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from models.encoding import (
    CHANNEL_INDEX,
    EVENT_TYPE_INDEX,
    PAD_INDEX,
    EncodedHistories,
    vocab_index,
)
from models.interactions import Interaction, fingerprint_interactions
from models.metadata import SIMILARITIES
from models.network import SequentialRecommender
from models.splits import EvalCase

__all__ = [
    "SELECTION_METRIC",
    "EpochStats",
    "ItemVocab",
    "ModuleRanker",
    "TrainConfig",
    "TrainedModel",
    "TrainingStats",
    "TrainingWindows",
    "build_network",
    "build_training_windows",
    "build_vocab",
    "group_timelines",
    "load_checkpoint",
    "recent_popularity",
    "save_checkpoint",
    "train_model",
    "warm_start",
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
        patience: Without validation cases: stop after this many epochs without a
            training-loss improvement larger than `min_delta` (0 disables). With
            validation cases `val_patience` applies instead.
        min_delta: Minimum loss decrease (nats) that counts as an improvement.
        grad_clip: Max global gradient norm (0 disables).
        device: Torch device for training: "auto" (CUDA when `torch.cuda.is_available()`,
            else CPU), "cpu", "cuda" or "cuda:N" (an error when CUDA is unavailable; see
            `resolve_device`). The result, checkpoints and exports are on CPU either way;
            the device used is recorded in `TrainingStats.device`.
        num_threads: torch intra-op threads while training (None leaves torch's setting).
        val_patience: With validation cases: stop after this many evaluations without a
            better validation NDCG@10 (the best epoch's weights are restored).
        eval_every: Evaluate on validation cases every N epochs.
        max_minutes: Wall-clock budget for the epoch loop (None = unlimited); training
            stops after the epoch that crosses it.
        n_negatives: 0 = full softmax cross-entropy over the catalog (default, best
            quality); N > 0 = sampled softmax with N shared uniform negatives per batch.
        bucket_batches: Group windows of similar length into batches and trim padding
            columns (same data and targets, much less attention compute).
        lr_decay: With validation cases: multiply the learning rate by this factor after
            every evaluation that does not improve validation NDCG@10 (1.0 = constant
            learning rate). Counted towards ``val_patience`` all the same.
        similarity: Output scoring: "cosine" (default: L2-normalised hidden state and
            items, divided by `temperature`; better on both benchmark datasets, see
            docs/BENCHMARKS.md) or "dot" (inner product with the tied item table, as in
            the original SASRec; checkpoints written before this setting existed).
        temperature: Softmax temperature of the "cosine" scoring (unused with "dot").
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
    device: str = "auto"
    num_threads: int | None = None
    val_patience: int = 5
    eval_every: int = 1
    max_minutes: float | None = None
    n_negatives: int = 0
    bucket_batches: bool = True
    lr_decay: float = 1.0
    similarity: str = "cosine"
    temperature: float = 0.07

    def __post_init__(self) -> None:
        if self.max_len < 2:
            raise ValueError("max_len must be >= 2")
        if self.dim % self.n_heads:
            raise ValueError("dim must be divisible by n_heads")
        if self.batch_size < 1 or self.epochs < 1 or self.max_k < 1:
            raise ValueError("batch_size, epochs and max_k must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError("lr_decay must be in (0, 1]")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")


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
        stop_reason: "max_epochs", "patience" or "time_budget".
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

    module: SequentialRecommender
    vocab: ItemVocab
    popularity: list[int]
    config: TrainConfig
    stats: TrainingStats
    data_fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)
    recent_popularity: dict[str, list[int]] = field(default_factory=dict)
    attribute_names: tuple[str, ...] = ()


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


def recent_popularity(
    interactions: Sequence[Interaction], vocab: ItemVocab, fraction: float = 0.2
) -> dict[str, list[int]]:
    """Counts per item index over the newest `fraction` of interactions (by ts).

    What a brand-new user sees: what is popular *now*, overall ("all") and per channel
    (only channels present in the data). Works for any ts unit (a share of events, not
    a number of days).

    Args:
        interactions: Training interactions.
        vocab: Item vocabulary (counts are aligned with it; index 0 = 0).
        fraction: Share of the most recent interactions counted.

    Returns:
        {"all": counts, channel: counts, ...}.
    """
    ordered = sorted(range(len(interactions)), key=lambda i: (interactions[i].ts, i))
    recent = ordered[len(ordered) - max(1, int(len(ordered) * fraction)) :] if ordered else []
    out: dict[str, list[int]] = {"all": [0] * len(vocab)}
    for i in recent:
        it = interactions[i]
        idx = vocab.index.get(it.item_id)
        if idx is None:
            continue
        out["all"][idx] += 1
        out.setdefault(it.channel, [0] * len(vocab))[idx] += 1
    return out


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


class ModuleRanker:
    """`models.ranking.Ranker` over a torch `SequentialRecommender` (full catalog scores).

    Args:
        module: The network (switched to eval mode while scoring).
        name: Report name.
    """

    def __init__(self, module: SequentialRecommender, name: str = "transformer") -> None:
        self.module = module
        self.name = name
        self.max_len = module.max_len

    @torch.no_grad()
    def score(self, batch: EncodedHistories) -> npt.NDArray[np.float32]:
        """Logits [B, n_items + 1] at the last position of each history."""
        was_training = self.module.training
        self.module.eval()
        device = next(self.module.parameters()).device
        tensors = [
            torch.from_numpy(a).to(device)
            for a in (batch.item_seq, batch.type_seq, batch.channel_seq)
        ]
        hidden = self.module.encode_last(*tensors)
        scores = self.module.item_logits(hidden).float().cpu().numpy()
        self.module.train(was_training)
        return scores


def _attribute_tensor(
    vocab: ItemVocab, attributes: Mapping[str, Sequence[str]]
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """[n_items + 1, A] attribute indices (0 = pad) and the attribute names by index - 1."""
    names = sorted({a for item in vocab.ids[1:] if item for a in attributes.get(item, ())})
    index = {name: i + 1 for i, name in enumerate(names)}
    width = max((len(attributes.get(item or "", ())) for item in vocab.ids), default=0)
    table = torch.zeros(len(vocab), max(1, width), dtype=torch.long)
    for row, item in enumerate(vocab.ids):
        for col, name in enumerate(attributes.get(item or "", ()) if item else ()):
            table[row, col] = index[name]
    return table, tuple(names)


def resolve_device(name: str) -> str:
    """The torch device a `TrainConfig.device` setting trains on.

    Args:
        name: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".

    Returns:
        "cpu", "cuda" or "cuda:N".

    Raises:
        ValueError: On another name, or CUDA asked for but not available.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or re.fullmatch(r"cuda:\d+", name):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but CUDA is not available to torch here "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): "
                "use --device cpu or auto"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
            )
        return name
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")


class _Trainer:
    """Owns model, optimizer and data tensors for one training run."""

    def __init__(
        self,
        model: SequentialRecommender,
        windows: TrainingWindows,
        config: TrainConfig,
        device: str = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.data = tuple(
            torch.from_numpy(a).to(self.device)
            for a in (windows.item_seq, windows.type_seq, windows.channel_seq, windows.targets)
        )
        self.lengths = torch.from_numpy((windows.item_seq != 0).sum(axis=1))
        # Own generator: shuffling is reproducible and independent of global RNG use.
        self.generator = torch.Generator().manual_seed(config.seed)
        self.best_loss = float("inf")
        self.epochs_without_improvement = 0

    def _batches(self) -> list[torch.Tensor]:
        """Shuffled index batches; with bucketing, similar lengths share a batch."""
        n = self.data[0].shape[0]
        size = self.config.batch_size
        order = torch.randperm(n, generator=self.generator)
        if not self.config.bucket_batches:
            return list(torch.split(order, size))
        # Sort within pools of 50 batches by length, cut, then shuffle the batches: each
        # batch is still a random draw, but padding per batch shrinks a lot.
        pool = 50 * size
        batches: list[torch.Tensor] = []
        for chunk in torch.split(order, pool):
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches.extend(torch.split(chunk, size))
        perm = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in perm]

    def train_epoch(self) -> float:
        """Run one shuffled pass; return the target-weighted mean loss."""
        self.model.train()
        total_loss = 0.0
        total_targets = 0
        for idx in self._batches():
            idx = idx.to(self.device)
            item_seq, type_seq, channel_seq, targets = (t[idx] for t in self.data)
            if self.config.bucket_batches:
                width = max(1, int(self.lengths[idx.cpu()].max()))
                item_seq, type_seq, channel_seq, targets = (
                    t[:, -width:] for t in (item_seq, type_seq, channel_seq, targets)
                )
            n_targets = int((targets != 0).sum())
            if n_targets == 0:
                continue
            loss = self.model.next_item_loss(
                item_seq,
                type_seq,
                channel_seq,
                targets,
                n_negatives=self.config.n_negatives,
                generator=self.generator,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            total_loss += float(loss.detach()) * n_targets
            total_targets += n_targets
        return total_loss / max(1, total_targets)

    @property
    def lr(self) -> float:
        """The current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def decay_lr(self) -> None:
        """Multiply every parameter group's learning rate by ``config.lr_decay``."""
        for group in self.optimizer.param_groups:
            group["lr"] *= self.config.lr_decay

    def should_stop(self, stats: EpochStats) -> bool:
        """Patience rule on the training loss (used when there is no validation data)."""
        if stats.loss < self.best_loss - self.config.min_delta:
            self.best_loss = stats.loss
            self.epochs_without_improvement = 0
            return False
        self.epochs_without_improvement += 1
        return 0 < self.config.patience <= self.epochs_without_improvement


#: Validation metric used for early stopping and checkpoint selection.
SELECTION_METRIC = "ndcg@10"


def train_model(
    interactions: Iterable[Interaction],
    config: TrainConfig,
    *,
    valid: Sequence[EvalCase] | None = None,
    item_attributes: Mapping[str, Sequence[str]] | None = None,
    item_content: Mapping[str, npt.NDArray[np.float32]] | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = False,
    init_from: TrainedModel | None = None,
) -> TrainedModel:
    """Train a `SequentialRecommender` on next-item prediction.

    Without `valid`, training runs `config.epochs` epochs with patience on the training
    loss. With `valid`, every `eval_every` epochs the model is ranked against the full
    catalog on the validation cases; training stops after `val_patience` evaluations
    without a better NDCG@10 and the best weights are restored.

    Args:
        interactions: Training interactions (any order; grouped per user and sorted by ts).
        config: Hyper-parameters.
        valid: Validation cases (histories -> held-out item), never trained on.
        item_attributes: Optional item id -> attribute ids (side features).
        item_content: Optional item id -> content vector (e.g. text embedding); items
            without a vector get zeros.
        checkpoint_dir: Write `best.pt` (and `last.pt` each epoch) here.
        progress: Show a tqdm progress bar with loss and validation metrics, and log one
            INFO line per epoch on logger "recstream.models.train".
        init_from: Warm start: begin from this model's weights instead of a random init
            (see `warm_start`); its architecture must equal `config`'s. For fine-tuning a
            model on newer data, or continuing a run past its time budget. Only the
            weights carry over: AdamW starts afresh at `config.lr` (pass the learning
            rate the parent had reached to continue its schedule). With `valid`, the
            parent's own weights are scored first and an epoch must beat them to be
            kept (best epoch 0 = the parent's weights are returned).

    Returns:
        The trained model (CPU, eval mode) with vocabulary, popularity and stats.

    Raises:
        ValueError: If there is no user with at least two known interactions, or
            `init_from` does not fit (see `warm_start`).
    """
    from models.ranking import evaluate_ranker  # local: ranking imports nothing from here

    t0 = time.perf_counter()
    data = list(interactions)
    fingerprint = fingerprint_interactions(data)
    vocab, popularity = build_vocab(data)
    timelines = group_timelines(data, vocab)
    windows = build_training_windows(timelines.values(), config.max_len)
    if len(windows) == 0:
        raise ValueError("no user has two or more interactions; nothing to train on")
    recent = recent_popularity(data, vocab)
    device = resolve_device(config.device)

    previous_threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        torch.manual_seed(config.seed)  # parameter init and dropout
        attrs, attr_names = (
            _attribute_tensor(vocab, item_attributes) if item_attributes else (None, ())
        )
        content = _content_tensor(vocab, item_content) if item_content else None
        model = build_network(
            config,
            vocab.n_items,
            item_attributes=attrs if attr_names else None,
            n_attributes=len(attr_names),
            item_content=content,
        )
        lineage = (
            warm_start(model, vocab, attr_names, init_from, config)
            if init_from is not None
            else None
        )
        trainer = _Trainer(model, windows, config, device)  # moves the model there
        ranker = ModuleRanker(model)
        epochs: list[EpochStats] = []
        stop_reason = "max_epochs"
        best_score = -1.0
        best_epoch = 0
        best_state: dict[str, torch.Tensor] | None = None
        bad_evals = 0

        def validate() -> dict[str, float]:
            assert valid is not None  # only called with validation cases
            report = evaluate_ranker(ranker, valid, vocab.index, ks=(10,))
            return {k: v for k, v in report.metrics.items() if k in ("hr@10", "ndcg@10")}

        if valid and lineage is not None:
            # A warm start's own weights are "epoch 0": epochs must beat them to be kept.
            best_score, best_state = validate()[SELECTION_METRIC], _snapshot(model)
            lineage["valid_ndcg@10"] = best_score
            if progress:
                logger.info("warm start: validation %s %.4f", SELECTION_METRIC, best_score)
        bar = tqdm(range(1, config.epochs + 1), desc="train", unit="epoch", disable=not progress)
        for epoch in bar:
            e0 = time.perf_counter()
            lr = trainer.lr
            loss = trainer.train_epoch()
            seconds = time.perf_counter() - e0
            val: dict[str, float] = {}
            if valid and (epoch % config.eval_every == 0 or epoch == config.epochs):
                val = validate()
            stats = EpochStats(epoch=epoch, loss=loss, seconds=seconds, valid=val, lr=lr)
            epochs.append(stats)
            postfix = {"loss": f"{loss:.4f}"} | {k: f"{v:.4f}" for k, v in val.items()}
            bar.set_postfix(postfix)
            if progress:
                logger.info("epoch %d/%d %s (%.1fs)", epoch, config.epochs, postfix, seconds)
            stop = False
            if valid:
                if val:
                    if val[SELECTION_METRIC] > best_score:
                        best_score, best_epoch, bad_evals = val[SELECTION_METRIC], epoch, 0
                        best_state = _snapshot(model)
                    else:
                        bad_evals += 1
                        trainer.decay_lr()
                    stop = 0 < config.val_patience <= bad_evals
            else:
                best_epoch = epoch
                stop = trainer.should_stop(stats)
            if checkpoint_dir is not None:
                partial = _assemble(
                    model,
                    vocab,
                    popularity,
                    config,
                    epochs,
                    t0,
                    data,
                    timelines,
                    windows,
                    fingerprint,
                    best_epoch,
                    stop_reason,
                    recent,
                    attr_names,
                    lineage,
                    device=device,
                )
                save_checkpoint(partial, Path(checkpoint_dir) / "last.pt")
                if best_epoch == epoch:
                    save_checkpoint(partial, Path(checkpoint_dir) / "best.pt")
            if stop and epoch < config.epochs:
                stop_reason = "patience"
                break
            elapsed_min = (time.perf_counter() - t0) / 60
            if config.max_minutes is not None and elapsed_min >= config.max_minutes:
                stop_reason = "time_budget" if epoch < config.epochs else "max_epochs"
                break
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
    finally:
        if config.num_threads is not None:
            torch.set_num_threads(previous_threads)

    model = model.to("cpu").eval()
    return _assemble(
        model,
        vocab,
        popularity,
        config,
        epochs,
        t0,
        data,
        timelines,
        windows,
        fingerprint,
        best_epoch,
        stop_reason,
        recent,
        attr_names,
        lineage,
        device=device,
    )


def _snapshot(model: SequentialRecommender) -> dict[str, torch.Tensor]:
    """A detached copy of the weights (restored at the end as the best epoch's)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assemble(
    model: SequentialRecommender,
    vocab: ItemVocab,
    popularity: list[int],
    config: TrainConfig,
    epochs: list[EpochStats],
    t0: float,
    data: Sequence[Interaction],
    timelines: Mapping[str, Sequence[_Step]],
    windows: TrainingWindows,
    fingerprint: str,
    best_epoch: int,
    stop_reason: str,
    recent: dict[str, list[int]],
    attribute_names: tuple[str, ...],
    lineage: dict[str, Any] | None,
    *,
    device: str = "cpu",
) -> TrainedModel:
    stats = TrainingStats(
        epochs=list(epochs),
        seconds=time.perf_counter() - t0,
        n_interactions=len(data),
        n_users=len(timelines),
        n_windows=len(windows),
        n_targets=int((windows.targets != 0).sum()),
        stopped_early=stop_reason != "max_epochs",
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        init_from=lineage,
        device=device,
    )
    return TrainedModel(
        module=model,
        vocab=vocab,
        popularity=popularity,
        config=config,
        stats=stats,
        data_fingerprint=fingerprint,
        recent_popularity=recent,
        attribute_names=attribute_names,
    )


def build_network(
    config: TrainConfig,
    n_items: int,
    *,
    item_attributes: torch.Tensor | None = None,
    n_attributes: int = 0,
    item_content: torch.Tensor | None = None,
) -> SequentialRecommender:
    """A freshly initialised `SequentialRecommender` of `config`'s shape over `n_items`.

    Args:
        config: Shape and dropout.
        n_items: Catalog size (excluding padding).
        item_attributes: Optional [n_items + 1, A] attribute indices.
        n_attributes: Attribute vocabulary size (with `item_attributes`).
        item_content: Optional [n_items + 1, C] content vectors.

    Returns:
        The network (training mode).
    """
    return SequentialRecommender(
        n_items,
        max_len=config.max_len,
        dim=config.dim,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        dropout=config.dropout,
        item_attributes=item_attributes,
        n_attributes=n_attributes,
        item_content=item_content,
        similarity=config.similarity,
        temperature=config.temperature,
    )


#: Parameters warm_start maps row by row (by external id) instead of copying whole.
_ROW_MAPPED = ("item_embedding.weight", "attribute_embedding.weight")
#: Buffers that describe the current data's catalog; always rebuilt, never carried over.
_CATALOG_BUFFERS = ("item_attributes", "item_content")
#: Architecture settings a warm start must share with its parent.
_ARCH_FIELDS = ("max_len", "dim", "n_layers", "n_heads", "similarity", "temperature")


def warm_start(
    model: SequentialRecommender,
    vocab: ItemVocab,
    attribute_names: Sequence[str],
    parent: TrainedModel,
    config: TrainConfig,
) -> dict[str, Any]:
    """Copy a trained parent's weights into a freshly initialised `model`, in place.

    Items are matched by external id: an item both catalogs share keeps its learned
    embedding, an item only the new data has keeps its random init, an item only the
    parent had is dropped. Attribute embeddings are matched by attribute id the same
    way (a parent saved without attribute names must have exactly the same attribute
    vocabulary size). Every other parameter is copied as is.

    Args:
        model: The new network (built for `vocab`).
        vocab: The new training data's item vocabulary.
        attribute_names: The new attribute vocabulary (empty without attributes).
        parent: The model to start from.
        config: The new run's configuration (`max_len`, `dim`, `n_layers`, `n_heads`,
            `similarity` and `temperature` must equal the parent's).

    Returns:
        Lineage for `TrainingStats.init_from`.

    Raises:
        ValueError: If the architectures differ (width, depth, heads, sequence length,
            side features, scoring).
    """
    mismatched = [
        f"{name} {getattr(parent.config, name)} != {getattr(config, name)}"
        for name in _ARCH_FIELDS
        if getattr(parent.config, name) != getattr(config, name)
    ]
    own = model.state_dict()
    theirs = parent.module.state_dict()
    for key, value in theirs.items():
        if key in _CATALOG_BUFFERS or key in _ROW_MAPPED:
            continue
        if key not in own:
            mismatched.append(f"{key} only in the parent (side features differ?)")
        elif own[key].shape != value.shape:
            mismatched.append(f"{key} {tuple(value.shape)} != {tuple(own[key].shape)}")
    for key in own.keys() - theirs.keys() - set(_CATALOG_BUFFERS):
        mismatched.append(f"{key} only in the new model (side features differ?)")
    if ("attribute_embedding.weight" in own) != ("attribute_embedding.weight" in theirs):
        mismatched.append("item attributes used by only one of the two models")
    if mismatched:
        detail = "; ".join(mismatched)
        raise ValueError(f"cannot warm-start from a different architecture: {detail}")
    state = {k: v for k, v in theirs.items() if k not in _CATALOG_BUFFERS + _ROW_MAPPED}
    state["item_embedding.weight"], copied = _map_rows(
        own["item_embedding.weight"], theirs["item_embedding.weight"], parent.vocab.ids, vocab.ids
    )
    if "attribute_embedding.weight" in own:
        old_names: Sequence[str | None] = parent.attribute_names
        if not old_names:
            logger.warning(
                "the parent checkpoint does not record attribute names; attribute "
                "embeddings are copied by index, which assumes the same attribute file"
            )
            if len(theirs["attribute_embedding.weight"]) != len(attribute_names) + 1:
                raise ValueError(
                    "the parent does not record its attribute names and its attribute "
                    "vocabulary has a different size; cannot map attribute embeddings"
                )
            old_names = attribute_names
        state["attribute_embedding.weight"], _ = _map_rows(
            own["attribute_embedding.weight"],
            theirs["attribute_embedding.weight"],
            (None, *old_names),
            (None, *attribute_names),
        )
    model.load_state_dict(state, strict=False)
    return {
        "data_fingerprint": parent.data_fingerprint,
        "best_epoch": parent.stats.best_epoch,
        "n_items_copied": copied,
        "n_items_new": vocab.n_items - copied,
        "n_items_dropped": parent.vocab.n_items - copied,
    }


def _map_rows(
    fresh: torch.Tensor,
    old: torch.Tensor,
    old_ids: Sequence[str | None],
    new_ids: Sequence[str | None],
) -> tuple[torch.Tensor, int]:
    """`fresh` with row 0 (padding) and the rows of ids both lists share taken from `old`.

    Returns the rows and how many ids (padding not counted) were carried over.
    """
    where = {item: row for row, item in enumerate(old_ids) if item is not None}
    pairs = [(0, 0)] + [(row, where[item]) for row, item in enumerate(new_ids) if item in where]
    out = fresh.detach().clone()
    dst, src = (torch.tensor(side) for side in zip(*pairs, strict=True))
    out[dst] = old[src]
    return out, len(pairs) - 1


def _content_tensor(
    vocab: ItemVocab, content: Mapping[str, npt.NDArray[np.float32]]
) -> torch.Tensor:
    """[n_items + 1, C] content vectors aligned with the vocabulary (zeros if missing)."""
    width = len(next(iter(content.values())))
    table = torch.zeros(len(vocab), width)
    for row, item in enumerate(vocab.ids):
        if item is not None and item in content:
            table[row] = torch.as_tensor(np.asarray(content[item], dtype=np.float32))
    return table


def save_checkpoint(trained: TrainedModel, path: Path) -> Path:
    """Write a self-contained checkpoint (weights, config, vocabulary, stats) atomically.

    Args:
        trained: The model to save.
        path: Destination file (`.pt`); its directory is created.

    Returns:
        `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = trained.module
    arch = {
        "n_attributes": (
            module.attribute_embedding.num_embeddings - 1
            if module.attribute_embedding is not None
            else 0
        ),
        "attribute_width": (
            int(module.item_attributes.shape[1]) if module.item_attributes is not None else 0
        ),
        "content_dim": (
            int(module.item_content.shape[1]) if module.item_content is not None else 0
        ),
    }
    payload = {
        "format": 1,
        "config": asdict(trained.config),
        "arch": arch,
        "vocab": list(trained.vocab.ids),
        "popularity": list(trained.popularity),
        "stats": trained.stats.to_dict(),
        "data_fingerprint": trained.data_fingerprint,
        "metrics": dict(trained.metrics),
        "recent_popularity": {k: list(v) for k, v in trained.recent_popularity.items()},
        "attribute_names": list(trained.attribute_names),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> TrainedModel:
    """Load a checkpoint written by `save_checkpoint` (CPU, eval mode).

    Args:
        path: A `.pt` file, or a directory containing `best.pt`.

    Returns:
        The trained model.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    # Checkpoints written before cosine scoring existed (and became the default) are dot.
    config = TrainConfig(**{"similarity": "dot", **payload["config"]})
    arch = payload["arch"]
    vocab = ItemVocab(tuple(payload["vocab"]))
    n = len(vocab)
    model = build_network(
        config,
        vocab.n_items,
        item_attributes=(
            torch.zeros(n, arch["attribute_width"], dtype=torch.long)
            if arch["n_attributes"]
            else None
        ),
        n_attributes=arch["n_attributes"],
        item_content=torch.zeros(n, arch["content_dim"]) if arch["content_dim"] else None,
    )
    model.load_state_dict(payload["state_dict"])
    return TrainedModel(
        module=model.eval(),
        vocab=vocab,
        popularity=list(payload["popularity"]),
        config=config,
        stats=TrainingStats.from_dict(payload["stats"]),
        data_fingerprint=payload["data_fingerprint"],
        metrics={str(k): float(v) for k, v in payload["metrics"].items()},
        recent_popularity={
            str(k): [int(c) for c in v] for k, v in payload.get("recent_popularity", {}).items()
        },
        attribute_names=tuple(str(a) for a in payload.get("attribute_names", ())),
    )
