"""The repeat-aware head: its bias, its losses, and that it learns when to repeat."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import TrainConfig
from models.export import export_onnx
from models.interactions import Interaction
from models.metadata import MODEL_FILENAME
from models.repeat import RepeatHead
from models.session import create_session
from models.train import train_model
from models.trained import TrainedModel


def _reference_bias(head: RepeatHead, seq: list[int], gate: float) -> dict[int, float]:
    """Loop version of the bias at the last position: item -> bias."""
    length = len(seq)
    out: dict[int, float] = {}
    for s, item in enumerate(seq):
        if item == 0 or item in seq[s + 1 :]:
            continue  # padding, or not the most recent occurrence
        count = seq.count(item)
        out[item] = (
            gate + float(head.recency[length - 1 - s]) + float(head.count_weight) * math.log(count)
        )
    return out


def test_bias_counts_each_history_item_once_at_its_latest_position() -> None:
    torch.manual_seed(0)
    head = RepeatHead(dim=4, max_len=8)
    with torch.no_grad():
        head.recency.copy_(torch.arange(8, dtype=torch.float32) * -0.5)
        head.count_weight.fill_(0.7)
    seq = torch.tensor([[0, 0, 3, 5, 3, 7, 5, 5]])
    hidden = torch.randn(1, 8, 4)
    bias, recent = head.bias(seq, hidden)
    # Query position 4 (items 3, 5, 3 seen): 3 at 4 and 5 at 3 are the latest.
    assert recent[0, 4].tolist() == [False] * 3 + [True, True] + [False] * 3
    # Query 7: 3 at 4, 7 at 5, 5 at 7.
    assert recent[0, 7].tolist() == [False] * 4 + [True, True, False, True]
    assert not recent[0, :2].any()  # padding queries see nothing
    assert torch.all(bias[~recent] == 0)
    gate = float(head.gate(hidden[:, 7]).detach())
    expected = _reference_bias(head, seq[0].tolist(), gate)
    scores = head.add_to_last(torch.zeros(1, 10), seq, hidden[:, 7])
    for item in range(10):
        assert float(scores[0, item]) == pytest.approx(expected.get(item, 0.0), abs=1e-5)


def test_sampled_loss_equals_full_softmax_when_the_sample_is_the_catalog() -> None:
    """With every item sampled, the sampled loss is the full one (padding column aside)."""
    torch.manual_seed(1)
    n_items, dim = 12, 8
    head = RepeatHead(dim, max_len=6)
    with torch.no_grad():
        head.recency.normal_()
        head.count_weight.fill_(0.5)
    item_seq = torch.tensor([[0, 2, 4, 2, 9, 4], [1, 1, 3, 5, 7, 3]])
    targets = torch.tensor([[0, 4, 2, 9, 4, 2], [1, 3, 5, 7, 3, 11]])
    hidden = torch.randn(2, 6, dim)
    keys = torch.randn(n_items + 1, dim)
    queries = hidden[targets != 0]
    bias, _ = head.bias(item_seq, hidden)
    mask = targets != 0
    history = item_seq.unsqueeze(1).expand(-1, 6, -1)[mask]
    logits = (queries @ keys.t()).scatter_add(1, history, bias[mask])
    logits[:, 0] = -torch.inf  # the sampled softmax never draws the padding item
    full = torch.nn.functional.cross_entropy(logits, targets[mask])
    sampled = head.loss(
        item_seq,
        hidden,
        queries,
        keys,
        targets,
        n_items=n_items,
        n_negatives=2000,  # covers all 12 items
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(sampled, full)
    # With few negatives the history items still join the softmax (and get gradients).
    head.zero_grad()
    few = head.loss(
        item_seq,
        hidden,
        queries,
        keys,
        targets,
        n_items=n_items,
        n_negatives=2,
        generator=torch.Generator().manual_seed(0),
    )
    few.backward()  # type: ignore[no-untyped-call]
    assert head.recency.grad is not None and head.recency.grad.abs().sum() > 0


def _world(repeat_share: float, n_users: int = 400, n_items: int = 40) -> list[Interaction]:
    """Random sessions of 10 steps: with probability `repeat_share` the next item is one
    of the session's earlier items (uniform), otherwise an item it has not seen."""
    rng = np.random.default_rng(3)
    out: list[Interaction] = []
    for user in range(n_users):
        walk = [int(rng.integers(1, n_items + 1))]
        while len(walk) < 10:
            if rng.random() < repeat_share:
                walk.append(int(rng.choice(walk)))
            else:
                unseen = sorted(set(range(1, n_items + 1)) - set(walk))
                walk.append(int(rng.choice(unseen)))
        out.extend(
            Interaction(f"u{user}", f"i{item}", "click", float(user * 100 + t))
            for t, item in enumerate(walk)
        )
    return out


