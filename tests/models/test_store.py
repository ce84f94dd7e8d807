"""Versioned model store: publish, promote, resolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.export import export_onnx
from models.scorer import OnnxScorer
from models.store import ModelStore, StoreError, resolve_model_dir
from models.train import TrainedModel


def _publish(store: ModelStore, trained: TrainedModel, version: str) -> str:
    staging = store.staging_dir()
    export_onnx(trained, staging, model_version=version)
    return store.publish(staging)


def test_publish_promote_and_roll_back(tiny_trained: TrainedModel, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    assert store.versions() == [] and store.current() is None
    with pytest.raises(StoreError):
        store.current_dir()
    v1 = _publish(store, tiny_trained, "20260101T000000Z-aaaaaaaa")
    v2 = _publish(store, tiny_trained, "20260102T000000Z-bbbbbbbb")
    assert store.versions() == [v1, v2]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no staging left
    store.promote(v2)
    assert store.current() == v2
    assert OnnxScorer.load(store.root, provider="cpu").model_version == v2
    store.promote(v1)  # roll back
    assert resolve_model_dir(store.root) == store.root / v1
    assert [i.version for i in store.list()] == [v1, v2]
    assert store.list()[0].variant == "fp32"


def test_invalid_operations(tiny_trained: TrainedModel, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    v1 = _publish(store, tiny_trained, "v1")
    with pytest.raises(StoreError, match="already exists"):
        _publish(store, tiny_trained, "v1")
    with pytest.raises(StoreError, match="unknown version"):
        store.promote("nope")
    with pytest.raises(StoreError, match="unknown version"):
        store.promote("../v1")
    with pytest.raises(StoreError, match="not a model directory"):
        store.publish(tmp_path)
    (store.root / "CURRENT").write_text("gone\n")
    with pytest.raises(StoreError):
        resolve_model_dir(store.root)
    store.promote(v1)
    assert resolve_model_dir(store.root / v1) == store.root / v1  # a model dir resolves to itself
