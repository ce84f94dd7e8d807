"""Workers warm the scorer up on every batch size the stream will use."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.worker import StoreModelSource, warmup_batch_sizes
from models.scorer import OnnxScorer
from models.store import ModelStore


def test_warmup_batch_sizes_reach_max_batch() -> None:
    assert warmup_batch_sizes(1) == (1,)
    assert warmup_batch_sizes(64) == (1, 8, 64)
    assert warmup_batch_sizes(256) == (1, 8, 64, 256)
    assert warmup_batch_sizes(100) == (1, 8, 64, 100)


def test_store_source_warms_up_its_batch_sizes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "store")
    version = store.publish(tiny_model_dir)
    seen: list[tuple[int, ...]] = []
    real = OnnxScorer.warmup

    def spy(self: OnnxScorer, batch_sizes: tuple[int, ...] = (1, 8, 64), **kw: bool) -> None:
        seen.append(tuple(batch_sizes))
        real(self, batch_sizes, **kw)

    monkeypatch.setattr(OnnxScorer, "warmup", spy)
    source = StoreModelSource(store.root, "cpu", 1, warmup_batch_sizes(256))
    source.load(version)
    assert seen == [(1, 8, 64, 256)]
