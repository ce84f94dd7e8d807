"""`TrainConfig`: hyper-parameters and run settings of a training run (and its device).

Validated on construction; checkpoints store it as a plain dict (`dataclasses.asdict`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from models.architectures import architecture_names
from models.metadata import DEFAULT_ARCH, SIMILARITIES

__all__ = ["AUTO_NEGATIVES", "FULL_SOFTMAX_MAX_ITEMS", "TrainConfig", "resolve_device"]

#: Catalogs up to this many items train with the full softmax, larger ones with the
#: sampled softmax (`TrainConfig.n_negatives` None). Between the two catalogs of
#: docs/BENCHMARKS.md: on Beauty (12,101 items) every result used the full softmax,
#: 1-4 CPU-minutes an epoch; on DIGINETICA (43,097 items) one full-softmax
#: epoch took 16 minutes against ~3 with 8,192 sampled negatives, the setting of all
#: its benchmark results (above SR-GNN).
FULL_SOFTMAX_MAX_ITEMS = 20_000
#: Negatives per batch of the sampled softmax chosen by catalog size: a fifth of
#: DIGINETICA's catalog, the setting of its benchmark runs.
AUTO_NEGATIVES = 8_192


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyper-parameters and run settings for `train_model`.

    Attributes:
        max_len: Fixed sequence length (most recent events kept).
        dim: Model width.
        n_layers: Transformer blocks.
        n_heads: Attention heads.
        dropout: Dropout probability.
        lr: AdamW learning rate (2e-3: the setting of every benchmark result in
            docs/BENCHMARKS.md, chosen to converge within CPU budgets).
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
            better validation NDCG@10 (the best epoch's weights are restored). 4: with
            `lr_decay` 0.3 the rate is below 1 % of `lr` by then.
        eval_every: Evaluate on validation cases every N epochs.
        max_minutes: Wall-clock budget for the epoch loop (None = unlimited); training
            stops after the epoch that crosses it.
        n_negatives: 0 = full softmax cross-entropy over the catalog (best quality);
            N > 0 = sampled softmax with N shared uniform negatives per batch, with the
            logQ correction; None (default) = chosen by catalog size (`negatives_for`):
            full softmax up to `FULL_SOFTMAX_MAX_ITEMS` items, else `AUTO_NEGATIVES`.
            `train_model` records the resolved number in the trained model's config.
        bucket_batches: Group windows of similar length into batches and trim padding
            columns (same data and targets, much less attention compute).
        lr_decay: With validation cases: multiply the learning rate by this factor after
            every evaluation that does not improve validation NDCG@10 (1.0 = constant
            learning rate). Counted towards ``val_patience`` all the same. Default 0.3:
            on DIGINETICA it lifted validation NDCG@10 from .2167 to .2303 and test
            P@20 from .476 to .510 against a constant rate (docs/BENCHMARKS.md).
        similarity: Output scoring: "cosine" (default: L2-normalised hidden state and
            items, divided by `temperature`; better on both benchmark datasets, see
            docs/BENCHMARKS.md) or "dot" (inner product with the tied item table, as in
            the original SASRec; checkpoints written before this setting existed).
        temperature: Softmax temperature of the "cosine" scoring (unused with "dot").
        arch: Sequence-encoder architecture, a name registered in `models.architectures`
            (default: "sasrec", the causal transformer; checkpoints written before the
            setting existed are "sasrec").
        repeat_head: Train the repeat-aware head (`models.repeat`): a learned bias on the
            logits of items already in the history, so the model decides when to show
            an item again (default on: it wins on both benchmark datasets, see
            docs/BENCHMARKS.md; checkpoints written before the setting existed have none).
        transition_head: Train the transition-prior head (`models.transitions`): the
            item-transition chain fitted on the training data, fused into the logits by
            a learned gate (checkpoints written before the setting existed have none).
        label_smoothing: Label smoothing of the next-item cross-entropy (0 = none).
        contrastive_weight: Weight of the DuoRec-style contrastive term
            (`models.contrastive`; 0 = none).
        weight_ema: Decay of an exponential moving average of the weights, updated
            after every optimizer step (Polyak averaging; 0 = none). Validation then
            scores the averaged weights beside the current ones, and the better of the
            two is what selection keeps.
    """

    max_len: int = 50
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    lr: float = 2e-3
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
    val_patience: int = 4
    eval_every: int = 1
    max_minutes: float | None = None
    n_negatives: int | None = None
    bucket_batches: bool = True
    lr_decay: float = 0.3
    similarity: str = "cosine"
    temperature: float = 0.07
    arch: str = DEFAULT_ARCH
    repeat_head: bool = True
    transition_head: bool = False
    label_smoothing: float = 0.0
    contrastive_weight: float = 0.0
    weight_ema: float = 0.0

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
        if self.arch not in architecture_names():
            raise ValueError(f"arch must be one of {architecture_names()}, not {self.arch!r}")
        if self.contrastive_weight < 0:
            raise ValueError("contrastive_weight must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if not 0.0 <= self.weight_ema < 1.0:
            raise ValueError("weight_ema must be in [0, 1)")
        if self.n_negatives is not None and self.n_negatives < 0:
            raise ValueError("n_negatives must be >= 0 (or None: by catalog size)")

    def negatives_for(self, n_items: int) -> int:
        """The sampled negatives a catalog of `n_items` trains with (0 = full softmax).

        An explicit `n_negatives` wins; None picks by catalog size, so one default
        fits a 12k-item shop and a 43k-item one without a per-dataset flag.
        """
        if self.n_negatives is not None:
            return self.n_negatives
        return 0 if n_items <= FULL_SOFTMAX_MAX_ITEMS else AUTO_NEGATIVES


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
