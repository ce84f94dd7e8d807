"""Workers warm the scorer up on every batch size the stream will use."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.worker import StoreModelSource, warmup_batch_sizes
from models.scorer import OnnxScorer
from models.store import ModelStore


def _publish_copy(store: ModelStore, model_dir: Path, version: str) -> str:
    """Publish a copy: `ModelStore.publish` moves its directory (a shared fixture here)."""
    staging = store.root.parent / f"staging-{version}"
    shutil.copytree(model_dir, staging)
    return store.publish(staging, version)


def test_warmup_batch_sizes_reach_max_batch() -> None:
    assert warmup_batch_sizes(1) == (1,)
    assert warmup_batch_sizes(64) == (1, 8, 64)
    assert warmup_batch_sizes(256) == (1, 8, 64, 256)
    assert warmup_batch_sizes(100) == (1, 8, 64, 100)


def test_store_source_warms_up_its_batch_sizes(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "store")
    version = _publish_copy(store, tiny_model_dir, "v1")
    seen: list[tuple[int, ...]] = []
    real = OnnxScorer.warmup

    def spy(self: OnnxScorer, batch_sizes: tuple[int, ...] = (1, 8, 64), **kw: bool) -> None:
        seen.append(tuple(batch_sizes))
        real(self, batch_sizes, **kw)

    monkeypatch.setattr(OnnxScorer, "warmup", spy)
    source = StoreModelSource(store.root, "cpu", 1, warmup_batch_sizes(256))
    source.load(version)
    assert seen == [(1, 8, 64, 256)]


def test_reload_of_the_same_shape_reuses_measured_costs(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "store")
    first = _publish_copy(store, tiny_model_dir, "v1")
    second = _publish_copy(store, tiny_model_dir, "v2")
    timed: list[str] = []

    def fake_calibration(self: OnnxScorer, rows: int = 32, repeats: int = 7) -> object:
        timed.append(self.model_version)
        assert self.adopt_grouping_costs(
            self.grouping_shape, {"row": 3.0, "call": 500.0, "source": "measured"}
        )
        return self.grouping_costs

    monkeypatch.setattr(OnnxScorer, "calibrate_grouping", fake_calibration)
    source = StoreModelSource(store.root, "cpu", 1)
    a = source.load(first)
    b = source.load(second)
    assert len(timed) == 1  # measured once, for the first load only
    assert b.grouping_costs == a.grouping_costs == {"row": 3.0, "call": 500.0, "source": "measured"}
    # Another shape (or modelled costs) is not adopted.
    assert not b.adopt_grouping_costs(("other",), a.grouping_costs)
    assert not b.adopt_grouping_costs(
        b.grouping_shape, {"row": 1.0, "call": 1.0, "source": "modelled"}
    )


def test_every_version_the_store_loads_gets_the_configured_search_weight(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from models.scorer import DEFAULT_SEARCH_WEIGHT

    store = ModelStore(tmp_path / "store")
    first = _publish_copy(store, tiny_model_dir, "v1")
    second = _publish_copy(store, tiny_model_dir, "v2")
    assert StoreModelSource(store.root, "cpu", 1).load(first).search_weight == (
        DEFAULT_SEARCH_WEIGHT
    )
    source = StoreModelSource(store.root, "cpu", 1, search_weight=1.5)
    assert source.load(first).search_weight == 1.5
    assert source.load(second).search_weight == 1.5  # a hot reload keeps it
