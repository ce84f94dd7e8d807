"""Cosine scoring (`similarity="cosine"`): logits, loss, training, export and metadata."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F  # noqa: N812 - conventional alias

from models.architectures.sasrec import SequentialRecommender
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import TrainConfig
from models.export import export_onnx
from models.metadata import ONNX_INPUTS, ONNX_OUTPUTS, MetadataError, ModelMetadata
from models.network import ServingRecommender
from models.synthetic import SyntheticShop
from models.train import train_model
from models.trained import TrainedModel
from models.warm_start import warm_start

TEMPERATURE = 0.1


def _model(similarity: str = "cosine") -> SequentialRecommender:
    torch.manual_seed(0)
    return SequentialRecommender(
        40, max_len=8, dim=16, n_heads=2, similarity=similarity, temperature=TEMPERATURE
    ).eval()


def _inputs(batch: int = 5, max_len: int = 8, n_items: int = 40) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(1, n_items + 1, (batch, max_len), generator=gen)
    items[:, :3] = 0  # left padding
    kinds = (items != 0).long()
    return [items, kinds, kinds.clone()]


def test_logits_are_cosines_over_the_temperature() -> None:
    model = _model()
    with torch.no_grad():
        hidden = model.encode_last(*_inputs())
        logits = model.item_logits(hidden)
        table = model.item_table()
    expected = F.cosine_similarity(hidden[:, None, :], table[None, 1:, :], dim=-1) / TEMPERATURE
    torch.testing.assert_close(logits[:, 1:], expected, atol=1e-5, rtol=1e-5)
    assert logits.abs().max() <= 1 / TEMPERATURE + 1e-4
    assert torch.all(logits[:, 0] == 0)  # the zero padding row stays zero


def test_an_items_norm_does_not_change_its_cosine_score() -> None:
    """Dot scoring ranks a long vector first; cosine scoring does not care for its length."""
    for similarity, moved in (("dot", True), ("cosine", False)):
        model = _model(similarity)
        batch = _inputs()
        with torch.no_grad():
            before = model.item_logits(model.encode_last(*batch))
            hidden = model.encode_last(*batch)
            # Scale one item's output row only: the queries are unchanged.
            model.item_embedding.weight[7] *= 50.0
            after = model.item_logits(hidden)
        assert (not torch.allclose(before[:, 7], after[:, 7], atol=1e-4)) is moved
        torch.testing.assert_close(before[:, 8:], after[:, 8:])


@pytest.mark.parametrize("n_negatives", [0, 12])
def test_loss_uses_the_same_logits_as_serving(n_negatives: int) -> None:
    model = _model()
    items, kinds, channels = _inputs()
    targets = torch.roll(items, -1, dims=1)
    targets[:, -1] = 3
    targets[items == 0] = 0
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        loss = model.next_item_loss(
            items, kinds, channels, targets, n_negatives=n_negatives, generator=gen
        )
        logits = model.item_logits(model.encode(items, kinds, channels))[targets != 0]
    if n_negatives == 0:
        torch.testing.assert_close(loss, F.cross_entropy(logits, targets[targets != 0]))
    else:
        draws = torch.randint(1, 41, (n_negatives,), generator=torch.Generator().manual_seed(5))
        negatives = torch.unique(draws)
        # logQ: each distinct negative stands for 1/q items, q = 1 - (1 - 1/40) ** 12.
        log_inv_q = -float(np.log(1 - (1 - 1 / 40) ** n_negatives))
        y = targets[targets != 0]
        sampled = torch.cat([logits.gather(1, y[:, None]), logits[:, negatives] + log_inv_q], dim=1)
        sampled[:, 1:][negatives[None, :] == y[:, None]] = -1.0e9
        torch.testing.assert_close(loss, F.cross_entropy(sampled, torch.zeros_like(y)))


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="similarity"):
        TrainConfig(similarity="euclid")
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(similarity="cosine", temperature=0.0)
    with pytest.raises(ValueError, match="similarity"):
        SequentialRecommender(10, similarity="l2")


@pytest.fixture(scope="module")
def cosine_trained(tiny_shop: SyntheticShop, tiny_config: TrainConfig) -> TrainedModel:
    config = replace(tiny_config, similarity="cosine", temperature=TEMPERATURE)
    return train_model(tiny_shop.interactions(), config)


def test_cosine_training_learns(cosine_trained: TrainedModel) -> None:
    losses = cosine_trained.stats.epoch_losses
    assert len(losses) == 2 and losses[1] < losses[0]
    assert cosine_trained.module.similarity == "cosine"


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_export_matches_torch_and_records_the_scoring(
    cosine_trained: TrainedModel, tmp_path: Path, batch: int
) -> None:
    out = export_onnx(cosine_trained, tmp_path / "model", model_version="cos-v1")
    meta = ModelMetadata.load(out)
    assert (meta.similarity, meta.temperature) == ("cosine", TEMPERATURE)
    n_items, max_len = cosine_trained.vocab.n_items, cosine_trained.config.max_len
    rng = np.random.default_rng(batch)
    items = rng.integers(1, n_items + 1, size=(batch, max_len))
    items[:, : max_len // 2] = 0
    feeds = {
        "item_seq": items.astype(np.int64),
        "type_seq": (items != 0).astype(np.int64),
        "channel_seq": (items != 0).astype(np.int64),
        "exclude": rng.integers(0, n_items + 1, size=(batch, 3)).astype(np.int64),
    }
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_scores, ort_items = session.run(list(ONNX_OUTPUTS), feeds)
    wrapper = ServingRecommender(cosine_trained.module, max_k=meta.max_k).eval()
    with torch.no_grad():
        ref_scores, ref_items, *_ = wrapper(*(torch.from_numpy(feeds[n]) for n in ONNX_INPUTS))
    assert np.max(np.abs(ort_scores - ref_scores.numpy())) <= 1e-4
    assert (ort_items == ref_items.numpy()).mean() >= 0.999  # ties within float noise only
    assert ort_scores.max() <= 1 / TEMPERATURE + 1e-4


def test_metadata_defaults_and_validation(cosine_trained: TrainedModel, tmp_path: Path) -> None:
    meta = ModelMetadata.load(export_onnx(cosine_trained, tmp_path / "m", model_version="c"))
    data = meta.to_dict()
    older = {k: v for k, v in data.items() if k not in ("similarity", "temperature")}
    assert ModelMetadata.from_dict(older).similarity == "dot"  # files written before it
    with pytest.raises(MetadataError, match="similarity"):
        ModelMetadata.from_dict({**data, "similarity": "l2"})
    with pytest.raises(MetadataError, match="temperature"):
        ModelMetadata.from_dict({**data, "temperature": -1.0})


def test_warm_start_keeps_the_scoring(cosine_trained: TrainedModel) -> None:
    items = [i for i in cosine_trained.vocab.ids if i is not None]
    config = replace(cosine_trained.config, similarity="dot")
    model = SequentialRecommender(len(items), max_len=config.max_len, dim=config.dim)
    with pytest.raises(ValueError, match="similarity cosine != dot"):
        warm_start(model, cosine_trained.vocab, (), cosine_trained, config)


def test_checkpoints_from_before_the_setting_load_as_dot(
    tiny_shop: SyntheticShop, tiny_config: TrainConfig, tmp_path: Path
) -> None:
    dot = train_model(tiny_shop.interactions(), replace(tiny_config, similarity="dot", epochs=1))
    path = save_checkpoint(dot, tmp_path / "old.pt")
    payload = torch.load(path, weights_only=True)
    for key in ("similarity", "temperature"):  # what an older checkpoint lacks
        del payload["config"][key]
    torch.save(payload, path)
    loaded = load_checkpoint(path)
    assert TrainConfig().similarity == "cosine"  # the default changed ...
    assert loaded.config.similarity == loaded.module.similarity == "dot"  # ... old files did not
    batch = _inputs(n_items=dot.vocab.n_items, max_len=tiny_config.max_len)
    with torch.no_grad():
        expected = dot.module.item_logits(dot.module.encode_last(*batch))
        got = loaded.module.item_logits(loaded.module.encode_last(*batch))
    torch.testing.assert_close(got, expected)


def test_exported_graph_holds_the_item_tables_as_constants(
    tiny_shop: SyntheticShop, tiny_config: TrainConfig, tmp_path: Path
) -> None:
    """No per-call work over the catalog: attribute means and item norms are precomputed."""
    data = tiny_shop.interactions()
    items = sorted({it.item_id for it in data})
    attributes = {item: [f"cat{k % 5}", f"brand{k % 3}"] for k, item in enumerate(items)}
    trained = train_model(data, replace(tiny_config, epochs=1), item_attributes=attributes)
    graph = onnx.load(str(export_onnx(trained, tmp_path / "m") / "model.onnx")).graph
    rows = trained.vocab.n_items + 1
    # Initializers, or Constant nodes (where the exporter put folded buffers).
    shapes = {tuple(init.dims) for init in graph.initializer} | {
        tuple(attr.t.dims)
        for node in graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
    }
    assert (rows, trained.config.dim) in shapes  # input table, attributes averaged in
    assert (trained.config.dim, rows) in shapes  # output keys, normalised and transposed
    ops = [node.op_type for node in graph.node]
    assert "ReduceSum" not in ops  # no attribute averaging per call
    assert ops.count("ReduceL2") == 1  # only the query side is normalised per call
