"""Versioned model store: publish, promote, resolve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.export import export_onnx
from models.scorer import OnnxScorer
from models.store import ModelStore, StoreError, resolve_model_dir
from models.trained import TrainedModel


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


def _fake_version(store: ModelStore, version: str) -> str:
    """A version directory with the two files the store checks (nothing loads them)."""
    path = store.root / version
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"onnx")
    (path / "metadata.json").write_text(json.dumps({"model_version": version}))
    return version


def test_rollback_returns_to_the_version_before_the_latest_promotion(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    a, b, c = (_fake_version(store, v) for v in ("a", "b", "c"))
    store.promote(a)
    store.promote(b)
    assert store.rollback() == a
    assert store.current() == a and resolve_model_dir(store.root) == store.root / a
    with pytest.raises(StoreError, match="nothing to roll back"):
        store.rollback()  # a was the first promotion
    assert store.current() == a
    # Rolling back twice walks further back; a new promotion starts a new step.
    store.promote(b)
    store.promote(c)
    assert store.rollback() == b
    assert store.rollback() == a
    store.promote(c)
    assert store.rollback() == a
    assert [(action, frm, to) for _, action, frm, to in store.history()] == [
        ("promote", None, "a"),
        ("promote", "a", "b"),
        ("rollback", "b", "a"),
        ("promote", "a", "b"),
        ("promote", "b", "c"),
        ("rollback", "c", "b"),
        ("rollback", "b", "a"),
        ("promote", "a", "c"),
        ("rollback", "c", "a"),
    ]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temp files
    assert store.versions() == [a, b, c]


def test_rollback_refuses_without_history(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError, match="nothing to roll back"):
        store.rollback()  # empty store
    a = _fake_version(store, "a")
    store.promote(a)
    store.promote(a)  # promoting the current version again is not a step
    with pytest.raises(StoreError, match="nothing to roll back"):
        store.rollback()
    # CURRENT written by hand (not through promote): HISTORY cannot say what preceded it.
    b = _fake_version(store, "b")
    (store.root / "CURRENT").write_text(b + "\n")
    with pytest.raises(StoreError, match="changed by hand"):
        store.rollback()
    assert store.current() == b


def test_rollback_refuses_when_the_previous_version_is_gone(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    a, b = _fake_version(store, "a"), _fake_version(store, "b")
    store.promote(a)
    store.promote(b)
    shutil.rmtree(store.root / a)
    with pytest.raises(StoreError, match="'a'.*no longer in"):
        store.rollback()
    assert store.current() == b  # nothing changed
    assert [action for _, action, _, _ in store.history()] == ["promote", "promote"]
