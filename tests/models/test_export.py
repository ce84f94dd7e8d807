"""ONNX export: files, metadata, atomic replace, and ORT-vs-torch parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.export import export_onnx
from models.metadata import (
    EXPLAIN_OUTPUTS,
    FORMAT_VERSION,
    MASKED_SCORE,
    ONNX_INPUTS,
    ONNX_OUTPUTS,
    MetadataError,
    ModelMetadata,
    make_model_version,
)
from models.network import ServingRecommender
from models.trained import TrainedModel


def _random_batch(
    rng: np.random.Generator, batch: int, n_items: int, max_len: int, n_exclude: int
) -> dict[str, np.ndarray]:
    lengths = rng.integers(1, max_len + 1, size=batch)
    lengths[0] = max_len  # always cover a full row
    pad = np.arange(max_len)[None, :] < (max_len - lengths)[:, None]
    items = np.where(pad, 0, rng.integers(1, n_items + 1, size=(batch, max_len)))
    types = np.where(pad, 0, rng.integers(1, 4, size=(batch, max_len)))
    channels = np.where(pad, 0, rng.integers(1, 4, size=(batch, max_len)))
    exclude = rng.integers(0, n_items + 1, size=(batch, n_exclude))  # 0 = padding entries
    return {
        "item_seq": items.astype(np.int64),
        "type_seq": types.astype(np.int64),
        "channel_seq": channels.astype(np.int64),
        "exclude": exclude.astype(np.int64),
    }


def test_files_and_graph(tiny_model_dir: Path) -> None:
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == [
        "item_table.npy",
        "metadata.json",
        "model.onnx",
    ]
    # No temp/old directories left next to the model.
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == [tiny_model_dir.name]
    model = onnx.load(str(tiny_model_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == list(ONNX_INPUTS)
    assert [o.name for o in model.graph.output] == [*ONNX_OUTPUTS, *EXPLAIN_OUTPUTS]
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    assert dims["item_seq"] == ["batch", "seq"]  # trimmed to the longest history per batch
    assert dims["exclude"] == ["batch", "n_exclude"]


def test_metadata_content(tiny_model_dir: Path, tiny_trained: TrainedModel) -> None:
    raw = json.loads((tiny_model_dir / "metadata.json").read_text())
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["items"][0] is None
    assert raw["items"][1:] == list(tiny_trained.vocab.ids[1:])
    assert raw["popularity"] == tiny_trained.popularity
    assert raw["model_version"] == "test-v1"
    assert raw["metrics"] == {"hr@10": 0.5}
    assert raw["training_data_fingerprint"] == tiny_trained.data_fingerprint
    assert raw["created_at"].endswith("Z")
    assert (raw["max_len"], raw["max_k"], raw["dim"]) == (20, 50, 32)
    assert raw["event_types"] == ["click", "browse", "purchase"]
    assert raw["channels"] == ["web", "app", "store"]


def test_metadata_round_trip(tiny_model_dir: Path, tmp_path: Path) -> None:
    meta = ModelMetadata.load(tiny_model_dir)
    meta.save(tmp_path / "m.json")
    assert ModelMetadata.load(tmp_path / "m.json") == meta
    assert ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta


def test_metadata_validation(tiny_model_dir: Path) -> None:
    good = ModelMetadata.load(tiny_model_dir).to_dict()
    for mutate in (
        {"format_version": 2},
        {"items": ["x", *good["items"][1:]]},
        {"popularity": good["popularity"][:-1]},
        {"max_k": len(good["items"])},
        {"training_data_fingerprint": "nothex"},
    ):
        with pytest.raises(MetadataError):
            ModelMetadata.from_dict({**good, **mutate})
    with pytest.raises(MetadataError):
        ModelMetadata.from_dict({k: v for k, v in good.items() if k != "items"})


def test_default_model_version_format(tiny_trained: TrainedModel, tmp_path: Path) -> None:
    out = export_onnx(tiny_trained, tmp_path / "m")
    version = ModelMetadata.load(out).model_version
    assert version.endswith("-" + tiny_trained.data_fingerprint[:8])
    assert len(version) == len("20261123T142500Z-") + 8
    from datetime import UTC, datetime

    assert make_model_version("ab" * 32, datetime(2026, 11, 23, 14, 25, tzinfo=UTC)) == (
        "20261123T142500Z-abababab"
    )


def test_reexport_replaces_atomically(tiny_trained: TrainedModel, tmp_path: Path) -> None:
    out = tmp_path / "current"
    export_onnx(tiny_trained, out, model_version="a")
    export_onnx(tiny_trained, out, model_version="b")
    assert ModelMetadata.load(out).model_version == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["current"]


def test_failed_export_leaves_previous_model(
    tiny_trained: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "current"
    export_onnx(tiny_trained, out, model_version="good")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(tiny_trained, out, model_version="bad")
    assert ModelMetadata.load(out).model_version == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["current"]


@pytest.mark.parametrize("batch", [1, 7, 256])
@pytest.mark.parametrize("n_exclude", [0, 1, 13])
def test_ort_matches_torch(
    tiny_model_dir: Path, tiny_trained: TrainedModel, batch: int, n_exclude: int
) -> None:
    cfg = tiny_trained.config
    n_items = tiny_trained.vocab.n_items
    rng = np.random.default_rng(1000 * batch + n_exclude)
    feeds = _random_batch(rng, batch, n_items, cfg.max_len, max(1, n_exclude))
    if n_exclude == 0:
        feeds["exclude"] = np.zeros((batch, 1), dtype=np.int64)  # "no excludes" = one pad
    session = ort.InferenceSession(
        str(tiny_model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    ort_scores, ort_items = session.run(list(ONNX_OUTPUTS), feeds)

    wrapper = ServingRecommender(tiny_trained.module, max_k=50).eval()
    with torch.no_grad():
        ref_scores_t, ref_items_t, *_ = wrapper(*(torch.from_numpy(feeds[n]) for n in ONNX_INPUTS))
    ref_scores, ref_items = ref_scores_t.numpy(), ref_items_t.numpy()

    assert ort_scores.dtype == np.float32 and ort_items.dtype == np.int64
    assert ort_scores.shape == ort_items.shape == (batch, 50)
    assert np.max(np.abs(ort_scores - ref_scores)) <= 1e-4
    mismatch = ort_items != ref_items
    # Identical top-K, except where two candidates tie within float noise (then either
    # order is correct); such ties should be vanishingly rare.
    if mismatch.any():
        assert np.max(np.abs(ref_scores[mismatch] - ort_scores[mismatch])) <= 1e-5
        assert mismatch.sum() <= 2
    for row in range(batch):
        banned = set(feeds["exclude"][row].tolist()) | {0}
        assert not banned & set(ort_items[row].tolist())
        assert (ort_scores[row] > MASKED_SCORE / 2).all()
        assert (np.diff(ort_scores[row]) <= 0).all()
