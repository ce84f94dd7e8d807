"""Build and run a worker from :class:`~deploy.settings.Settings`."""

from __future__ import annotations

import logging

from deploy.settings import Settings
from models.scorer import OnnxScorer
from streams.app import RecstreamApp, create_app

__all__ = ["build_app", "run_worker"]

log = logging.getLogger("recstream.worker")


def build_app(settings: Settings) -> RecstreamApp:
    """Load the model and build the Faust app (no connection is made yet)."""
    scorer = OnnxScorer.load(
        settings.model_dir, provider=settings.provider, intra_op_threads=settings.intra_op_threads
    )
    log.info(
        "model %s loaded from %s; execution provider %s",
        scorer.model_version,
        settings.model_dir,
        scorer.provider,
    )
    return create_app(settings.stream_config(), scorer)


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGTERM/SIGINT (flushes, commits and leaves the group)."""
    from faust.worker import Worker

    app = build_app(settings)
    Worker(app, loglevel=settings.log_level.lower(), quiet=True).execute_from_commandline()
