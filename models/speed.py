"""Speed micro-benchmarks of the model alone (``recstream bench inference|providers|grouping``).

Nothing here touches Kafka: the models are scored in-process.

* `inference_benchmark`: onnxruntime against torch eager on the same trained model
  and the same inputs, per batch size.
* `grouping_benchmark`: length-grouped against one-call scoring of replayed histories.
* `provider_benchmark`: scoring latency per execution provider and graph precision.
* `untrained_model`: a randomly initialised model of any catalog size to time them on.

torch is imported only where a function needs it, so the provider and grouping
benchmarks run where only onnxruntime is installed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from models.config import TrainConfig
    from models.export import Precision
    from models.session import Provider
    from models.trained import TrainedModel

__all__ = [
    "PROVIDER_VARIANTS",
    "grouping_benchmark",
    "inference_benchmark",
    "provider_benchmark",
    "untrained_model",
]


def untrained_model(n_items: int, config: TrainConfig | None = None) -> TrainedModel:
    """A randomly initialised model over a catalog of ``n_items`` synthetic ids.

    For speed benchmarks of large catalogs (inference cost does not depend on the
    weights): items are ``item-0000000`` ..., popularity is uniform, nothing is trained.

    Args:
        n_items: Catalog size.
        config: Shape (default: `TrainConfig()`).

    Returns:
        The model, as `train_model` would return it after zero epochs.
    """
    import torch

    from models.architectures import build_network
    from models.config import TrainConfig
    from models.trained import TrainedModel, TrainingStats
    from models.vocab import ItemVocab

    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    vocab = ItemVocab((None, *(f"item-{i:07d}" for i in range(n_items))))
    module = build_network(config, n_items).eval()
    stats = TrainingStats(
        epochs=[],
        seconds=0.0,
        n_interactions=0,
        n_users=0,
        n_windows=0,
        n_targets=0,
        stopped_early=False,
    )
    return TrainedModel(
        module=module,
        vocab=vocab,
        popularity=[0] + [1] * n_items,
        config=config,
        stats=stats,
        # No training data: the fingerprint names the synthetic catalog instead.
        data_fingerprint=hashlib.sha256(f"untrained:{n_items}".encode()).hexdigest(),
    )


def inference_benchmark(
    trained: Any,
    model_dir: Path,
    batch_sizes: Sequence[int] = (1, 8, 64, 256),
    *,
    repeats: int = 30,
    threads: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """onnxruntime vs torch eager on the same model and inputs, per batch size.

    Both get the same left-padded histories and exclusion lists and return the
    top-K; torch runs under ``inference_mode`` with the same thread count.
    Timings alternate between the two engines to share the machine's noise.
    """
    import torch

    from models.encoding import encode_exclude, encode_histories
    from models.network import ServingRecommender
    from models.scorer import OnnxScorer

    scorer = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=threads)
    if threads:
        torch.set_num_threads(threads)
    serving = ServingRecommender(trained.module, max_k=scorer.max_k).eval()
    items = [str(i) for i in scorer.metadata.items[1:]]
    rng = np.random.default_rng(seed)
    rows = []
    for bs in batch_sizes:
        histories = [
            [(items[int(j)], "click", "web") for j in rng.integers(0, len(items), 30)]
            for _ in range(bs)
        ]
        excludes = [{items[int(j)] for j in rng.integers(0, len(items), 5)} for _ in range(bs)]
        index = {item: i for i, item in enumerate(scorer.metadata.items) if item is not None}
        enc = encode_histories(histories, index, scorer.max_len)
        exc = encode_exclude(excludes, index)
        tensors = [torch.from_numpy(a) for a in (enc.item_seq, enc.type_seq, enc.channel_seq, exc)]
        ort_t: list[float] = []
        torch_t: list[float] = []
        for r in range(repeats + 3):
            t0 = time.perf_counter()
            scorer.recommend(histories, excludes, 20)
            t1 = time.perf_counter()
            with torch.inference_mode():
                serving(*tensors)
            t2 = time.perf_counter()
            if r >= 3:  # first runs of a new shape are slow in both engines
                ort_t.append(t1 - t0)
                torch_t.append(t2 - t1)
        ort_ms, torch_ms = 1000 * float(np.median(ort_t)), 1000 * float(np.median(torch_t))
        rows.append(
            {
                "batch": bs,
                "onnxruntime_ms": ort_ms,
                "torch_eager_ms": torch_ms,
                "speedup": torch_ms / ort_ms,
                "onnxruntime_rows_per_s": bs / (ort_ms / 1000),
            }
        )
    return rows


def grouping_benchmark(
    model_dir: Path,
    histories: Sequence[Sequence[tuple[str, str, str]]],
    batch_sizes: Sequence[int] = (16, 64, 256),
    *,
    rows_per_size: int = 2560,
    repeats: int = 3,
    threads: int = 1,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Length-grouped vs one-call scoring of the same batches (``OnnxScorer.recommend``).

    Batches are random draws from ``histories`` (e.g. every prefix of every user of a
    replay), so their length mix is what a worker sees. Three modes alternate: one
    call per batch, grouping with the modelled costs, and grouping with the costs
    `OnnxScorer.warmup` measured on this machine; each reports its best of
    ``repeats`` passes, in microseconds per row.
    """
    from models.scorer import OnnxScorer

    scorer = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=threads)
    calibrated = OnnxScorer.load(model_dir, provider="cpu", intra_op_threads=threads)
    calibrated.warmup()
    modes = (
        ("one_call", scorer, False),
        ("grouped", scorer, True),
        ("grouped_measured", calibrated, True),
    )
    rng = np.random.default_rng(seed)
    out = []
    for size in batch_sizes:
        batches = [
            [histories[int(i)] for i in rng.integers(0, len(histories), size)]
            for _ in range(max(4, rows_per_size // size))
        ]
        excludes: list[frozenset[str]] = [frozenset()] * size
        best: dict[str, float] = {}
        for _ in range(repeats):
            for mode, mode_scorer, split in modes:
                mode_scorer.group_by_length = split
                for batch in batches[:2]:  # warm the shapes
                    mode_scorer.recommend(batch, excludes, 20)
                t0 = time.perf_counter()
                for batch in batches:
                    mode_scorer.recommend(batch, excludes, 20)
                per_row = 1e6 * (time.perf_counter() - t0) / (len(batches) * size)
                best[mode] = min(best.get(mode, float("inf")), per_row)
        out.append(
            {
                "batch": size,
                "one_call_us_per_row": best["one_call"],
                "grouped_us_per_row": best["grouped"],
                "speedup": best["one_call"] / best["grouped"],
                "grouped_measured_us_per_row": best["grouped_measured"],
                "speedup_measured": best["one_call"] / best["grouped_measured"],
                "modelled_costs": scorer.grouping_costs,
                "measured_costs": calibrated.grouping_costs,
                # Longest history per batch as scored (the scorer keeps max_len items).
                "mean_longest": float(
                    np.mean([min(scorer.max_len, max(map(len, b))) for b in batches])
                ),
            }
        )
    return out


#: `provider_benchmark` variants: (graph variant, execution provider, IO binding).
PROVIDER_VARIANTS: dict[str, tuple[Precision, Provider, bool]] = {
    "cpu": ("fp32", "cpu", False),
    "cpu-int8": ("int8", "cpu", False),
    "cuda": ("fp32", "cuda", True),
    "cuda-run": ("fp32", "cuda", False),
    "cuda-fp16": ("fp16", "cuda", True),
}


def provider_benchmark(
    model_dirs: dict[str, Path],
    variants: Sequence[str],
    batch_sizes: Sequence[int] = (1, 64, 256, 1024),
    *,
    repeats: int = 20,
    threads: int = 0,
    k: int = 20,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Scoring latency per execution provider, graph variant and batch size.

    Times ``OnnxScorer.recommend`` (encoding, inference, top-k mapping) on random
    full-length histories over the model's catalog. A variant whose provider cannot
    be used (no GPU, CPU-only onnxruntime) gets a row with its ``error``.

    Args:
        model_dirs: Exported model directory per graph variant ("fp32", "fp16", "int8").
        variants: Names from `PROVIDER_VARIANTS`.
        batch_sizes: Rows per call.
        repeats: Timed calls per batch size (after 3 warm-up calls).
        threads: onnxruntime intra-op threads (0 = its default).
        k: List length.
        seed: Seed of the random histories.

    Returns:
        One row per (variant, batch size), or one error row per unusable variant.
    """
    from models.scorer import OnnxScorer
    from models.session import ProviderUnavailableError

    rows: list[dict[str, Any]] = []
    for name in variants:
        graph, provider, io_binding = PROVIDER_VARIANTS[name]
        try:
            scorer = OnnxScorer.load(
                model_dirs[graph],
                provider=provider,
                intra_op_threads=threads,
            )
        except ProviderUnavailableError as exc:
            rows.append({"variant": name, "error": str(exc)})
            continue
        scorer.io_binding = io_binding
        scorer.group_by_length = False  # full-length rows: one call per batch
        items = [i for i in scorer.metadata.items if i is not None]
        rng = np.random.default_rng(seed)
        for batch in batch_sizes:
            histories = [
                [
                    (items[int(j)], "browse", "web")
                    for j in rng.integers(0, len(items), scorer.max_len)
                ]
                for _ in range(batch)
            ]
            exclude: list[frozenset[str]] = [frozenset()] * batch
            for _ in range(3):  # first runs of a shape are slow in onnxruntime
                scorer.recommend(histories, exclude, k)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                scorer.recommend(histories, exclude, k)
                times.append(time.perf_counter() - t0)
            ms = 1000 * np.asarray(times)
            rows.append(
                {
                    "variant": name,
                    "graph": graph,
                    "provider": scorer.provider,
                    "io_binding": io_binding,
                    "batch": batch,
                    "n_items": scorer.n_items,
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "rows_per_s": batch / (float(np.percentile(ms, 50)) / 1000),
                }
            )
    return rows
