"""Reasons, search intents and cold items in OnnxScorer (issue #17).

The expected values are recomputed here independently of the scorer: from the torch
checkpoint's item table and its full-catalog logits (`Recommender.last_scores`).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.catalog import ItemTextIndex
from models.config import TrainConfig
from models.encoding import encode_histories
from models.export import export_onnx
from models.scorer import Intent, OnnxScorer, Reason
from models.synthetic import SyntheticShop, generate_shop
from models.train import train_model
from models.trained import TrainedModel

TEXT_DIM = 16


def _history(shop: SyntheticShop, user: str, n: int = 15) -> list[tuple[str, str, str]]:
    steps = [(e.item_id, e.event_type, e.channel) for e in shop.events if e.user_id == user]
    return steps[-n:]


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=-1, keepdims=True), 1e-12)


def _torch_logits(trained: TrainedModel, histories: list[list[tuple[str, str, str]]]) -> np.ndarray:
    """Full-catalog sequence logits [B, n_items + 1] from the torch model."""
    enc = encode_histories(histories, trained.vocab.index, trained.config.max_len)
    with torch.no_grad():
        scores = trained.module.eval().last_scores(
            *(torch.from_numpy(a) for a in (enc.item_seq, enc.type_seq, enc.channel_seq))
        )
    out = scores.numpy().astype(np.float64)
    out[:, 0] = -np.inf
    return out


def _category_vectors(
    shop: SyntheticShop, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Planted text: every item's vector is its category's direction plus noise."""
    rng = np.random.default_rng(seed)
    names = sorted({item.category for item in shop.catalog})
    directions = {c: _unit(rng.normal(size=TEXT_DIM)) for c in names}
    items = {
        item.item_id: _unit(directions[item.category] + 0.3 * rng.normal(size=TEXT_DIM))
        for item in shop.catalog
    }
    return items, directions


def _index(vectors: dict[str, np.ndarray]) -> ItemTextIndex:
    index = ItemTextIndex(TEXT_DIM)
    ids = sorted(vectors)
    index.upsert(ids, np.stack([vectors[i] for i in ids]).astype(np.float32))
    return index


