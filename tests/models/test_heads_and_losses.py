"""The transition-prior head (its table, its leave-one-out training term, what it adds
when serving, training, saving and warm starts), label smoothing and the contrastive term."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812 - conventional alias

from models.architectures.sasrec import SequentialRecommender
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import TrainConfig
from models.contrastive import dropout_views_infonce
from models.metadata import MASKED_SCORE
from models.repeat import sparse_extras
from models.synthetic import SyntheticShop
from models.train import train_model
from models.transitions import EPS, LAGS, NEIGHBOURS, TransitionHead, transition_table

TIMELINES = [[1, 2, 3, 2, 3], [1, 2, 4], [5, 1, 2], [3, 2]]


def test_table_counts_successors_most_frequent_first() -> None:
    items, counts, totals = transition_table(TIMELINES, n_items=5, neighbours=2)
    # 1 -> 2 three times; 2 -> 3 twice, 2 -> 4 once; 3 -> 2 twice; 5 -> 1 once.
    assert items[1].tolist() == [2, 0] and counts[1].tolist() == [3, 0]
    assert items[2].tolist() == [3, 4] and counts[2].tolist() == [2, 1]
    assert items[3].tolist() == [2, 0] and totals[3] == 2
    assert items[5].tolist() == [1, 0] and totals[5] == 1
    assert not items[0].any() and not items[4].any() and totals[4] == 0
    # A truncated row keeps its full total: 2 successors of 2 kept, of 3 transitions.
    items1, counts1, totals1 = transition_table(TIMELINES, n_items=5, neighbours=1)
    assert items1[2].tolist() == [3] and totals1[2] == 3


def _dense_prior(head: TransitionHead, history: list[int], n: int) -> np.ndarray:
    """The head's term with its initial gate, from the table by hand: weight 1/2^j
    on log(1 + P(b | j-th newest item) / EPS)."""
    out = np.zeros(n, dtype=np.float64)
    newest = history[::-1][:LAGS]
    for j, item in enumerate(newest):
        total = float(head.totals[item])
        for b, c in zip(
            head.next_items[item].tolist(), head.next_counts[item].tolist(), strict=True
        ):
            if b:
                out[b] += 0.5**j * np.log1p(c / max(total, 1.0) / EPS)
    return out


def test_serving_term_is_the_gated_chain_of_the_newest_items() -> None:
    head = TransitionHead(dim=4, n_items=5)
    head.reset_gate()
    head.fit(TIMELINES)
    for history in ([1, 2], [3, 2, 1], [5, 3, 2, 1], [0, 0, 1]):
        seq = torch.tensor([history])
        scores = head.add_to_last(torch.zeros(1, 6), seq, torch.randn(1, 4))
        expected = _dense_prior(head, [h for h in history if h], 6)
        np.testing.assert_allclose(scores[0].detach().numpy(), expected, atol=1e-5)
    with torch.no_grad():  # no history, or items without successors: nothing added
        for history in ([[0, 0]], [[0, 4]]):
            term = head.add_to_last(torch.zeros(1, 6), torch.tensor(history), torch.zeros(1, 4))
            assert float(term.abs().sum()) == 0


def test_training_term_leaves_the_position_own_pair_out() -> None:
    """At a position predicting y after x, the pair (x, y) counts one less: a pair seen
    once contributes nothing, as at test time for a pair never seen in training."""
    head = TransitionHead(dim=4, n_items=5)
    head.reset_gate()
    head.fit(TIMELINES)
    hidden = torch.zeros(1, 1, 4)
    with torch.no_grad():  # values only
        _, alone = head.bias(torch.tensor([[5]]), hidden, targets=torch.tensor([[1]]))
        items, bias = head.bias(torch.tensor([[2]]), hidden, targets=torch.tensor([[3]]))
        _, served = head.bias(torch.tensor([[2]]), hidden)
    assert float(alone.abs().sum()) == 0  # 5 -> 1 is seen once: this very occurrence
    got = dict(zip(items[0, 0].tolist(), bias[0, 0].tolist(), strict=True))
    # 2 -> 3 twice, 2 -> 4 once, of 3: without this occurrence 1 of 2 each.
    assert got[3] == pytest.approx(np.log1p(0.5 / EPS))
    assert got[4] == pytest.approx(np.log1p(0.5 / EPS))
    assert float(served.max()) == pytest.approx(np.log1p(2 / 3 / EPS))


def _batch(n_items: int = 40) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(1, 8, (6, 8), generator=gen)
    items[:, :3] = 0
    kinds = (items != 0).long()
    targets = torch.roll(items, -1, dims=1)
    targets[:, -1] = 3
    targets[items == 0] = 0
    return items, kinds, kinds.clone(), targets


@pytest.mark.parametrize("repeat_head", [False, True])
def test_sampled_loss_with_the_head_is_the_full_loss_when_the_sample_is_the_catalog(
    repeat_head: bool,
) -> None:
    torch.manual_seed(0)
    model = SequentialRecommender(
        40, max_len=8, dim=16, n_heads=2, repeat_head=repeat_head, transition_head=True
    ).eval()
    assert model.transition_head is not None
    rng = np.random.default_rng(0)
    model.transition_head.fit([rng.integers(1, 8, 20).tolist() for _ in range(30)])
    items, kinds, channels, targets = _batch()
    with torch.no_grad():
        full = model.next_item_loss(items, kinds, channels, targets)
        sampled = model.next_item_loss(
            items,
            kinds,
            channels,
            targets,
            n_negatives=4000,
            generator=torch.Generator().manual_seed(0),
        )
        plain = SequentialRecommender(40, max_len=8, dim=16, n_heads=2, repeat_head=repeat_head)
        plain.load_state_dict(model.state_dict(), strict=False)
        without = plain.eval().next_item_loss(items, kinds, channels, targets)
    # The pad column (a constant 0 logit in the full loss only) is the one difference.
    torch.testing.assert_close(sampled, full, atol=2e-3, rtol=2e-3)
    assert abs(float(full) - float(without)) > 1e-2  # the head changes the loss


def test_label_smoothing_is_the_smoothed_cross_entropy() -> None:
    torch.manual_seed(0)
    model = SequentialRecommender(40, max_len=8, dim=16, n_heads=2).eval()
    items, kinds, channels, targets = _batch()
    with torch.no_grad():
        loss = model.next_item_loss(items, kinds, channels, targets, label_smoothing=0.1)
        logits = model.item_logits(model.encode(items, kinds, channels))[targets != 0]
    expected = F.cross_entropy(logits, targets[targets != 0], label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)


def test_trains_saves_and_warm_starts_with_the_table(
    tiny_shop: SyntheticShop, tiny_config: TrainConfig, tmp_path: Path
) -> None:
    config = replace(tiny_config, epochs=1, transition_head=True)
    trained = train_model(tiny_shop.interactions(), config)
    head = trained.module.transition_head
    assert head is not None and float(head.totals.sum()) > 0
    assert head.next_items.shape == (trained.vocab.n_items + 1, NEIGHBOURS)
    loaded = load_checkpoint(save_checkpoint(trained, tmp_path / "best.pt"))
    assert loaded.config.transition_head
    assert loaded.module.transition_head is not None
    torch.testing.assert_close(loaded.module.transition_head.next_counts, head.next_counts)
    # A warm start counts the new data's transitions, in the new vocabulary.
    everything = tiny_shop.interactions()
    newer = everything[: len(everything) // 2]
    child = train_model(newer, config, init_from=trained)
    assert child.module.transition_head is not None
    assert float(child.module.transition_head.totals.sum()) < float(head.totals.sum())
    # Checkpoints written before the head existed load without it.
    payload = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=True)
    del payload["config"]["transition_head"]
    payload["state_dict"] = {
        k: v for k, v in payload["state_dict"].items() if not k.startswith("transition_head.")
    }
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").module.transition_head is None


def test_contrastive_term_finds_each_view_partner_and_spares_same_next_item_pairs() -> None:
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    second = torch.tensor([[0.9, 0.1], [0.2, 1.0], [1.0, 0.8]])
    loss = dropout_views_infonce(first, second, torch.tensor([5, 6, 7]), temperature=0.5)
    z = F.normalize(torch.cat([first, second]), dim=-1)
    sim = z @ z.t() / 0.5
    expected = torch.stack(
        [
            torch.logsumexp(torch.cat([sim[i, :i], sim[i, i + 1 :]]), 0) - sim[i, (i + 3) % 6]
            for i in range(6)
        ]
    ).mean()
    torch.testing.assert_close(loss, expected)
    # All three share their next item: nothing is a negative, every partner is certain.
    same = dropout_views_infonce(first, second, torch.tensor([5, 5, 5]), temperature=0.5)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_contrastive_weight_adds_the_term_in_training(
    tiny_shop: SyntheticShop, tiny_config: TrainConfig
) -> None:
    torch.manual_seed(0)
    model = SequentialRecommender(40, max_len=8, dim=16, n_heads=2, dropout=0.3)
    items, kinds, channels, targets = _batch()
    targets[:, -1] = torch.arange(1, 7)  # six different next items: negatives exist
    torch.manual_seed(1)
    plain = model.next_item_loss(items, kinds, channels, targets)
    torch.manual_seed(1)
    with_term = model.next_item_loss(items, kinds, channels, targets, contrastive_weight=0.5)
    assert float(with_term) > float(plain) > 0
    config = replace(tiny_config, epochs=1, contrastive_weight=0.1)
    trained = train_model(tiny_shop.interactions(), config)
    assert trained.config.contrastive_weight == 0.1
    assert np.isfinite(trained.stats.epochs[0].loss)
    with pytest.raises(ValueError, match="contrastive_weight"):
        TrainConfig(contrastive_weight=-1.0)


def test_touched_items_join_the_sampled_softmax_once_unless_already_candidates() -> None:
    """Successors a uniform sample misses are charged for their term all the same."""
    items = torch.tensor([[3, 3, 5, 0, 7, 9]])
    bias = torch.tensor([[1.0, 2.0, 4.0, 0.0, 8.0, 16.0]])
    column = torch.full((10,), -1)
    column[5] = 0  # 5 was sampled: a candidate through `neg` already
    queries, keys = torch.ones(1, 2), torch.arange(20.0).view(10, 2)
    extras = sparse_extras((items, bias), torch.tensor([7]), column, queries, keys)
    shown = torch.tensor([[9, -1]])  # 9 is a history candidate (repeat head)
    without_shown = sparse_extras((items, bias), torch.tensor([7]), column, queries, keys, shown)
    kept = extras > MASKED_SCORE / 2
    # 3 once (its first entry) with both terms; 9 once; 5 sampled, 7 the target, 0 none.
    assert kept.tolist() == [[True, False, False, False, False, True]]
    assert extras[0, 0].item() == pytest.approx(float(keys[3].sum()) + 3.0)
    assert extras[0, 5].item() == pytest.approx(float(keys[9].sum()) + 16.0)
    assert (without_shown > MASKED_SCORE / 2).tolist() == [[True] + [False] * 5]
