"""The semantic measurement on a tiny shop with planted text vectors.

Each title's vector is its category's direction plus noise, each query's is the
category's direction: the search and cold-item effects must show in the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from models.config import TrainConfig
from models.semantic_eval import (
    STAY_TOLERANCE,
    Embed,
    prepare,
    query_text,
    run_semantic_eval,
    select_search_weight,
)
from models.synthetic import SyntheticShop, generate_shop


def _planted(shop: SyntheticShop, dim: int = 16, noise: float = 0.3, seed: int = 0) -> Embed:
    rng = np.random.default_rng(seed)
    names = sorted({item.category for item in shop.catalog})
    direction = {c: rng.normal(size=dim) for c in names}
    category_of = {item.title: item.category for item in shop.catalog}
    category_of |= {query_text(c): c for c in names}

    def embed(texts: Sequence[str]) -> np.ndarray:
        rows = np.stack([direction[category_of[t]] + noise * rng.normal(size=dim) for t in texts])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    return embed


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return generate_shop(n_items=120, n_users=300, n_categories=4, seed=5)


def test_prepare_holds_cold_items_out(shop: SyntheticShop) -> None:
    train, data = prepare(shop, _planted(shop), cold_share=0.1, seed=1)
    assert len(data.cold) == 12  # 10 % of each category's 30 items
    assert not {it.item_id for it in train} & data.cold
    assert not {c.user_id for c in data.valid} & {c.user_id for c in data.test}
    assert all(c.target in data.cold for c in data.cold_test + data.cold_valid)
    assert all(not {i for i, _, _ in c.history} & data.cold for c in data.cold_test)
    assert set(data.query_vectors) == {item.category for item in shop.catalog}


def test_search_and_text_move_the_report_the_right_way(shop: SyntheticShop, tmp_path: Path) -> None:
    config = TrainConfig(max_len=20, dim=32, n_layers=1, n_heads=2, epochs=6, max_k=50, seed=3)
    report = run_semantic_eval(
        shop,
        _planted(shop),
        config,
        tmp_path,
        search_weights=(0.0, 1.0, 4.0),
        cold_ridges=(1.0,),
        cold_scales=(1.0,),
        seed=1,
        min_cold_fit=0,  # 108 warm items: below the serving minimum of 200
    )
    json.dumps(report)  # JSON-able
    test = report["test"]
    search = test["search"]
    assert search["category_share@10_with_search"] > search["category_share@10_without_search"]
    assert search["matches_search_reason_share"] > 0
    assert report["validation"]["search_weight"] in (0.0, 1.0, 4.0)
    # No search: attaching the catalog changes nothing for warm items.
    no_search = test["no_search_warm_targets"]
    assert no_search["with_catalog_warm_text"] == no_search["without_catalog"]
    cold = test["cold"]
    assert cold["cold_recall@20_without_text"] == 0.0
    assert cold["cold_recall@20_with_text"] > 0.3
    assert cold["cold_next_item_without_text"]["hr@20"] == 0.0
    assert cold["cold_next_item_with_text"]["hr@20"] > 0.0


def test_search_weight_selection_respects_the_stay_tolerance() -> None:
    curve = {
        "0.0": {"ndcg@10_stay": 0.50, "ndcg@10_switch": 0.01},
        "1.0": {"ndcg@10_stay": 0.50 * (1 - STAY_TOLERANCE) + 1e-6, "ndcg@10_switch": 0.05},
        "2.0": {"ndcg@10_stay": 0.30, "ndcg@10_switch": 0.09},
    }
    assert select_search_weight(curve) == 1.0
    curve["1.0"]["ndcg@10_stay"] = 0.40
    assert select_search_weight(curve) == 0.0


def test_bench_semantic_cli_with_a_local_encoder(shop: SyntheticShop, tmp_path: Path) -> None:
    """``recstream bench semantic`` end to end, on a tiny random BERT (offline)."""
    transformers = pytest.importorskip("transformers")
    import torch
    from typer.testing import CliRunner

    from deploy.cli import app

    encoder = tmp_path / "encoder"
    encoder.mkdir()
    texts = [item.title for item in shop.catalog] + [item.category for item in shop.catalog]
    words = sorted({w for text in texts for w in text.lower().split()})
    (encoder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words]))
    transformers.BertTokenizer(str(encoder / "vocab.txt")).save_pretrained(str(encoder))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(words) + 4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(str(encoder))
    out = tmp_path / "bench"
    args = ["bench", "semantic", "--encoder-dir", str(encoder), "--out", str(out)]
    args += ["--items", "120", "--users", "200", "--categories", "4", "--epochs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "semantic.json").read_text())
    assert report["encoder"] == str(encoder)
    assert report["shop"] == {"items": 120, "cold_items": 12}
    assert report["test"]["cold"]["cold_recall@20_without_text"] == 0.0
