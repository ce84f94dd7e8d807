"""Warm start (`train_model(init_from=...)`): weights carried over by item and attribute id."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.architectures.sasrec import SequentialRecommender
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import TrainConfig
from models.encoding import encode_histories
from models.evaluate import ModuleRanker
from models.interactions import Interaction
from models.splits import EvalCase
from models.synthetic import SyntheticShop
from models.train import train_model
from models.trained import TrainedModel
from models.vocab import build_vocab
from models.warm_start import warm_start


def _attributes(items: list[str]) -> dict[str, list[str]]:
    return {item: [f"cat{k % 7}", f"brand{k % 4}"] for k, item in enumerate(sorted(items))}


@pytest.fixture(scope="module")
def parent(tiny_shop: SyntheticShop, tiny_config: TrainConfig) -> TrainedModel:
    data = tiny_shop.interactions()
    attributes = _attributes(sorted({it.item_id for it in data}))
    return train_model(data, replace(tiny_config, epochs=4), item_attributes=attributes)


def _fresh(
    parent: TrainedModel, vocab_items: list[str], n_attributes: int
) -> SequentialRecommender:
    cfg = parent.config
    return SequentialRecommender(
        len(vocab_items),
        max_len=cfg.max_len,
        dim=cfg.dim,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        item_attributes=torch.ones(len(vocab_items) + 1, 2, dtype=torch.long),
        n_attributes=n_attributes,
        repeat_head=cfg.repeat_head,
    )


def test_tiny_learning_rate_reproduces_the_parent(
    parent: TrainedModel, tiny_shop: SyntheticShop, tiny_config: TrainConfig
) -> None:
    data = tiny_shop.interactions()
    child = train_model(
        data,
        replace(tiny_config, epochs=1, lr=1e-12),
        item_attributes=_attributes(sorted({it.item_id for it in data})),
        init_from=parent,
    )
    assert child.vocab == parent.vocab
    assert child.stats.init_from is not None
    assert child.stats.init_from["n_items_copied"] == parent.vocab.n_items
    assert child.stats.init_from["n_items_new"] == 0
    assert child.stats.init_from["data_fingerprint"] == parent.data_fingerprint
    histories = [
        [(it.item_id, it.event_type, it.channel) for it in data[i : i + 6]]
        for i in range(0, 300, 10)
    ]
    enc = encode_histories(histories, parent.vocab.index, parent.config.max_len)
    np.testing.assert_allclose(
        ModuleRanker(child.module).score(enc), ModuleRanker(parent.module).score(enc), atol=1e-5
    )


def test_warm_start_trains_from_where_the_parent_stopped(
    parent: TrainedModel, tiny_shop: SyntheticShop, tiny_config: TrainConfig
) -> None:
    data = tiny_shop.interactions()
    attributes = _attributes(sorted({it.item_id for it in data}))
    config = replace(tiny_config, epochs=1)
    cold = train_model(data, config, item_attributes=attributes)
    warm = train_model(data, config, item_attributes=attributes, init_from=parent)
    # The parent trained 4 epochs: its weights start far below a random init's loss.
    assert warm.stats.epochs[0].loss < cold.stats.epochs[0].loss - 0.2


def test_items_and_attributes_are_matched_by_id(parent: TrainedModel) -> None:
    old_items = [i for i in parent.vocab.ids if i is not None]
    kept = old_items[::2]  # drop half of the parent's items
    new_items = sorted([*kept, "brand-new-1", "brand-new-2"])
    vocab, _ = build_vocab(
        [Interaction("u", item, "browse", float(n)) for n, item in enumerate(new_items)]
    )
    names = ("brand2", "cat3", "color-new")  # a subset in another order, plus a new one
    model = _fresh(parent, new_items, len(names))
    before = model.state_dict()["item_embedding.weight"].clone()
    lineage = warm_start(model, vocab, names, parent, parent.config)

    assert lineage["n_items_copied"] == len(kept)
    assert lineage["n_items_new"] == 2 and lineage["n_items_dropped"] == len(old_items) - len(kept)
    old_rows = parent.module.item_embedding.weight.detach()
    rows = model.item_embedding.weight.detach()
    for item in kept:
        torch.testing.assert_close(rows[vocab.index[item]], old_rows[parent.vocab.index[item]])
    for item in ("brand-new-1", "brand-new-2"):  # random init kept
        torch.testing.assert_close(rows[vocab.index[item]], before[vocab.index[item]])
    assert model.attribute_embedding is not None and parent.module.attribute_embedding is not None
    old_attr = parent.module.attribute_embedding.weight.detach()
    new_attr = model.attribute_embedding.weight.detach()
    for row, name in enumerate(names, start=1):
        if name in parent.attribute_names:
            source = 1 + parent.attribute_names.index(name)
            torch.testing.assert_close(new_attr[row], old_attr[source])
        else:
            assert not any(torch.equal(new_attr[row], r) for r in old_attr)
    # Every non-catalog parameter is the parent's.
    key = "blocks.1.attn.qkv.weight"
    torch.testing.assert_close(model.state_dict()[key], parent.module.state_dict()[key])


def test_architecture_mismatch_is_refused(parent: TrainedModel) -> None:
    items = [i for i in parent.vocab.ids if i is not None]
    config = replace(parent.config, dim=16)
    model = SequentialRecommender(len(items), max_len=config.max_len, dim=16, n_heads=2)
    with pytest.raises(ValueError, match="dim 32 != 16"):
        warm_start(model, parent.vocab, (), parent, config)


def test_checkpoint_keeps_attribute_names(parent: TrainedModel, tmp_path: Path) -> None:
    assert parent.attribute_names and list(parent.attribute_names) == sorted(parent.attribute_names)
    loaded = load_checkpoint(save_checkpoint(parent, tmp_path / "p.pt"))
    assert loaded.attribute_names == parent.attribute_names


def test_side_features_must_match_both_ways(parent: TrainedModel) -> None:
    items = [i for i in parent.vocab.ids if i is not None]
    cfg = parent.config
    shape = {"max_len": cfg.max_len, "dim": cfg.dim, "n_layers": cfg.n_layers}
    with_content = SequentialRecommender(
        len(items),
        **shape,
        n_heads=cfg.n_heads,
        item_attributes=torch.ones(len(items) + 1, 2, dtype=torch.long),
        n_attributes=len(parent.attribute_names),
        item_content=torch.zeros(len(items) + 1, 8),
    )
    with pytest.raises(ValueError, match="content_projection.weight only in the new model"):
        warm_start(with_content, parent.vocab, parent.attribute_names, parent, cfg)
    no_attributes = SequentialRecommender(len(items), **shape, n_heads=cfg.n_heads)
    with pytest.raises(ValueError, match="item attributes used by only one"):
        warm_start(no_attributes, parent.vocab, (), parent, cfg)


def test_validation_keeps_the_parent_when_no_epoch_beats_it(
    parent: TrainedModel, tiny_shop: SyntheticShop, tiny_config: TrainConfig
) -> None:
    data = sorted(tiny_shop.interactions(), key=lambda it: it.ts)
    by_user: dict[str, list[Interaction]] = {}
    for it in data:
        by_user.setdefault(it.user_id, []).append(it)
    valid = [
        EvalCase(
            user, tuple((i.item_id, i.event_type, i.channel) for i in rows[:-1]), rows[-1].item_id
        )
        for user, rows in by_user.items()
        if len(rows) > 2
    ]
    # A learning rate this large wrecks the weights within the epoch.
    child = train_model(
        data,
        replace(tiny_config, epochs=2, lr=5.0, val_patience=0),
        valid=valid,
        item_attributes=_attributes(sorted({it.item_id for it in data})),
        init_from=parent,
    )
    assert child.stats.init_from is not None
    parent_score = child.stats.init_from["valid_ndcg@10"]
    assert all(e.valid["ndcg@10"] < parent_score for e in child.stats.epochs)
    assert child.stats.best_epoch == 0
    enc = encode_histories(
        [c.history for c in valid[:20]], parent.vocab.index, parent.config.max_len
    )
    np.testing.assert_allclose(
        ModuleRanker(child.module).score(enc), ModuleRanker(parent.module).score(enc), atol=1e-6
    )