def _histories(trained: TrainedModel) -> list[list[int]]:
    rng = np.random.default_rng(9)
    return [
        [trained.vocab.index[f"i{i}"] for i in rng.choice(np.arange(1, 41), 6, replace=False)]
        for _ in range(50)
    ]


TINY = TrainConfig(
    max_len=12,
    dim=32,
    n_layers=1,
    n_heads=2,
    dropout=0.0,
    epochs=8,
    lr=5e-3,
    max_k=10,
    seed=0,
    patience=0,
)


def _history_mass(trained: TrainedModel, histories: list[list[int]]) -> float:
    """Mean probability the model gives to the history's items for the next step."""
    seq = torch.tensor(histories)
    ones = torch.ones_like(seq)
    with torch.no_grad():
        scores = trained.module.eval().last_scores(seq, ones, ones)
    scores[:, 0] = -torch.inf
    probs = scores.softmax(dim=1)
    return float(probs.gather(1, seq).sum(dim=1).mean())


def _top5_history_share(model_dir: Path, histories: list[list[int]]) -> float:
    """Share of the exported graph's top-5 slots that go to items of the history."""
    session, _ = create_session(model_dir / MODEL_FILENAME, "cpu", 1)
    seq = np.asarray(histories, dtype=np.int64)
    ones = np.ones_like(seq)
    _, items = session.run(
        ["scores", "items"],
        {
            "item_seq": seq,
            "type_seq": ones,
            "channel_seq": ones,
            "exclude": np.zeros((len(histories), 1), dtype=np.int64),
        },
    )
    top = np.asarray(items)[:, :5]
    return float(
        np.mean([[i in set(h) for i in row] for row, h in zip(top, histories, strict=True)])
    )


def test_head_learns_that_nobody_goes_back(tmp_path: Path) -> None:
    data = _world(repeat_share=0.0)
    with_head = train_model(data, TINY)
    plain = train_model(data, replace(TINY, repeat_head=False))
    histories = _histories(with_head)
    # The plain model cannot tell history items apart (about 6 of 40 by chance)...
    assert _history_mass(plain, histories) > 0.08
    assert _history_mass(with_head, histories) < 0.03
    served = _top5_history_share(
        export_onnx(with_head, tmp_path / "h", model_version="h"), histories
    )
    baseline = _top5_history_share(export_onnx(plain, tmp_path / "p", model_version="p"), histories)
    assert served == 0.0 and baseline > 0.05, (served, baseline)


def test_head_learns_how_often_shoppers_go_back() -> None:
    """Half of the next steps return to an earlier item: the head gives the history about
    half the probability (the plain model, scoring items alone, far less)."""
    data = _world(repeat_share=0.5)
    with_head = train_model(data, TINY)
    plain = train_model(data, replace(TINY, repeat_head=False))
    histories = _histories(with_head)
    assert 0.35 < _history_mass(with_head, histories) < 0.65
    assert _history_mass(plain, histories) < 0.3
