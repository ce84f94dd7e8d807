"""OnnxScorer: providers, strategies, exclusions, batching and input handling."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.evaluate import rank_with_model
from models.grouping import solve_grouping_costs
from models.scorer import OnnxScorer, Recommendation, Scorer
from models.session import CUDA_PROVIDER_OPTIONS, ProviderUnavailableError
from models.synthetic import SyntheticShop
from models.trained import TrainedModel

REPO_ROOT = Path(__file__).resolve().parents[2]
# onnxruntime-gpu lists CUDA as available even without a GPU, so look for the device.
HAS_GPU = Path("/dev/nvidiactl").exists()


def _popular_ids(scorer: OnnxScorer, channel: str = "all") -> list[str]:
    """Expected cold-start order: recent counts (channel), then all-time, then index."""
    counts = scorer.metadata.popularity
    recent = scorer.metadata.recent_popularity.get(channel) or [0] * len(counts)
    order = sorted(range(1, len(counts)), key=lambda i: (-recent[i], -counts[i], i))
    return [str(scorer.metadata.items[i]) for i in order]


def _history(shop: SyntheticShop, user: str) -> list[tuple[str, str, str]]:
    return [(e.item_id, e.event_type, e.channel) for e in shop.events if e.user_id == user]


def test_cpu_provider(cpu_scorer: OnnxScorer) -> None:
    assert cpu_scorer.provider == "cpu"
    assert isinstance(cpu_scorer, Scorer)
    assert cpu_scorer.model_version == "test-v1"
    assert (cpu_scorer.max_len, cpu_scorer.max_k, cpu_scorer.n_items) == (20, 50, 200)


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_cuda_unavailable_raises(tiny_model_dir: Path) -> None:
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        OnnxScorer.load(tiny_model_dir, provider="cuda")


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_cuda_listed_but_not_loadable(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Simulate onnxruntime-gpu on a machine without a usable GPU: CUDA is "available" but
    # the session silently runs on CPU.
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with warnings.catch_warnings():
        # CPU-only onnxruntime warns that the requested CUDA provider is unknown.
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ProviderUnavailableError, match="could not"):
            OnnxScorer.load(tiny_model_dir, provider="cuda")
        caplog.set_level(logging.INFO, logger="recstream.models.scorer")
        scorer = OnnxScorer.load(tiny_model_dir, provider="auto")
    assert scorer.provider == "cpu"
    assert "falling back to CPU" in caplog.text


def test_auto_picks_cpu_and_logs(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="recstream.models.scorer")
    scorer = OnnxScorer.load(tiny_model_dir)  # provider="auto"
    if not HAS_GPU:
        assert scorer.provider == "cpu"
    assert any(
        r.name == "recstream.models.scorer" and f"provider {scorer.provider}" in r.getMessage()
        for r in caplog.records
    )


def test_unknown_provider_rejected(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="provider"):
        OnnxScorer.load(tiny_model_dir, provider="tpu")  # type: ignore[arg-type]


def test_unknown_user_gets_popularity(cpu_scorer: OnnxScorer) -> None:
    popular = _popular_ids(cpu_scorer)
    [empty, unknown] = cpu_scorer.recommend(
        [[], [("no-such-sku", "browse", "web")]], [set(), set()], k=10
    )
    assert empty.strategy == unknown.strategy == "popular"
    assert [i for i, _ in empty.items] == popular[:10]
    assert [i for i, _ in unknown.items] == _popular_ids(cpu_scorer, "web")[:10]
    scores = [s for _, s in empty.items]
    assert scores == sorted(scores, reverse=True)
    excluded = cpu_scorer.recommend([[]], [{popular[0], popular[2]}], k=5)[0]
    assert [i for i, _ in excluded.items] == [popular[1], *popular[3:7]]


def test_sequential_strategy_and_scores(cpu_scorer: OnnxScorer, tiny_shop: SyntheticShop) -> None:
    [rec] = cpu_scorer.recommend([_history(tiny_shop, "user-0001")], [set()], k=10)
    assert rec.strategy == "sequential"
    assert len(rec.items) == 10
    assert len({i for i, _ in rec.items}) == 10
    assert all(isinstance(s, float) for _, s in rec.items)
    scores = [s for _, s in rec.items]
    assert scores == sorted(scores, reverse=True)


def test_matches_torch_ranking(
    cpu_scorer: OnnxScorer, tiny_trained: TrainedModel, tiny_shop: SyntheticShop
) -> None:
    histories = [_history(tiny_shop, f"user-{u:04d}") for u in range(1, 41)]
    recs = cpu_scorer.recommend(histories, [set()] * len(histories), k=10)
    torch_ranked = rank_with_model(tiny_trained, histories, k=10)
    same = sum([i for i, _ in r.items] == t for r, t in zip(recs, torch_ranked, strict=True))
    assert same >= len(histories) - 1  # allow one float-noise tie flip


def test_unknown_items_in_history_are_ignored(
    cpu_scorer: OnnxScorer, tiny_shop: SyntheticShop
) -> None:
    history = _history(tiny_shop, "user-0002")[-10:]
    noisy = [("ghost-1", "browse", "web")]
    for step in history:
        noisy += [step, ("ghost-2", "click", "app")]
    a, b = cpu_scorer.recommend([history, noisy], [set(), set()], k=20)
    assert a == b


def test_long_history_uses_last_max_len(cpu_scorer: OnnxScorer, tiny_shop: SyntheticShop) -> None:
    history = _history(tiny_shop, "user-0003")
    assert len(history) > cpu_scorer.max_len
    a, b = cpu_scorer.recommend([history, history[-cpu_scorer.max_len :]], [set(), set()], k=10)
    assert a == b


def test_batch_equals_single(cpu_scorer: OnnxScorer, tiny_shop: SyntheticShop) -> None:
    histories = [_history(tiny_shop, f"user-{u:04d}") for u in (4, 5, 6)] + [[]]
    exclude = [{"sku-00001"}, set(), {"unknown"}, {"sku-00002"}]
    batched = cpu_scorer.recommend(histories, exclude, k=15)
    singles = [
        cpu_scorer.recommend([h], [e], k=15)[0] for h, e in zip(histories, exclude, strict=True)
    ]
    for b, s in zip(batched, singles, strict=True):
        assert b.strategy == s.strategy
        assert [i for i, _ in b.items] == [i for i, _ in s.items]
        np.testing.assert_allclose([x for _, x in b.items], [x for _, x in s.items], atol=1e-4)


def test_exclude_more_than_max_k_still_fills_k(
    cpu_scorer: OnnxScorer, tiny_shop: SyntheticShop
) -> None:
    # Masking happens inside the graph before TopK, so even 150 exclusions (> max_k)
    # still leave k valid results.
    banned = {item.item_id for item in tiny_shop.catalog[:150]}
    [rec] = cpu_scorer.recommend([_history(tiny_shop, "user-0007")], [banned], k=50)
    assert len(rec.items) == 50
    assert not banned & {i for i, _ in rec.items}


def test_k_validation(cpu_scorer: OnnxScorer) -> None:
    with pytest.raises(ValueError, match="max_k"):
        cpu_scorer.recommend([[]], [set()], k=cpu_scorer.max_k + 1)
    with pytest.raises(ValueError):
        cpu_scorer.recommend([[]], [set()], k=0)
    with pytest.raises(ValueError, match="exclude"):
        cpu_scorer.recommend([[], []], [set()], k=5)
    assert cpu_scorer.recommend([], [], k=5) == []


def test_warmup_other_sizes(cpu_scorer: OnnxScorer) -> None:
    cpu_scorer.warmup(batch_sizes=(2, 3))


_ITEM_IDS = [f"sku-{i:05d}" for i in range(200)]
_STEP = st.tuples(
    st.sampled_from(_ITEM_IDS + ["ghost"]),
    st.sampled_from(["browse", "click", "purchase", "weird"]),
    st.sampled_from(["web", "app", "store", "fax"]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    histories=st.lists(st.lists(_STEP, max_size=30), min_size=1, max_size=6),
    data=st.data(),
    k=st.integers(1, 50),
)
def test_excluded_items_never_recommended(
    cpu_scorer: OnnxScorer,
    histories: list[list[tuple[str, str, str]]],
    data: st.DataObject,
    k: int,
) -> None:
    exclude = [
        data.draw(st.sets(st.sampled_from(_ITEM_IDS + ["ghost"]), max_size=120)) for _ in histories
    ]
    recs = cpu_scorer.recommend(histories, exclude, k)
    assert len(recs) == len(histories)
    for rec, banned, history in zip(recs, exclude, histories, strict=True):
        assert isinstance(rec, Recommendation)
        ids = [i for i, _ in rec.items]
        assert not banned & set(ids)
        assert len(ids) == len(set(ids)) == k  # 200 items - <=120 banned >= 50 >= k
        known = any(item != "ghost" for item, _, _ in history)
        assert rec.strategy == ("sequential" if known else "popular")


def test_scorer_import_does_not_load_torch() -> None:
    code = (
        "import sys; import models.scorer; "
        "bad = [m for m in ('torch', 'onnx', 'faust') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_new_users_get_recent_popularity_per_channel(tmp_path: Path) -> None:
    from models.config import TrainConfig
    from models.export import export_onnx
    from models.interactions import Interaction
    from models.train import train_model

    old = [Interaction(f"o{u}", "old-hit", "browse", float(u)) for u in range(50)]
    filler = [Interaction(f"o{u}", f"f{u % 7}", "browse", 100.0 + u) for u in range(50)]
    recent = [
        Interaction(
            f"r{u}",
            "app-hit" if u % 2 else "web-hit",
            "click",
            2000.0 + u,
            "app" if u % 2 else "web",
        )
        for u in range(40)
    ] + [Interaction(f"r{u}", f"f{u % 7}", "click", 1000.0 + u) for u in range(40)]
    data = old + filler + recent
    trained = train_model(data, TrainConfig(max_len=8, dim=16, epochs=1, max_k=5))
    scorer = OnnxScorer.load(export_onnx(trained, tmp_path / "m"), provider="cpu")
    app, web, nothing, store = scorer.recommend(
        [[("new", "browse", "app")], [("new", "browse", "web")], [], [("x", "click", "store")]],
        [set(), set(), set(), set()],
        k=3,
    )
    assert {r.strategy for r in (app, web, nothing, store)} == {"popular"}
    # Recently popular in the user's channel first; then all-time popularity fills up.
    assert [i for i, _ in app.items[:2]] == ["app-hit", "old-hit"]
    assert [i for i, _ in web.items[:2]] == ["web-hit", "old-hit"]
    # No channel, or a channel without recent data: recent popularity over all channels.
    assert [i for i, _ in nothing.items] == [i for i, _ in store.items]
    assert {i for i, _ in nothing.items[:2]} == {"app-hit", "web-hit"}


def test_trimming_padding_columns_is_exact(
    cpu_scorer: OnnxScorer, tiny_trained: TrainedModel, tiny_shop: SyntheticShop
) -> None:
    """Short histories run on a trimmed batch; results equal the full-width graph and torch."""
    full = _history(tiny_shop, "user-0007")
    histories = [full[-n:] for n in (1, 2, 3, 5)]  # longest row 5 of max_len
    trimmed = cpu_scorer.recommend(histories, [set()] * len(histories), k=10)
    assert cpu_scorer._dynamic_seq
    cpu_scorer._dynamic_seq = False
    try:
        padded = cpu_scorer.recommend(histories, [set()] * len(histories), k=10)
    finally:
        cpu_scorer._dynamic_seq = True
    for t, p in zip(trimmed, padded, strict=True):
        assert [i for i, _ in t.items] == [i for i, _ in p.items]
        np.testing.assert_allclose([s for _, s in t.items], [s for _, s in p.items], atol=1e-4)
    torch_ranked = rank_with_model(tiny_trained, histories, k=10)
    assert [[i for i, _ in r.items] for r in trimmed] == torch_ranked


def test_length_groups_split_one_long_history_off(cpu_scorer: OnnxScorer) -> None:
    """One long history among short ones gets its own call; equal lengths stay one call."""
    lengths = np.array([3] * 40 + [cpu_scorer.max_len] + [2] * 23)
    groups = cpu_scorer._length_groups(lengths)
    assert 2 <= len(groups) <= 3
    assert sorted(np.concatenate(groups).tolist()) == list(range(lengths.size))
    longest = next(g for g in groups if 40 in g.tolist())
    assert lengths[longest].min() > 3  # no short row is padded to the long one
    assert len(cpu_scorer._length_groups(np.full(64, 7))) == 1
    assert len(cpu_scorer._length_groups(np.array([5]))) == 1


def _recommend_with(
    scorer: OnnxScorer, switch: str, value: bool, histories: list, exclude: list
) -> list:
    """`scorer.recommend(..., k=10)` with one boolean attribute flipped, then restored."""
    before = getattr(scorer, switch)
    setattr(scorer, switch, value)
    try:
        return scorer.recommend(histories, exclude, k=10)
    finally:
        setattr(scorer, switch, before)


def test_length_grouped_batch_equals_one_call(
    cpu_scorer: OnnxScorer, tiny_shop: SyntheticShop
) -> None:
    """Splitting a batch by history length changes no list and no score."""
    full = _history(tiny_shop, "user-0007")
    rng = np.random.default_rng(3)
    histories = [full[-int(n) :] for n in rng.integers(1, len(full) + 1, size=40)]
    histories[5] = full  # one long row
    exclude = [{full[-1][0]} if i % 3 == 0 else set() for i in range(len(histories))]
    assert len(cpu_scorer._length_groups(np.array([len(h) for h in histories]))) > 1
    grouped = cpu_scorer.recommend(histories, exclude, k=10)
    single = _recommend_with(cpu_scorer, "group_by_length", False, histories, exclude)
    for g, s in zip(grouped, single, strict=True):
        assert [i for i, _ in g.items] == [i for i, _ in s.items]
        np.testing.assert_allclose([x for _, x in g.items], [x for _, x in s.items], atol=1e-4)


def _modelled_seconds(batch: int, width: int, row: float = 40.0, call: float = 25.0) -> float:
    return 2e-6 * (call + batch * (width + row))


def test_solve_grouping_costs_recovers_the_model() -> None:
    one, narrow, wide = (_modelled_seconds(b, w) for b, w in ((1, 1), (32, 1), (32, 50)))
    solved = solve_grouping_costs(one, narrow, wide, rows=32, width=50)
    assert solved is not None
    np.testing.assert_allclose(solved, (2e-6, 40.0, 25.0), rtol=1e-9)
    # Timings that contradict the model (noise) give None, not negative costs.
    assert solve_grouping_costs(one, narrow, narrow * 0.9, rows=32, width=50) is None
    assert solve_grouping_costs(one, one * 0.5, wide, rows=32, width=50) is None
    assert solve_grouping_costs(narrow, narrow, wide, rows=32, width=50) is None


def test_warmup_measures_grouping_costs(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """warmup() times calls of known shapes and adopts the solved costs."""
    scorer = OnnxScorer.load(tiny_model_dir, provider="cpu", intra_op_threads=1)
    assert scorer.grouping_costs["source"] == "modelled"
    lengths = np.array([2] * 30 + [scorer.max_len] * 2)
    assert len(scorer._length_groups(lengths)) >= 2  # modelled: a call is cheap
    clock = [0.0]
    real_run = scorer._dummy_run

    def timed_run(batch: int, width: int) -> None:
        real_run(batch, width)
        clock[0] += _modelled_seconds(batch, width, row=1.0, call=5000.0)

    monkeypatch.setattr(scorer, "_dummy_run", timed_run)
    monkeypatch.setattr("models.scorer.time.perf_counter", lambda: clock[0])
    scorer.warmup()
    costs = scorer.grouping_costs
    assert costs["source"] == "measured"
    assert costs["row"] == pytest.approx(1.0) and costs["call"] == pytest.approx(5000.0)
    # The grouping rule now uses the measured costs: a call this dear is never split.
    assert len(scorer._length_groups(lengths)) == 1


def test_io_binding_gives_the_same_lists(cpu_scorer: OnnxScorer, tiny_shop: SyntheticShop) -> None:
    """The IO-binding path (default on CUDA) returns exactly what session.run returns."""
    full = _history(tiny_shop, "user-0003")
    histories = [full[-n:] for n in range(1, min(len(full), 12) + 1)]
    exclude = [{full[-1][0]} if i % 2 else set() for i in range(len(histories))]
    assert not cpu_scorer.io_binding  # off on CPU by default
    plain = cpu_scorer.recommend(histories, exclude, k=10)
    bound = _recommend_with(cpu_scorer, "io_binding", True, histories, exclude)
    assert [r.items for r in bound] == [r.items for r in plain]


def test_cuda_session_gets_the_provider_options(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []
    real = ort.InferenceSession

    def spy(path: str, options: ort.SessionOptions, providers: list[object]) -> object:
        seen.append(providers)
        return real(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", spy)
    with pytest.raises(ProviderUnavailableError):  # the spy's session runs on CPU
        OnnxScorer.load(tiny_model_dir, provider="cuda")
    assert seen == [[("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS), "CPUExecutionProvider"]]
    assert CUDA_PROVIDER_OPTIONS["arena_extend_strategy"] == "kSameAsRequested"