@pytest.fixture()
def scorer(tiny_model_dir: Path) -> OnnxScorer:
    """A fresh scorer per test (tests attach catalogs and change weights)."""
    return OnnxScorer.load(tiny_model_dir, provider="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def category_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticShop, Path]:
    """A shop of 4 categories and a model trained long enough for its item table to
    group items by category (what a text map into that space can find)."""
    shop = generate_shop(n_items=120, n_users=300, n_categories=4, seed=5)
    config = TrainConfig(max_len=20, dim=32, n_layers=1, n_heads=2, epochs=6, max_k=50, seed=3)
    trained = train_model(shop.interactions(), config)
    return shop, export_onnx(trained, tmp_path_factory.mktemp("cat") / "model")


def test_reason_is_the_history_item_of_highest_cosine(
    scorer: OnnxScorer, tiny_trained: TrainedModel, tiny_shop: SyntheticShop
) -> None:
    histories = [_history(tiny_shop, f"user-{u:04d}") for u in range(1, 31)]
    recs = scorer.recommend(histories, [set()] * len(histories), k=10)
    unit = _unit(tiny_trained.module.item_table().detach().numpy())
    index = tiny_trained.vocab.index
    for history, rec in zip(histories, recs, strict=True):
        assert rec.reasons is not None and len(rec.reasons) == len(rec.items) == 10
        seen = [i for i, _, _ in history if i in index]
        for (item, _), reason in zip(rec.items, rec.reasons, strict=True):
            assert reason.code == "similar_to_viewed"
            assert reason.item_id in seen
            cosine = {h: float(unit[index[item]] @ unit[index[h]]) for h in seen}
            assert cosine[reason.item_id] >= max(cosine.values()) - 1e-5


def test_popular_rows_get_popular_reasons(scorer: OnnxScorer) -> None:
    [rec] = scorer.recommend([[]], [set()], k=5)
    assert rec.strategy == "popular"
    assert rec.reasons == [Reason("popular")] * 5


def test_old_export_keeps_loading_and_explains_from_the_item_table(
    tiny_trained: TrainedModel,
    tiny_shop: SyntheticShop,
    scorer: OnnxScorer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old_dir = export_onnx(tiny_trained, tmp_path / "old", explain=False)
    old = OnnxScorer.load(old_dir, provider="cpu")
    assert not old.metadata.explains
    histories = [_history(tiny_shop, f"user-{u:04d}") for u in range(1, 11)]
    exclude = [{"sku-00001"}] * len(histories)
    new_recs = scorer.recommend(histories, exclude, k=10)
    old_recs = old.recommend(histories, exclude, k=10)
    for a, b in zip(old_recs, new_recs, strict=True):
        assert [i for i, _ in a.items] == [i for i, _ in b.items]
        assert a.reasons == b.reasons  # numpy from item_table.npy == the graph's argmax
    # Without the item table, no reasons, and a catalog is ignored with a warning.
    (old_dir / "item_table.npy").unlink()
    bare = OnnxScorer.load(old_dir, provider="cpu")
    caplog.set_level(logging.WARNING, logger="recstream.models.scorer")
    bare.attach_catalog(_index(_category_vectors(tiny_shop)[0]))
    assert "ignored" in caplog.text
    recs = bare.recommend(histories, exclude, k=10)
    assert all(r.reasons is None for r in recs)
    assert [r.items for r in recs] == [r.items for r in old_recs]


def _fused_reference(
    logits: np.ndarray,
    exclude_idx: list[int],
    text: dict[int, np.ndarray],
    intent: np.ndarray,
    weight: float,
    k: int,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Top-k model indices of the fused score, and the sequence and intent terms."""
    seq = logits.copy()
    scale = float(np.std(seq[1:]))
    seq[exclude_idx] = -np.inf
    rows = np.asarray(sorted(text))
    cos = np.asarray([text[r] @ intent for r in rows])
    term = np.zeros_like(seq)
    term[rows] = weight * scale * np.tanh(np.maximum((cos - cos.mean()) / cos.std(), 0))
    fused = seq + term
    order = np.lexsort((np.arange(fused.size), -fused))
    return [int(i) for i in order[:k]], seq, term


@pytest.fixture(scope="module")
def transition_model(
    tiny_shop: SyntheticShop, tiny_config: TrainConfig, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainedModel, Path]:
    """The tiny model with the transition-prior head, its gate turned up so that its
    term moves items (the items it scores are outside the user vector's reach)."""
    trained = train_model(tiny_shop.interactions(), replace(tiny_config, transition_head=True))
    assert trained.module.transition_head is not None
    with torch.no_grad():
        trained.module.transition_head.gate.bias.fill_(4.0)
    return trained, export_onnx(trained, tmp_path_factory.mktemp("transition") / "model")


@pytest.mark.parametrize("heads", ["default", "transition"])
def test_intent_fusion_is_exact_over_the_whole_catalog(
    heads: str, request: pytest.FixtureRequest, tiny_shop: SyntheticShop
) -> None:
    if heads == "default":
        tiny_trained: TrainedModel = request.getfixturevalue("tiny_trained")
        model_dir: Path = request.getfixturevalue("tiny_model_dir")
    else:
        tiny_trained, model_dir = request.getfixturevalue("transition_model")
    scorer = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=1)
    vectors, directions = _category_vectors(tiny_shop)
    scorer.attach_catalog(_index(vectors))
    scorer.search_weight = 3.0  # large: items far below the graph's top-50 must enter
    users = [f"user-{u:04d}" for u in range(1, 21)]
    histories = [_history(tiny_shop, u) for u in users]
    category = {item.item_id: item.category for item in tiny_shop.catalog}
    names = sorted(directions)
    searched = [names[(i * 5) % len(names)] for i in range(len(users))]
    purchased = [{histories[i][-1][0], f"sku-{i:05d}"} for i in range(len(users))]
    intents: list[Intent | None] = [Intent(directions[c], 0.8) for c in searched]
    intents[3] = None  # a row without a search in the same batch
    recs = scorer.recommend(histories, purchased, k=20, intents=intents)
    plain = scorer.recommend(histories, purchased, k=20)
    logits = _torch_logits(tiny_trained, histories)
    index = tiny_trained.vocab.index
    text = {index[i]: v for i, v in vectors.items()}
    graph_rank = np.argsort(-logits, axis=1)
    entered_deep = 0
    for row, rec in enumerate(recs):
        ids = [i for i, _ in rec.items]
        assert len(ids) == 20 and not purchased[row] & set(ids)
        assert rec.reasons is not None and len(rec.reasons) == 20
        if intents[row] is None:
            assert rec == plain[row]
            continue
        banned = [index[i] for i in purchased[row] if i in index]
        top, seq, term = _fused_reference(
            logits[row], banned, text, directions[searched[row]], 0.8 * 3.0, 20
        )
        assert ids == [tiny_trained.vocab.decode(i) for i in top]
        np.testing.assert_allclose(
            [s for _, s in rec.items], [seq[i] + term[i] for i in top], atol=1e-3
        )
        deep = set(graph_rank[row, : scorer.max_k].tolist())
        entered_deep += sum(i not in deep for i in top)
        kth = np.sort(seq[np.isfinite(seq)])[::-1][19]
        for i, reason in zip(top, rec.reasons, strict=True):
            full = 0.8 * 3.0 * np.std(logits[row][1:])
            by_search = term[i] > seq[i] - kth and term[i] >= 0.5 * full
            assert (reason.code == "matches_search") == by_search
        share = np.mean([category[i] == searched[row] for i in ids])
        assert share > np.mean([category[i] == searched[row] for i, _ in plain[row].items])
    assert entered_deep > 0  # the test did exercise items beyond the graph's top-K


def test_new_user_who_searches_gets_popular_items_of_the_search(
    scorer: OnnxScorer, tiny_shop: SyntheticShop
) -> None:
    vectors, directions = _category_vectors(tiny_shop)
    category = {item.item_id: item.category for item in tiny_shop.catalog}
    scorer.attach_catalog(_index(vectors))
    [plain] = scorer.recommend([[]], [set()], k=10)
    target = sorted(directions)[1]
    banned = {i for i, c in category.items() if c == target and i.endswith("1")}
    [searched] = scorer.recommend([[]], [banned], k=10, intents=[Intent(directions[target], 1.0)])
    assert searched.strategy == plain.strategy == "popular"
    assert plain.reasons == [Reason("popular")] * 10
    ids = [i for i, _ in searched.items]
    assert len(ids) == 10 and not banned & set(ids)
    share = np.mean([category[i] == target for i in ids])
    assert share > np.mean([category[i] == target for i, _ in plain.items])
    assert searched.reasons is not None
    for item, reason in zip(ids, searched.reasons, strict=True):
        assert reason.code in ("matches_search", "popular")
        if reason.code == "matches_search":
            assert item not in [i for i, _ in plain.items]  # the search placed it


def test_zero_weight_intent_changes_nothing(scorer: OnnxScorer, tiny_shop: SyntheticShop) -> None:
    vectors, directions = _category_vectors(tiny_shop)
    histories = [_history(tiny_shop, f"user-{u:04d}") for u in range(1, 6)]
    before = scorer.recommend(histories, [set()] * 5, k=10)
    scorer.attach_catalog(_index(vectors))
    intents: list[Intent | None] = [Intent(next(iter(directions.values())), 0.0)] * 5
    assert scorer.recommend(histories, [set()] * 5, k=10, intents=intents) == before
    with pytest.raises(ValueError, match="intents"):
        scorer.recommend(histories, [set()] * 5, k=10, intents=intents[:2])


def test_cold_items_are_recommended_excluded_and_explained(
    category_model: tuple[SyntheticShop, Path],
) -> None:
    tiny_shop, model_dir = category_model
    scorer = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=1)
    # 120 items with text: fit the map on them (the default asks for 200), and see
    # every index change at once.
    scorer.min_cold_fit, scorer.catalog_refresh_s = 0, 0.0
    vectors, directions = _category_vectors(tiny_shop)
    category = {item.item_id: item.category for item in tiny_shop.catalog}
    rng = np.random.default_rng(1)
    cold = {
        f"new-{c}-{n}": (c, _unit(directions[c] + 0.3 * rng.normal(size=TEXT_DIM)))
        for c in sorted(directions)
        for n in range(3)
    }
    index = _index(vectors)
    scorer.attach_catalog(index)
    histories = [_history(tiny_shop, f"user-{u:04d}") for u in range(1, 41)]
    before = scorer.recommend(histories, [set()] * 40, k=20)
    assert not any(i.startswith("new-") for r in before for i, _ in r.items)
    index.upsert(list(cold), np.stack([v for _, v in cold.values()]).astype(np.float32))
    recs = scorer.recommend(histories, [set()] * 40, k=20)  # rebuilt for the new version
    hits = []
    for history, rec in zip(histories, recs, strict=True):
        assert len(rec.items) == 20 and rec.reasons is not None
        seen = [i for i, _, _ in history]
        for (item, _), reason in zip(rec.items, rec.reasons, strict=True):
            if item in cold:
                assert reason.code == "similar_to_viewed" and reason.item_id in seen
                # the nearest history item by text
                near = max(seen, key=lambda h: float(vectors[h] @ cold[item][1]))
                assert reason.item_id == near
        new = [i for i, _ in rec.items if i in cold]
        browsed = [category[i] for i in seen]
        if new:
            main = max(set(browsed), key=browsed.count)
            hits.append(np.mean([cold[i][0] == main for i in new]))
    assert len(hits) >= 10
    # Cold items reach users through their text: in the category they browse most far
    # more often than the 1 in 4 of a random cold item.
    assert np.mean(hits) > 0.35
    # Exclusions apply to cold items, and lists stay k long.
    banned = {i for i, _ in recs[0].items if i in cold}
    assert banned
    [again] = scorer.recommend([histories[0]], [banned], k=20)
    assert len(again.items) == 20 and not banned & {i for i, _ in again.items}
    # A search brings cold items of the searched category, as "matches_search".
    target = sorted(directions)[2]
    [searched] = scorer.recommend(
        [histories[0]], [set()], k=20, intents=[Intent(directions[target], 1.0)]
    )
    assert searched.reasons is not None
    found = [
        r.code for (i, _), r in zip(searched.items, searched.reasons, strict=True) if i in cold
    ]
    assert "matches_search" in found
    # Retiring the items removes them at once.
    index.remove(list(cold))
    after = scorer.recommend(histories[:5], [set()] * 5, k=20)
    assert not any(i in cold for r in after for i, _ in r.items)
    scorer.attach_catalog(None)
    assert scorer.recommend(histories[:5], [set()] * 5, k=20) == before[:5]


def test_fp16_variant_explains(
    tiny_trained: TrainedModel, tiny_shop: SyntheticShop, tmp_path: Path
) -> None:
    fp16 = OnnxScorer.load(export_onnx(tiny_trained, tmp_path / "fp16", variant="fp16"), "cpu")
    vectors, directions = _category_vectors(tiny_shop)
    histories = [_history(tiny_shop, f"user-{u:04d}") for u in range(1, 11)]
    fp16.attach_catalog(_index(vectors))
    intents: list[Intent | None] = [Intent(directions[sorted(directions)[0]], 1.0)] * 10
    for rec, history in zip(
        fp16.recommend(histories, [set()] * 10, k=10, intents=intents), histories, strict=True
    ):
        assert rec.reasons is not None and len(rec.items) == 10
        seen = {i for i, _, _ in history}
        assert all(r.code == "matches_search" or r.item_id in seen for r in rec.reasons)
    shutil.rmtree(tmp_path / "fp16")


def _cold_index(
    shop: SyntheticShop, n_per_category: int = 3, vocab: int | None = None
) -> tuple[ItemTextIndex, dict[str, np.ndarray], dict[str, np.ndarray], list[str]]:
    """The shop's planted text (its first `vocab` items) plus cold items per category."""
    vectors, directions = _category_vectors(shop)
    rng = np.random.default_rng(1)
    cold = {
        f"new-{c}-{n}": _unit(directions[c] + 0.3 * rng.normal(size=TEXT_DIM))
        for c in sorted(directions)
        for n in range(n_per_category)
    }
    kept = dict(sorted(vectors.items())[:vocab]) if vocab is not None else vectors
    return _index(kept | cold), kept, directions, sorted(cold)


def test_an_intent_of_another_width_is_skipped_for_its_row_only(
    scorer: OnnxScorer, tiny_shop: SyntheticShop, caplog: pytest.LogCaptureFixture
) -> None:
    vectors, directions = _category_vectors(tiny_shop)
    scorer.attach_catalog(_index(vectors))
    histories = [_history(tiny_shop, f"user-{u:04d}") for u in range(1, 5)] + [[]]
    good = Intent(directions[sorted(directions)[0]], 1.0)
    other = Intent(_unit(np.ones(TEXT_DIM * 2)).astype(np.float32), 1.0)  # another encoder
    broken = Intent(np.full(TEXT_DIM, np.nan, dtype=np.float32), 1.0)
    intents: list[Intent | None] = [good, other, None, broken, other]
    exclude: list[set[str]] = [set()] * 5
    with caplog.at_level(logging.WARNING, logger="recstream.models.scorer"):
        recs = scorer.recommend(histories, exclude, k=10, intents=intents)
        again = scorer.recommend(histories, exclude, k=10, intents=intents)
    assert recs == again
    plain = scorer.recommend(histories, exclude, k=10)
    assert [recs[i] for i in (1, 2, 3, 4)] == [plain[i] for i in (1, 2, 3, 4)]
    [alone] = scorer.recommend(histories[:1], exclude[:1], k=10, intents=[good])
    assert recs[0] == alone != plain[0]  # the good intent of the batch still counts
    assert scorer.skipped_intents == 6
    warnings = [r for r in caplog.records if "ignoring a search intent" in r.getMessage()]
    assert len(warnings) == 1


def test_a_shared_hidden_set_gives_the_lists_of_per_row_exclusions(
    category_model: tuple[SyntheticShop, Path],
) -> None:
    shop, model_dir = category_model
    scorer = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=1)
    scorer.min_cold_fit, scorer.catalog_refresh_s = 0, 0.0
    index, _, directions, cold = _cold_index(shop, n_per_category=10)
    scorer.attach_catalog(index)
    histories = [_history(shop, f"user-{u:04d}") for u in range(1, 25)] + [[], []]
    n = len(histories)
    plain = scorer.recommend(histories, [set()] * n, k=20)
    shown = sorted({i for r in plain for i, _ in r.items})
    # Hidden: popular vocabulary items, a third of the cold items, ids nobody knows.
    hidden = frozenset(shown[::3] + cold[::3] + [f"gone-{g}" for g in range(500)])
    own = [{histories[r][-1][0]} if histories[r] else {shown[1]} for r in range(n)]
    names = sorted(directions)
    intents: list[Intent | None] = [
        Intent(directions[names[r % 4]], 1.0) if r % 3 else None for r in range(n)
    ]
    for kw in ({}, {"intents": intents}):
        union = scorer.recommend(histories, [o | hidden for o in own], k=20, **kw)
        shared = scorer.recommend(histories, own, k=20, hidden=hidden, **kw)
        assert shared == union
        assert scorer.recommend(histories, own, k=20, hidden=hidden, **kw) == union  # cached
        assert any(i in cold for r in union for i, _ in r.items)
        for rec, mine in zip(shared, own, strict=True):
            assert len(rec.items) == 20 and not {i for i, _ in rec.items} & (hidden | mine)
    # A new catalog view (more cold items) maps the same hidden set again.
    index.upsert(["new-late"], _unit(np.ones(TEXT_DIM))[None].astype(np.float32))
    late = frozenset(hidden | {"new-late"})
    union = scorer.recommend(histories, [o | late for o in own], k=20, intents=intents)
    assert scorer.recommend(histories, own, k=20, hidden=late, intents=intents) == union


def test_cold_items_wait_for_enough_vocabulary_items_with_text(
    category_model: tuple[SyntheticShop, Path], caplog: pytest.LogCaptureFixture
) -> None:
    shop, model_dir = category_model
    scorer = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=1)
    histories = [_history(shop, f"user-{u:04d}") for u in range(1, 21)] + [[]]
    index, _, directions, cold = _cold_index(shop, n_per_category=10)
    intents = [Intent(directions[sorted(directions)[r % 4]], 1.0) for r in range(21)]

    def cold_shown() -> int:
        recs = scorer.recommend(histories, [set()] * 21, k=20, intents=intents)
        recs += scorer.recommend(histories, [set()] * 21, k=20)
        return sum(i in cold for r in recs for i, _ in r.items)

    # 120 vocabulary items with text >= COLD_MIN_FIT = 50: cold items are scored.
    assert scorer.min_cold_fit == 50
    scorer.attach_catalog(index)
    assert cold_shown() > 0
    # Below the floor they are not scored, not even by a search for their category.
    scorer.min_cold_fit = 200
    with caplog.at_level(logging.WARNING, logger="recstream.models.scorer"):
        scorer.attach_catalog(index)
        assert cold_shown() == 0
    assert any("40 cold items are not scored" in r.getMessage() for r in caplog.records)
    few, _, _, _ = _cold_index(shop, n_per_category=10, vocab=12)
    scorer.min_cold_fit = 50
    scorer.attach_catalog(few)
    assert cold_shown() == 0  # 12 < 50
    scorer.attach_catalog(_cold_index(shop, n_per_category=10, vocab=60)[0])
    assert cold_shown() > 0


