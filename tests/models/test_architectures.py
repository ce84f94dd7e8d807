"""Every registered architecture: the same interface, export and ORT-vs-torch parity.

Parametrised over `models.architectures.architecture_names()`, so a new architecture
file is covered without touching this one. Tiny random (untrained) models: parity does
not depend on the weights, and the whole module runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.architectures import (
    DEFAULT_ARCH,
    architecture_names,
    build_network,
    get_architecture,
)
from models.architectures.sasrec import SequentialRecommender
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import TrainConfig
from models.export import export_onnx
from models.metadata import (
    EXPLAIN_OUTPUTS,
    MASKED_SCORE,
    MODEL_FILENAME,
    ONNX_INPUTS,
    ONNX_OUTPUTS,
    SUCCESSOR_OUTPUTS,
    ModelMetadata,
)
from models.network import Recommender, ServingRecommender
from models.session import create_session
from models.speed import untrained_model
from models.trained import TrainedModel

ARCHS = architecture_names()
N_ITEMS = 120


def _config(arch: str, repeat_head: bool = True, transition_head: bool = False) -> TrainConfig:
    return TrainConfig(
        arch=arch,
        repeat_head=repeat_head,
        transition_head=transition_head,
        max_len=12,
        dim=16,
        n_layers=2,
        n_heads=2,
        max_k=20,
        seed=7,
    )


def _randomise_repeat_head(module: Recommender) -> None:
    """An untrained head adds ~0: give it weights that move scores and the top-K."""
    head = module.repeat_head
    assert head is not None
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        head.recency.copy_(torch.randn(head.recency.shape, generator=generator) * 5)
        head.count_weight.fill_(2.0)
        head.gate.weight.copy_(torch.randn(head.gate.weight.shape, generator=generator))


def _fit_transition_head(module: Recommender) -> None:
    """A transition table from random timelines over few items (so that the rows of
    `_batch` have successors), and a gate that moves scores and the top-K."""
    head = module.transition_head
    assert head is not None
    rng = np.random.default_rng(3)
    head.fit([rng.integers(1, 8, size=30).tolist() for _ in range(40)])
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        head.gate.weight.copy_(torch.randn(head.gate.weight.shape, generator=generator) * 3)


@pytest.fixture(
    scope="module",
    params=[(arch, heads) for arch in ARCHS for heads in ("repeat", "plain", "transition")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainedModel, Path]:
    arch, heads = request.param
    repeat_head, transition_head = heads != "plain", heads == "transition"
    trained = untrained_model(N_ITEMS, _config(arch, repeat_head, transition_head))
    if repeat_head:
        _randomise_repeat_head(trained.module)
    if transition_head:
        _fit_transition_head(trained.module)
    out = export_onnx(trained, tmp_path_factory.mktemp(arch) / "model", model_version=arch)
    return trained, out


def _batch(batch: int, max_len: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=batch)
    lengths[0] = max_len  # always one full row
    pad = np.arange(max_len)[None, :] < (max_len - lengths)[:, None]
    items = rng.integers(1, N_ITEMS + 1, (batch, max_len))
    items[::2] = rng.integers(1, 6, (len(items[::2]), max_len))  # rows full of repeats
    return {
        "item_seq": np.where(pad, 0, items),
        "type_seq": np.where(pad, 0, rng.integers(1, 4, (batch, max_len))),
        "channel_seq": np.where(pad, 0, rng.integers(1, 4, (batch, max_len))),
        "exclude": rng.integers(0, N_ITEMS + 1, (batch, 3)),  # 0 = padding entries
    }


def test_registry_knows_the_default() -> None:
    assert DEFAULT_ARCH == "sasrec" and DEFAULT_ARCH in ARCHS
    assert get_architecture("sasrec") is SequentialRecommender
    assert TrainConfig().arch == DEFAULT_ARCH
    with pytest.raises(ValueError, match="unknown architecture"):
        get_architecture("no-such-arch")
    with pytest.raises(ValueError, match="arch must be one of"):
        TrainConfig(arch="no-such-arch")


@pytest.mark.parametrize("arch", ARCHS)
def test_build_network_builds_the_registered_class(arch: str) -> None:
    module = build_network(_config(arch), N_ITEMS)
    assert type(module) is get_architecture(arch)
    assert isinstance(module, Recommender) and module.arch == arch


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_last_is_the_last_position_of_encode(arch: str) -> None:
    """The serving path reads what training trains, at full and trimmed widths."""
    torch.manual_seed(0)
    module = build_network(_config(arch), N_ITEMS).eval()
    feeds = {k: torch.from_numpy(v) for k, v in _batch(7, module.max_len, seed=1).items()}
    seqs = (feeds["item_seq"], feeds["type_seq"], feeds["channel_seq"])
    with torch.no_grad():
        for width in (module.max_len, 5):
            trimmed = [s[:, -width:] for s in seqs]
            full = module.encode(*trimmed)
            assert full.shape == (7, width, module.dim)
            last = module.encode_last(*trimmed)
            torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_position_sees_its_future(arch: str) -> None:
    """Training scores the next item at every position: position t must depend on
    positions <= t only (changing the newest event changes nothing before it), while
    the padding left of a sequence changes nothing at all."""
    torch.manual_seed(0)
    module = build_network(_config(arch), N_ITEMS).eval()
    feeds = {k: torch.from_numpy(v) for k, v in _batch(5, module.max_len, seed=2).items()}
    items, types, channels = feeds["item_seq"], feeds["type_seq"], feeds["channel_seq"]
    changed = items.clone()
    changed[:, -1] = changed[:, -1] % N_ITEMS + 1  # another real item, newest position
    with torch.no_grad():
        before, after = (
            module.encode(items, types, channels),
            module.encode(changed, types, channels),
        )
        torch.testing.assert_close(before[:, :-1], after[:, :-1], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(before[:, -1], after[:, -1])
        # Four events behind max_len - 4 padding columns, or with none (a batch trimmed
        # to its longest row): the same state.
        events = [s[:1, -4:] for s in (items, types, channels)]
        padded = [F.pad(s, (module.max_len - 4, 0)) for s in events]
        torch.testing.assert_close(
            module.encode_last(*padded), module.encode_last(*events), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_onnx_matches_torch(exported: tuple[TrainedModel, Path], batch: int) -> None:
    """Same serving wrapper for every architecture: scores within 1e-4, same top-K, and
    the explanation outputs (named history position, its cosine, the query vector and
    the history items' scores) equal as well."""
    trained, model_dir = exported
    metadata = ModelMetadata.load(model_dir)
    assert metadata.arch == trained.config.arch
    assert metadata.repeat_head == trained.config.repeat_head
    assert metadata.transition_head == trained.config.transition_head
    assert metadata.explains
    session, _ = create_session(model_dir / MODEL_FILENAME, "cpu", 1)
    feeds = _batch(batch, metadata.max_len, seed=batch)
    wrapper = ServingRecommender(trained.module.eval(), max_k=metadata.max_k).eval()
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(*(torch.from_numpy(feeds[n]) for n in ONNX_INPUTS))]
    names = [*ONNX_OUTPUTS, *EXPLAIN_OUTPUTS]
    ort_scores, ort_items, ort_pos, ort_cos, ort_user, ort_hist = session.run(names, feeds)
    real = ref[0] > MASKED_SCORE / 2  # masked (excluded / padding) scores are all ~MASKED_SCORE
    assert real.any()
    assert np.abs(np.asarray(ort_scores)[real] - ref[0][real]).max() <= 1e-4
    np.testing.assert_array_equal(np.asarray(ort_items), ref[1])
    np.testing.assert_allclose(np.asarray(ort_cos)[real], ref[3][real], atol=1e-4)
    # Positions agree except between history items of (numerically) equal cosine.
    rows, cols = np.nonzero((np.asarray(ort_pos) != ref[2]) & real)
    assert np.all(np.abs(ref[3][rows, cols] - ort_cos[rows, cols]) <= 1e-4)
    np.testing.assert_allclose(ort_user, ref[4], atol=1e-4)
    hist_real = ref[5] > MASKED_SCORE / 2
    np.testing.assert_allclose(np.asarray(ort_hist)[hist_real], ref[5][hist_real], atol=1e-4)
    assert np.all(np.asarray(ort_hist)[~hist_real] <= MASKED_SCORE / 2)
    if trained.config.transition_head:  # its items and their scores, for the scorer
        assert metadata.onnx_outputs[-2:] == list(SUCCESSOR_OUTPUTS)
        successors, successor_scores = session.run(list(SUCCESSOR_OUTPUTS), feeds)
        np.testing.assert_array_equal(successors, ref[6])
        assert (successors != 0).any()
        known = ref[7] > MASKED_SCORE / 2
        np.testing.assert_allclose(np.asarray(successor_scores)[known], ref[7][known], atol=1e-4)
    else:
        assert len(ref) == 6 and metadata.onnx_outputs == [*ONNX_OUTPUTS, *EXPLAIN_OUTPUTS]


def test_checkpoint_rebuilds_the_architecture(
    exported: tuple[TrainedModel, Path], tmp_path: Path
) -> None:
    trained, _ = exported
    loaded = load_checkpoint(save_checkpoint(trained, tmp_path / "best.pt"))
    assert loaded.config.arch == trained.config.arch
    assert type(loaded.module) is type(trained.module)
    for key, value in trained.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[key], value)


def test_checkpoint_without_arch_loads_as_the_default(tmp_path: Path) -> None:
    """Checkpoints and metadata written before the registry existed are "sasrec"."""
    trained = untrained_model(N_ITEMS, _config(DEFAULT_ARCH))
    path = save_checkpoint(trained, tmp_path / "best.pt")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    del payload["config"]["arch"]
    torch.save(payload, path)
    loaded = load_checkpoint(path)
    assert loaded.config.arch == DEFAULT_ARCH
    assert type(loaded.module) is SequentialRecommender
    meta = export_onnx(loaded, tmp_path / "model", model_version="old")
    data = ModelMetadata.load(meta).to_dict()
    del data["arch"]
    assert ModelMetadata.from_dict(data).arch == DEFAULT_ARCH
