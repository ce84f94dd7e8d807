"""Build and run a worker from :class:`~deploy.settings.Settings`."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import sys
from pathlib import Path

from deploy.logs import logging_config
from deploy.settings import Settings
from models.bundles import CoPurchaseCounts, latest_pairs
from models.catalog import ItemTextIndex
from models.experiment import Experiment, read_experiment
from models.scorer import OnnxScorer, Provider, Scorer
from models.store import CURRENT_FILENAME, ModelStore
from models.text_encoder import OnnxTextEncoder
from streams._faust import quiet_worker_class
from streams.app import RecstreamApp, create_app
from streams.bundles import CoPurchaseModel
from streams.catalog import TextSupport

__all__ = [
    "StoreModelSource",
    "build_app",
    "load_co_purchase_model",
    "load_text_support",
    "run_worker",
    "warmup_batch_sizes",
]

log = logging.getLogger("recstream.worker")


class StoreModelSource:
    """Model versions from a model store (``<root>/<version>/`` + ``CURRENT``)."""

    def __init__(
        self,
        root: Path,
        provider: Provider,
        intra_op_threads: int,
        warmup_batches: tuple[int, ...] = (1, 8, 64),
        search_weight: float | None = None,
    ) -> None:
        self.store = ModelStore(root)
        self.search_weight = search_weight
        self.provider = provider
        self.intra_op_threads = intra_op_threads
        self.warmup_batches = warmup_batches
        # Grouping costs measured by an earlier load: (scorer shape, costs).
        self._costs: tuple[tuple[object, ...], dict[str, float | str]] | None = None

    def current_version(self) -> str | None:
        """The version ``CURRENT`` names."""
        return self.store.current()

    def current_experiment(self) -> Experiment | None:
        """The A/B experiment the store's ``EXPERIMENT`` file names, if any."""
        return read_experiment(self.store)

    def load(self, version: str) -> OnnxScorer:
        """Load and warm up a version (first runs of new shapes are slow in onnxruntime).

        The length-grouping costs are measured once; a later version of the same shape
        reuses them instead of timing calls while the old version serves traffic.
        """
        scorer = OnnxScorer.load(
            self.store.root / version,
            provider=self.provider,
            intra_op_threads=self.intra_op_threads,
        )
        if self.search_weight is not None:
            scorer.search_weight = self.search_weight
        reused = self._costs is not None and scorer.adopt_grouping_costs(*self._costs)
        scorer.warmup(self.warmup_batches, calibrate=not reused)
        self._costs = (scorer.grouping_shape, scorer.grouping_costs)
        return scorer


def warmup_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """1, 8, 64, ... (x8) below ``max_batch``, then ``max_batch`` itself."""
    sizes = [1]
    while sizes[-1] * 8 < max_batch:
        sizes.append(sizes[-1] * 8)
    return tuple(sorted({*sizes, max_batch}))


def load_text_support(settings: Settings) -> TextSupport | None:
    """The worker's text side (``RECSTREAM_TEXT_ENCODER_DIR``), or ``None`` without one.

    The encoder is loaded once; the catalog's text index starts empty and fills as the
    ``items`` topic is read. Without an encoder the worker still reads the catalog for
    its availability and blocklist rules.

    The encoder is optional and written by a separate job (the Kubernetes Job or compose
    service ``text-encoder``) that may finish after the workers start, so a directory
    that does not exist yet, or is still empty, is a warning: the worker serves without
    text rather than restart until the job is done. A directory that holds something
    the encoder cannot load is a configuration error and stops the worker (the pod never
    gets ready, so a rollout halts at its first pod).
    """
    directory = settings.text_encoder_dir
    if directory is None:
        return None
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        log.warning(
            "no text encoder in RECSTREAM_TEXT_ENCODER_DIR=%s yet: serving without text "
            "(searches carry no intent, catalog text is not embedded); restart the worker "
            "after `recstream text-encoder minilm --out %s` has written it",
            directory,
            directory,
        )
        return None
    encoder = OnnxTextEncoder.load(
        directory,
        provider=settings.provider,
        intra_op_threads=settings.text_encoder_threads,
    )
    log.info("text encoder loaded from %s (dim %d)", directory, encoder.dim)
    return TextSupport(encoder=encoder, index=ItemTextIndex(encoder.dim))


