"""Train the sequential recommender on interactions (torch; offline only).

Pipeline: interactions -> item vocabulary + per-user timelines (sorted by ts) ->
fixed-length left-padded windows -> next-item cross-entropy at every position (full
softmax over the catalog, or sampled softmax with `TrainConfig.n_negatives`). The loop
is built from small pieces, one module per job: `models.config` (`TrainConfig`),
`models.vocab` (`build_vocab`, `group_timelines`), `models.windows`
(`build_training_windows`), `models.trained` (the result types), `models.warm_start`,
`models.checkpoint`; this module holds the loop (`_Trainer.train_epoch`,
`_Trainer.should_stop`) and `train_model`, which stops early on validation NDCG@10 when
given validation cases (else on the training loss), can write checkpoints, and can
warm-start from a trained model (`warm_start`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from models.architectures import build_network
from models.checkpoint import save_checkpoint
from models.config import TrainConfig, resolve_device
from models.evaluate import ModuleRanker
from models.interactions import Interaction, fingerprint_interactions
from models.network import Recommender
from models.splits import EvalCase
from models.trained import EpochStats, TrainedModel, TrainingStats
from models.vocab import ItemVocab, Step, build_vocab, group_timelines, recent_popularity
from models.warm_start import warm_start
from models.windows import TrainingWindows, build_training_windows

__all__ = ["SELECTION_METRIC", "train_model"]

logger = logging.getLogger("recstream.models.train")


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


class _Trainer:
    """Owns model, optimizer and data tensors for one training run."""

    def __init__(
        self,
        model: Recommender,
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
        # The weights' moving average (config.weight_ema): one tensor per floating
        # state entry, updated in place after every step.
        self._live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.ema: dict[str, torch.Tensor] | None = None
        if config.weight_ema > 0:
            self.ema = {k: v.detach().clone() for k, v in self._live.items()}

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
                n_negatives=self.config.n_negatives or 0,
                generator=self.generator,
                label_smoothing=self.config.label_smoothing,
                contrastive_weight=self.config.contrastive_weight,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(
                        list(self.ema.values()),
                        list(self._live.values()),
                        1.0 - self.config.weight_ema,
                    )
            total_loss += float(loss.detach()) * n_targets
            total_targets += n_targets
        return total_loss / max(1, total_targets)

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """The model's state with the averaged weights (the rest as it is now)."""
        assert self.ema is not None
        return {
            k: (self.ema[k] if k in self.ema else v).detach().clone()
            for k, v in self.model.state_dict().items()
        }

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
    on_epoch: Callable[[EpochStats], bool] | None = None,
) -> TrainedModel:
    """Train a `Recommender` on next-item prediction.

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
        on_epoch: Called after every epoch (and its validation) with its stats; returning
            True stops training there ("stopped" in `TrainingStats.stop_reason`), e.g.
            a hyper-parameter search pruning a trial (`models.tune`).

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
    # The loss by catalog size, recorded as resolved: the checkpoint says what ran.
    config = replace(config, n_negatives=config.negatives_for(vocab.n_items))
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
        if model.transition_head is not None:  # counted on this run's training data
            model.transition_head.fit([s[0] for s in steps] for steps in timelines.values())
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

        def assemble() -> TrainedModel:
            """The run so far (the checkpoint of an epoch, or the result at the end)."""
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
            averaged: dict[str, torch.Tensor] | None = None
            if valid and (epoch % config.eval_every == 0 or epoch == config.epochs):
                val = validate()
                if trainer.ema is not None:
                    # The averaged weights, scored the same way.
                    averaged = trainer.averaged_state()
                    with _weights(model, averaged):
                        val |= {f"ema_{k}": v for k, v in validate().items()}
            stats = EpochStats(epoch=epoch, loss=loss, seconds=seconds, valid=val, lr=lr)
            epochs.append(stats)
            postfix = {"loss": f"{loss:.4f}"} | {k: f"{v:.4f}" for k, v in val.items()}
            bar.set_postfix(postfix)
            if progress:
                logger.info("epoch %d/%d %s (%.1fs)", epoch, config.epochs, postfix, seconds)
            stop = False
            use_average = False
            if valid:
                if val:
                    score = val[SELECTION_METRIC]
                    use_average = averaged is not None and val[f"ema_{SELECTION_METRIC}"] > score
                    if use_average:
                        score = val[f"ema_{SELECTION_METRIC}"]
                    if score > best_score:
                        best_score, best_epoch, bad_evals = score, epoch, 0
                        best_state = averaged if use_average else _snapshot(model)
                    else:
                        bad_evals += 1
                        trainer.decay_lr()
                    stop = 0 < config.val_patience <= bad_evals
            else:
                best_epoch = epoch
                stop = trainer.should_stop(stats)
            if checkpoint_dir is not None:
                partial = assemble()
                save_checkpoint(partial, Path(checkpoint_dir) / "last.pt")
                if best_epoch == epoch and use_average:
                    assert averaged is not None
                    with _weights(model, averaged):  # the best is the averaged weights
                        save_checkpoint(assemble(), Path(checkpoint_dir) / "best.pt")
                elif best_epoch == epoch:
                    save_checkpoint(partial, Path(checkpoint_dir) / "best.pt")
            if stop and epoch < config.epochs:
                stop_reason = "patience"
                break
            if on_epoch is not None and on_epoch(stats):
                stop_reason = "stopped"
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
    return assemble()


def _snapshot(model: Recommender) -> dict[str, torch.Tensor]:
    """A detached copy of the weights (restored at the end as the best epoch's)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextmanager
def _weights(model: Recommender, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """``model`` with ``state`` loaded inside the block, its own weights back after."""
    own = _snapshot(model)
    model.load_state_dict(state)
    try:
        yield
    finally:
        model.load_state_dict(own)


def _assemble(
    model: Recommender,
    vocab: ItemVocab,
    popularity: list[int],
    config: TrainConfig,
    epochs: list[EpochStats],
    t0: float,
    data: Sequence[Interaction],
    timelines: Mapping[str, Sequence[Step]],
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
