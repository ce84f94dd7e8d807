"""The worker keeps the root logger at the configured level (no Faust spinner)."""

from __future__ import annotations

import logging

import faust
import pytest

from deploy.logs import logging_config
from streams._faust import quiet_worker_class


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
def test_root_logger_stays_at_configured_level(level: str, restore_root_logger: None) -> None:
    app = faust.App("logging-test", broker="kafka://localhost:1", web_enabled=False)
    worker = quiet_worker_class()(
        app, loglevel=level.lower(), logging_config=logging_config(level, False), quiet=True
    )
    worker._setup_logging()  # what the worker runs on its first start
    root = logging.getLogger()
    assert root.level == logging.getLevelName(level)
    assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
    assert all(type(h).__name__ != "SpinnerHandler" for h in root.handlers)
    assert worker.spinner is None


def test_stock_faust_worker_would_turn_root_to_debug(restore_root_logger: None) -> None:
    """The behaviour the quiet worker removes (guards against a Faust upgrade fixing it)."""
    from faust.worker import Worker

    app = faust.App("logging-test-stock", broker="kafka://localhost:1", web_enabled=False)
    worker = Worker(
        app, loglevel="warning", logging_config=logging_config("WARNING", False), quiet=True
    )
    worker._setup_logging()
    assert logging.getLogger().level == logging.DEBUG
