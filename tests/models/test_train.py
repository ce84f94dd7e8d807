"""Training: data preparation, loss, determinism, and quality vs popularity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.architectures.sasrec import SequentialRecommender
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import TrainConfig, resolve_device
from models.encoding import CHANNEL_INDEX, EVENT_TYPE_INDEX
from models.evaluate import (
    evaluate_model,
    evaluate_popularity,
    leave_last_out,
)
from models.interactions import Interaction, fingerprint_interactions
from models.metrics import ranking_metrics
from models.synthetic import SyntheticShop, generate_shop
from models.train import train_model
from models.trained import TrainedModel
from models.vocab import build_vocab, group_timelines
from models.windows import build_training_windows


def _it(
    user: str, item: str, ts: float, event: str = "browse", channel: str = "web"
) -> Interaction:
    return Interaction(user, item, event, ts, channel)


def test_vocab_sorted_with_pad_and_counts() -> None:
    data = [_it("u", "b", 1), _it("u", "a", 2), _it("v", "b", 3)]
    vocab, popularity = build_vocab(data)
    assert vocab.ids == (None, "a", "b")
    assert vocab.index == {"a": 1, "b": 2}
    assert popularity == [0, 1, 2]
    assert vocab.decode(2) == "b"
    with pytest.raises(KeyError):
        vocab.decode(0)


def test_timelines_sorted_by_ts_and_encoded() -> None:
    data = [_it("u", "b", 5, "click", "app"), _it("u", "a", 1), _it("v", "a", 3)]
    vocab, _ = build_vocab(data)
    timelines = group_timelines(data, vocab)
    web, app = CHANNEL_INDEX["web"], CHANNEL_INDEX["app"]
    assert timelines["u"] == [
        (1, EVENT_TYPE_INDEX["browse"], web),
        (2, EVENT_TYPE_INDEX["click"], app),
    ]
    assert timelines["v"] == [(1, EVENT_TYPE_INDEX["browse"], web)]


def test_windows_left_padded_shifted_and_cover_every_transition() -> None:
    steps = [(i, 1, 1) for i in range(1, 9)]  # 8 events -> 7 transitions
    w = build_training_windows([steps, [(5, 1, 1)]], max_len=4)
    # 8 events, max_len 4: windows [3..8] (4 inputs) and [0..4) -> 3 inputs; single-event
    # timelines yield nothing.
    assert len(w) == 2
    np.testing.assert_array_equal(w.item_seq[0], [4, 5, 6, 7])
    np.testing.assert_array_equal(w.targets[0], [5, 6, 7, 8])
    np.testing.assert_array_equal(w.item_seq[1], [0, 1, 2, 3])
    np.testing.assert_array_equal(w.targets[1], [0, 2, 3, 4])
    assert int((w.targets != 0).sum()) == 7


def test_causal_no_future_leak() -> None:
    torch.manual_seed(0)
    model = SequentialRecommender(30, max_len=8, dim=16, n_layers=2, n_heads=2).eval()
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    types = (items > 0).long()
    changed = items.clone()
    changed[0, -1] = 9
    with torch.no_grad():
        a = model.encode(items, types, types)
        b = model.encode(changed, types, types)
    # Positions before the changed one must not see it; pad inputs must not matter either.
    torch.testing.assert_close(a[0, :-1], b[0, :-1])
    assert not torch.allclose(a[0, -1], b[0, -1])
    assert torch.isfinite(a).all()


def test_tiny_training_reduces_loss(tiny_trained: TrainedModel) -> None:
    losses = tiny_trained.stats.epoch_losses
    assert len(losses) == 2
    assert losses[-1] < losses[0]
    assert tiny_trained.stats.seconds > 0
    assert not tiny_trained.module.training
    assert tiny_trained.popularity[0] == 0
    assert len(tiny_trained.popularity) == len(tiny_trained.vocab)


def test_training_is_deterministic(tiny_shop: SyntheticShop) -> None:
    data = tiny_shop.interactions()[:3000]
    cfg = TrainConfig(max_len=10, dim=16, n_layers=1, n_heads=1, epochs=1, seed=9)
    a = train_model(data, cfg)
    b = train_model(data, cfg)
    assert a.stats.epoch_losses == b.stats.epoch_losses
    assert a.data_fingerprint == b.data_fingerprint == fingerprint_interactions(data)
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(name)


def test_cuda_fails_clearly_without_cuda(tiny_shop: SyntheticShop) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = TrainConfig(max_len=10, dim=16, n_layers=1, n_heads=1, epochs=1, device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_model(tiny_shop.interactions()[:500], cfg)


def test_training_records_its_device_and_checkpoints_load_on_cpu(
    tiny_shop: SyntheticShop, tmp_path: Path
) -> None:
    data = tiny_shop.interactions()[:2000]
    devices = ["cpu", "auto"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        cfg = TrainConfig(max_len=10, dim=16, n_layers=1, n_heads=1, epochs=1, device=device)
        trained = train_model(data, cfg, checkpoint_dir=tmp_path / device)
        assert trained.stats.device == resolve_device(device)
        assert trained.config.device == device
        assert {p.device.type for p in trained.module.parameters()} == {"cpu"}
        for name in ("best.pt", "last.pt"):
            loaded = load_checkpoint(tmp_path / device / name)  # map_location="cpu"
            assert loaded.stats.device == trained.stats.device
            assert {p.device.type for p in loaded.module.parameters()} == {"cpu"}
        again = load_checkpoint(save_checkpoint(trained, tmp_path / f"{device}.pt"))
        for pa, pb in zip(trained.module.parameters(), again.module.parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_nothing_to_train_raises() -> None:
    with pytest.raises(ValueError, match="nothing to train"):
        train_model([_it("u", "a", 1), _it("v", "b", 2)], TrainConfig(epochs=1))


def test_leave_last_out_has_no_leak() -> None:
    data = [
        _it("u", "a", 1),
        _it("u", "b", 2),
        _it("u", "b", 3, "click"),
        _it("u", "c", 4),
        _it("u", "c", 5, "click"),
        _it("w", "a", 1),  # single event: no case (needs 1 event of history)
    ]
    train, cases = leave_last_out(data)
    assert [(c.user_id, c.target) for c in cases] == [("u", "c")]
    assert cases[0].history == (
        ("a", "browse", "web"),
        ("b", "browse", "web"),
        ("b", "click", "web"),
    )
    assert [(i.user_id, i.ts) for i in train] == [("u", 1), ("u", 2), ("u", 3), ("w", 1)]


def test_ranking_metrics() -> None:
    m = ranking_metrics([["a", "b"], ["c", "d"], ["e"]], ["a", "d", "z"], k=2)
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 3)


def test_beats_popularity_on_default_shop() -> None:
    # Default synthetic shop and default architecture; fewer epochs than the default
    # config only to keep the suite fast (the margin is already large by then).
    shop = generate_shop()
    train, cases = leave_last_out(shop.interactions())
    trained = train_model(train, TrainConfig(epochs=10))
    assert trained.stats.seconds < 120
    model = evaluate_model(trained, cases, k=10)
    popular = evaluate_popularity(trained, cases, k=10)
    assert model["n_cases"] == popular["n_cases"] == 500
    assert model["hr@10"] > popular["hr@10"] + 0.25, (model, popular)
    assert model["ndcg@10"] > popular["ndcg@10"] + 0.15, (model, popular)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("length", [1, 5, 12])
def test_encode_last_equals_the_last_position_of_encode(n_layers: int, length: int) -> None:
    """Serving computes only the last position of the last block; same numbers."""
    torch.manual_seed(n_layers * 100 + length)
    model = SequentialRecommender(40, max_len=12, dim=16, n_layers=n_layers, n_heads=2).eval()
    batch = 9
    items = torch.randint(1, 41, (batch, length))
    # Left padding of different widths, including a row of a single item.
    for row in range(batch):
        items[row, : min(row, length - 1)] = 0
    types = torch.randint(1, 4, (batch, length)) * (items > 0)
    channels = torch.randint(1, 3, (batch, length)) * (items > 0)
    with torch.no_grad():
        full = model.encode(items, types, channels)[:, -1, :]
        last = model.encode_last(items, types, channels)
    assert last.shape == (batch, 16)
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-5)