def load_co_purchase_model(settings: Settings) -> CoPurchaseModel | None:
    """The model side of bundles (``models.bundles``), unless bundles are off."""
    bundles = settings.stream.bundles
    if not bundles.enabled:
        return None
    counts = functools.partial(
        CoPurchaseCounts, half_life_s=bundles.half_life_s, max_partners=bundles.max_partners
    )
    return CoPurchaseModel(counts=counts, latest_pairs=latest_pairs)


def build_app(settings: Settings) -> RecstreamApp:
    """Load the model and build the Faust app (no connection is made yet)."""
    source: StoreModelSource | None = None
    version: str | None = None
    experiment: tuple[Experiment, Scorer] | None = None
    # Warm up every batch size the stream will use, up to max_batch (first runs of a
    # new shape are slow in onnxruntime).
    warmup = warmup_batch_sizes(settings.stream.scoring.max_batch)
    if (settings.model_dir / CURRENT_FILENAME).is_file():
        source = StoreModelSource(
            settings.model_dir,
            settings.provider,
            settings.intra_op_threads,
            warmup,
            search_weight=settings.stream.search.weight,
        )
        version = source.current_version()
        if version is None:
            raise RuntimeError(f"model store {settings.model_dir} has an empty CURRENT")
        scorer = source.load(version)
        try:
            running = source.current_experiment()
            if running is not None:
                # Loaded before serving, so a user is in the same arm right after a
                # restart.
                experiment = (running, source.load(running.candidate))
                log.info(
                    "experiment: candidate %s for %.1f%% of users",
                    running.candidate,
                    100 * running.share,
                )
        except Exception:
            # A broken EXPERIMENT file or candidate must not keep every worker from
            # starting: serve CURRENT to everyone; the reloader retries the experiment.
            log.exception("the model store's experiment cannot be served; CURRENT only")
            experiment = None
    else:
        scorer = OnnxScorer.load(
            settings.model_dir,
            provider=settings.provider,
            intra_op_threads=settings.intra_op_threads,
        )
        if settings.stream.search.weight is not None:
            scorer.search_weight = settings.stream.search.weight
        scorer.warmup(warmup)
    log.info(
        "model %s loaded from %s; execution provider %s%s",
        scorer.model_version,
        settings.model_dir,
        scorer.provider,
        " (hot reload on)" if source is not None else "",
        extra={"model_version": scorer.model_version, "provider": scorer.provider},
    )
    return create_app(
        settings.stream,
        scorer,
        model_source=source,
        loaded_version=version,
        experiment=experiment,
        text=load_text_support(settings),
        co_purchases=load_co_purchase_model(settings),
    )


def run_worker(settings: Settings) -> None:
    """Run a worker until SIGTERM/SIGINT (flushes, commits and leaves the group)."""
    import logging.config

    # Configured before the model loads so the start-up lines (model version,
    # provider) use the same format; Faust's worker applies the same config again.
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_json))
    if settings.gil_switch_interval_ms > 0:
        # The inference thread and the event loop hand the GIL back and forth several
        # times per batch; with the default 5 ms switch interval each hand-off can
        # stall the inference thread for up to 5 ms (a convoy). Shorter slices cost
        # a little throughput in pure-Python code and save whole milliseconds here.
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000.0)
    if settings.event_loop == "uvloop":
        import uvloop

        # Set before the app exists: Faust's consumer thread creates its own loop
        # through the policy too, so both loops run on libuv.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    for unknown in Settings.unknown_env(os.environ):
        log.warning("ignoring %s: not a recstream setting", unknown)
    app = build_app(settings)
    if settings.gc_threshold > 0:
        # Every event allocates a few hundred short-lived containers (decoded event,
        # profile, list message), so with Python's 700-allocation threshold the
        # collector ran every few events, each time also walking everything the
        # start-up left alive (the scorer's item tables, Faust's services). Frozen,
        # those are never walked again; the young generation is collected less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(settings.gc_threshold, 10, 10)
    quiet_worker_class()(
        app,
        loglevel=settings.log_level.lower(),
        logging_config=logging_config(settings.log_level, settings.log_json),
        quiet=True,
    ).execute_from_commandline()
