"""The training defaults: what they are, how the loss follows the catalog size, and the
logQ-corrected sampled softmax they pick for large catalogs."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F  # noqa: N812 - conventional alias

import models.config
from deploy.model_cli import train as train_command
from deploy.tune_cli import tune as tune_command
from models.architectures.sasrec import SequentialRecommender
from models.config import AUTO_NEGATIVES, FULL_SOFTMAX_MAX_ITEMS, TrainConfig
from models.repeat import uniform_negatives
from models.synthetic import SyntheticShop
from models.train import train_model

#: CLI option -> `TrainConfig` field, for the options whose defaults must agree.
_CLI_FIELDS = {
    "lr": "lr",
    "lr_decay": "lr_decay",
    "patience": "val_patience",
    "negatives": "n_negatives",
    "max_len": "max_len",
    "dim": "dim",
    "layers": "n_layers",
    "heads": "n_heads",
    "dropout": "dropout",
    "batch_size": "batch_size",
    "similarity": "similarity",
    "temperature": "temperature",
    "arch": "arch",
    "repeat_head": "repeat_head",
    "transition_head": "transition_head",
    "label_smoothing": "label_smoothing",
    "contrastive_weight": "contrastive_weight",
    "seed": "seed",
}


def test_defaults_are_the_benchmarked_settings() -> None:
    config = TrainConfig()
    assert (config.lr, config.lr_decay, config.val_patience) == (2e-3, 0.3, 4)
    assert config.n_negatives is None  # by catalog size


def test_the_loss_follows_the_catalog_size() -> None:
    config = TrainConfig()
    assert config.negatives_for(12_101) == 0  # Beauty: full softmax
    assert config.negatives_for(FULL_SOFTMAX_MAX_ITEMS) == 0
    assert config.negatives_for(FULL_SOFTMAX_MAX_ITEMS + 1) == AUTO_NEGATIVES
    assert config.negatives_for(43_097) == AUTO_NEGATIVES  # DIGINETICA: sampled
    for explicit in (0, 256):  # an explicit setting wins either way
        fixed = TrainConfig(n_negatives=explicit)
        assert fixed.negatives_for(100) == fixed.negatives_for(10**6) == explicit
    with pytest.raises(ValueError, match="n_negatives"):
        TrainConfig(n_negatives=-1)


def test_cli_defaults_are_the_config_defaults() -> None:
    """`recstream train` (and `tune`) must not keep a second, drifting set of defaults."""
    config = TrainConfig()
    train_defaults = {
        name: p.default for name, p in inspect.signature(train_command).parameters.items()
    }
    for option, field in _CLI_FIELDS.items():
        assert train_defaults[option] == getattr(config, field), option
    tune_defaults = {
        name: p.default for name, p in inspect.signature(tune_command).parameters.items()
    }
    assert tune_defaults["negatives"] == config.n_negatives
    assert tune_defaults["patience"] == config.val_patience
    for option in ("arch", "repeat_head", "transition_head"):
        assert tune_defaults[option] == getattr(config, option), option


def test_training_records_the_resolved_loss(
    tiny_shop: SyntheticShop, tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint says which loss ran: full softmax on a small catalog, the sampled
    one above the threshold (lowered here so that the tiny shop is "large")."""
    config = replace(tiny_config, epochs=1)
    assert train_model(tiny_shop.interactions(), config).config.n_negatives == 0
    monkeypatch.setattr(models.config, "FULL_SOFTMAX_MAX_ITEMS", 50)
    trained = train_model(tiny_shop.interactions(), config)
    assert trained.config.n_negatives == AUTO_NEGATIVES
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in trained.stats.epochs)


def _batch(n_items: int = 40) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(1, n_items + 1, (6, 8), generator=gen)
    items[:, :3] = 0
    kinds = (items != 0).long()
    targets = torch.roll(items, -1, dims=1)
    targets[:, -1] = 3
    targets[items == 0] = 0
    return items, kinds, kinds.clone(), targets


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_sampled_loss_is_the_full_loss_when_the_sample_is_the_catalog(similarity: str) -> None:
    """Without the repeat head too: with logQ, a sample that covers the catalog (q = 1)
    gives exactly the softmax over the catalog (items 1..n, as served; the full loss
    also counts the pad column, whose logit is a constant 0)."""
    torch.manual_seed(0)
    model = SequentialRecommender(40, max_len=8, dim=16, n_heads=2, similarity=similarity)
    model.eval()
    items, kinds, channels, targets = _batch()
    with torch.no_grad():
        full = model.next_item_loss(items, kinds, channels, targets)
        sampled = model.next_item_loss(
            items,
            kinds,
            channels,
            targets,
            n_negatives=2000,  # covers all 40 items
            generator=torch.Generator().manual_seed(0),
        )
        logits = model.item_logits(model.encode(items, kinds, channels))[targets != 0]
    y = targets[targets != 0]
    torch.testing.assert_close(full, F.cross_entropy(logits, y))
    torch.testing.assert_close(sampled, F.cross_entropy(logits[:, 1:], y - 1))


def test_logq_weights_each_negative_by_the_items_it_stands_for() -> None:
    negatives, log_inv_q = uniform_negatives(1000, 100, generator=torch.Generator().manual_seed(0))
    assert len(set(negatives.tolist())) == negatives.numel()  # each item once
    assert 1 <= int(negatives.min()) and int(negatives.max()) <= 1000  # never the pad
    q = 1 - (1 - 1 / 1000) ** 100  # chance of an item to be drawn at least once
    assert float(log_inv_q) == pytest.approx(-torch.log(torch.tensor(q)).item(), rel=1e-5)
    _, covering = uniform_negatives(10, 5000, generator=torch.Generator().manual_seed(0))
    assert float(covering) == pytest.approx(0.0, abs=1e-6)
