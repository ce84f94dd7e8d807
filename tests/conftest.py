"""Fixtures shared by every layer of the test pyramid (see tests/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.synthetic import SyntheticShop, generate_shop


@pytest.fixture(scope="session")
def shop() -> SyntheticShop:
    """A small synthetic shop: catalog, users with tastes, a browse->click->purchase funnel."""
    return generate_shop(n_items=150, n_users=120, seed=11)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, shop: SyntheticShop) -> Path:
    """A tiny transformer trained on the shop and exported to ONNX (seconds on 2 cores)."""
    from models.config import TrainConfig
    from models.export import export_onnx
    from models.train import train_model

    config = TrainConfig(max_len=20, dim=32, n_layers=1, n_heads=2, epochs=2, batch_size=64, seed=3)
    trained = train_model(shop.interactions(), config)
    out = tmp_path_factory.mktemp("model") / "current"
    export_onnx(trained, out, model_version="test-model-1")
    return out
