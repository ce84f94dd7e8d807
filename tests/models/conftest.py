"""Shared fixtures: one tiny synthetic shop, model, export and scorer per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.config import TrainConfig
from models.export import export_onnx
from models.scorer import OnnxScorer
from models.synthetic import SyntheticShop, generate_shop
from models.train import train_model
from models.trained import TrainedModel

TINY_CONFIG = TrainConfig(
    max_len=20, dim=32, n_layers=2, n_heads=2, dropout=0.1, epochs=2, max_k=50, seed=3
)


@pytest.fixture(scope="session")
def tiny_shop() -> SyntheticShop:
    return generate_shop(n_items=200, n_users=150, n_categories=8, seed=11)


@pytest.fixture(scope="session")
def tiny_trained(tiny_shop: SyntheticShop) -> TrainedModel:
    return train_model(tiny_shop.interactions(), TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    return export_onnx(tiny_trained, out, model_version="test-v1", metrics={"hr@10": 0.5})


@pytest.fixture(scope="session")
def cpu_scorer(tiny_model_dir: Path) -> OnnxScorer:
    scorer = OnnxScorer.load(tiny_model_dir, provider="cpu", intra_op_threads=1)
    # Modelled grouping costs: tests of the grouping rule must not depend on timings.
    scorer.warmup(calibrate=False)
    return scorer


@pytest.fixture(scope="session")
def tiny_config() -> TrainConfig:
    return TINY_CONFIG