def test_the_catalog_view_is_rebuilt_at_most_once_per_refresh_and_prepared_eagerly(
    category_model: tuple[SyntheticShop, Path],
) -> None:
    shop, model_dir = category_model
    scorer = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=1)
    scorer.min_cold_fit, scorer.catalog_refresh_s = 0, 3600.0
    index, vectors, _, cold = _cold_index(shop)
    histories = [_history(shop, f"user-{u:04d}") for u in range(1, 21)]
    scorer.attach_catalog(index)
    scorer.prepare_catalog()  # e.g. in the reloader's thread, before the swap
    view = scorer._catalog
    assert view is not None and view.version == index.version
    first = scorer.recommend(histories, [set()] * 20, k=20)
    assert scorer._catalog is view  # the first batch did not rebuild
    np.testing.assert_array_equal(view.texts[: view.vocab_rows.size], view.vocab_text)
    scorer.attach_catalog(index)  # the stream layer attaches the same index on the swap
    assert scorer._catalog is view
    # Changes within the refresh interval keep the view (a burst costs no rebuilds).
    index.remove(cold)
    for item in sorted(vectors)[:5]:
        index.upsert([item], vectors[item][None].astype(np.float32))
    assert scorer.recommend(histories, [set()] * 20, k=20) == first
    assert scorer._catalog is view
    scorer.prepare_catalog()  # forced: the new version
    assert scorer._catalog is not view and scorer._catalog is not None
    assert scorer._catalog.version == index.version
    assert not any(
        i in cold for r in scorer.recommend(histories, [set()] * 20, k=20) for i, _ in r.items
    )
    # Once the interval has passed, the next batch sees a change.
    scorer.catalog_refresh_s = 0.0
    index.upsert(cold[:1], np.stack([_unit(np.ones(TEXT_DIM))]).astype(np.float32))
    scorer.recommend(histories[:1], [set()], k=20)
    assert scorer._catalog.version == index.version
    # A setting the view depends on rebuilds it at once.
    view = scorer._catalog
    scorer.cold_ridge = 3.0
    scorer.recommend(histories[:1], [set()], k=20)
    assert scorer._catalog is not view
