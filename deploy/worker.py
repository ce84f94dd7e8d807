"""Build and run a worker from :class:`~deploy.settings.Settings`."""

from __future__ import annotations

import logging

from deploy.logs import logging_config
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
        extra={"model_version": scorer.model_version, "provider": scorer.provider},
    )
    return create_app(settings.stream_config(), scorer)


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGTERM/SIGINT (flushes, commits and leaves the group)."""
    import logging.config

    from faust.worker import Worker

    # Configured before the model loads so the start-up lines (model version,
    # provider) use the same format; Faust's worker applies the same config again.
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_json))
    app = build_app(settings)
    Worker(
        app,
        loglevel=settings.log_level.lower(),
        logging_config=logging_config(settings.log_level, settings.log_json),
        quiet=True,
    ).execute_from_commandline()
