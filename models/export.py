"""Export a trained model to `model.onnx` + `metadata.json` (torch; offline only).

The export is atomic at directory level: files are written and verified in a sibling
temporary directory which is then renamed into place, so a reader never sees a
half-written model (it sees either the old directory, briefly none, or the new one).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models.metadata import (
    EXPLAIN_OUTPUTS,
    ITEM_TABLE_FILENAME,
    MASKED_SCORE,
    METADATA_FILENAME,
    MODEL_FILENAME,
    ONNX_INPUTS,
    ONNX_OUTPUTS,
    SUCCESSOR_OUTPUTS,
    ModelMetadata,
    make_model_version,
)
from models.network import ServingRecommender
from models.trained import TrainedModel

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTER",
    "ExportError",
    "Precision",
    "convert_variant",
    "export_onnx",
    "measure_latency",
]

#: Numeric precision of an exported graph, its "variant" (see `convert_variant`).
Precision = Literal["fp32", "fp16", "int8"]

#: The exporter used. Measured with torch 2.13 on the benchmark models (BENCHMARKS.md):
#: the TorchScript-based exporter takes well under a second and needs no extra package;
#: the dynamo exporter needs `onnxscript` (not a dependency) and is several times slower.
EXPORTER = "torch.onnx legacy (TorchScript trace)"

logger = logging.getLogger("recstream.models.export")

#: ONNX opset used for export (17 has a native LayerNormalization op).
DEFAULT_OPSET = 17

# Tolerance of the post-export ORT-vs-torch self check (scores are O(10) logits).
_VERIFY_ATOL = 1e-3


class ExportError(RuntimeError):
    """Raised when the exported graph fails validation or disagrees with torch."""


def _example_inputs(
    n_items: int, max_len: int, batch: int, n_exclude: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=gen)
    pad = torch.arange(max_len).unsqueeze(0) < (max_len - lengths).unsqueeze(1)
    items = torch.randint(1, n_items + 1, (batch, max_len), generator=gen).masked_fill(pad, 0)
    types = torch.randint(1, 4, (batch, max_len), generator=gen).masked_fill(pad, 0)
    channels = torch.randint(1, 4, (batch, max_len), generator=gen).masked_fill(pad, 0)
    exclude = torch.randint(0, n_items + 1, (batch, n_exclude), generator=gen)
    return items, types, channels, exclude


def _verify(wrapper: ServingRecommender, model_path: Path, n_items: int, max_len: int) -> None:
    """Run a batch through ORT and torch and compare (catches exporter regressions)."""
    onnx.checker.check_model(str(model_path), full_check=True)
    # A batch/exclude shape different from the tracing example exercises the dynamic axes.
    inputs = _example_inputs(n_items, max_len, batch=5, n_exclude=7)
    with torch.no_grad():
        ref_out = wrapper(*inputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(ONNX_INPUTS, inputs, strict=True)}
    names = _output_names(wrapper.explain, wrapper.model.transition_head is not None)
    ort_out = dict(zip(names, session.run(names, feeds), strict=True))
    ref = ref_out[0].numpy()
    real = ref > MASKED_SCORE / 2  # compare real scores; masked ones are all ~MASKED_SCORE
    diff = float(np.max(np.abs(np.asarray(ort_out["scores"])[real] - ref[real]), initial=0.0))
    if wrapper.explain:
        # The cosine of the named history item (of real items: masked ones tie, in any
        # order) and the query vector must agree; positions may differ between exact
        # ties, so the cosines are compared.
        cos_gap = np.abs(np.asarray(ort_out["reason_cos"]) - ref_out[3].numpy())[real]
        user_gap = np.abs(np.asarray(ort_out["user"]) - ref_out[4].numpy())
        diff = max(diff, float(np.max(cos_gap, initial=0.0)), float(np.max(user_gap)))
    if diff > _VERIFY_ATOL:
        raise ExportError(f"ONNX outputs differ from torch by {diff:.3g} (> {_VERIFY_ATOL})")


#: Dynamic axes of every graph input and output: batch, history width, exclusions.
_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "item_seq": {0: "batch", 1: "seq"},
    "type_seq": {0: "batch", 1: "seq"},
    "channel_seq": {0: "batch", 1: "seq"},
    "exclude": {0: "batch", 1: "n_exclude"},
    "scores": {0: "batch"},
    "items": {0: "batch"},
    "reason_pos": {0: "batch"},
    "reason_cos": {0: "batch"},
    "user": {0: "batch"},
    "history_scores": {0: "batch", 1: "seq"},
    "successor_items": {0: "batch"},
    "successor_scores": {0: "batch"},
}


def _output_names(explain: bool, successors: bool) -> list[str]:
    if not explain:
        return list(ONNX_OUTPUTS)
    return [*ONNX_OUTPUTS, *EXPLAIN_OUTPUTS, *(SUCCESSOR_OUTPUTS if successors else ())]


def export_onnx(
    trained: TrainedModel,
    out_dir: Path,
    *,
    model_version: str | None = None,
    metrics: Mapping[str, float] | None = None,
    opset: int = DEFAULT_OPSET,
    variant: Precision = "fp32",
    explain: bool = True,
) -> Path:
    """Write `out_dir/model.onnx`, `metadata.json` and `item_table.npy` atomically.

    Graph inputs: item_seq, type_seq, channel_seq (int64 [B, max_len]) and exclude
    (int64 [B, E], 0-padded, E >= 1); outputs: scores (float32 [B, K]) and items
    (int64 [B, K]) with K = min(config.max_k, n_items), then with `explain` the
    `EXPLAIN_OUTPUTS` (see `models.network.ServingRecommender`). B and E are dynamic.
    `item_table.npy` is the item table the graph scores with (float32 [n_items + 1, D]):
    the scorer maps cold items into it and explains with it where the graph cannot.

    Args:
        trained: Result of `train_model`.
        out_dir: Target model directory (replaced if it exists; parent is created).
        model_version: Version string; default "<UTC timestamp>-<8 hex of fingerprint>".
        metrics: Metrics to record (default: `trained.metrics`).
        opset: ONNX opset (>= 17).
        variant: "fp32" (reference, verified against torch), "fp16" (weights and
            activations in half precision, I/O kept fp32; meant for CUDA) or "int8"
            (dynamic int8 quantization of MatMul/Gemm weights; meant for CPU). The
            fp32 graph is always verified first; variants get a "-fp16"/"-int8" version
            suffix by default.
        explain: Add the explanation outputs (False writes the graph of older
            exports: scores and items only).

    Returns:
        `out_dir`, ready for `OnnxScorer.load`.

    Raises:
        ExportError: If the graph fails the ONNX checker or the ORT-vs-torch check.
        ValueError: If `opset` < 17.
    """
    if opset < 17:
        raise ValueError("opset must be >= 17")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg = trained.config
    n_items = trained.vocab.n_items
    max_k = min(cfg.max_k, n_items)
    # Export a CPU copy so the caller's module keeps its device and train/eval mode.
    module = copy.deepcopy(trained.module).to("cpu").eval()
    wrapper = ServingRecommender(module, max_k=max_k, explain=explain).eval()
    output_names = _output_names(explain, module.transition_head is not None)

    default_version = make_model_version(trained.data_fingerprint)
    if variant != "fp32":
        default_version += f"-{variant}"
    meta = ModelMetadata(
        model_version=model_version or default_version,
        items=list(trained.vocab.ids),
        popularity=list(trained.popularity),
        max_len=cfg.max_len,
        max_k=max_k,
        dim=cfg.dim,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        training_data_fingerprint=trained.data_fingerprint,
        opset=opset,
        metrics=_variant_metrics(metrics if metrics is not None else trained.metrics, variant),
        variant=variant,
        exporter=EXPORTER,
        recent_popularity={k: list(v) for k, v in trained.recent_popularity.items()},
        similarity=cfg.similarity,
        temperature=cfg.temperature if cfg.similarity == "cosine" else 1.0,
        arch=cfg.arch,
        repeat_head=cfg.repeat_head,
        transition_head=cfg.transition_head,
        onnx_outputs=output_names,
        item_table=ITEM_TABLE_FILENAME,
    )
    meta.validate()

    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        # mkdtemp creates 0700; workers may run as another user than the exporter.
        os.chmod(tmp, 0o755)  # noqa: S103 - a model is not secret; readers need r-x
        model_path = tmp / MODEL_FILENAME
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated upstream but is much faster and
            # lighter than the dynamo path for this small graph.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                wrapper,
                _example_inputs(n_items, cfg.max_len, batch=2, n_exclude=3),
                str(model_path),
                dynamo=False,
                input_names=list(ONNX_INPUTS),
                output_names=output_names,
                dynamic_axes={name: _DYNAMIC_AXES[name] for name in (*ONNX_INPUTS, *output_names)},
                opset_version=opset,
                do_constant_folding=True,
            )
        try:
            _verify(wrapper, model_path, n_items, cfg.max_len)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported ONNX graph is invalid: {exc}") from exc
        if variant != "fp32":
            convert_variant(model_path, model_path, variant)
        np.save(tmp / ITEM_TABLE_FILENAME, wrapper.input_table.numpy().astype(np.float32))
        meta.save(tmp / METADATA_FILENAME)
        with open(model_path, "rb") as fh:
            os.fsync(fh.fileno())
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported model %s to %s (opset %d)", meta.model_version, out_dir, opset)
    return out_dir


def _variant_metrics(metrics: Mapping[str, float], variant: Precision) -> dict[str, float]:
    """Metrics measured on the fp32 model are labelled as such on fp16 / int8 exports."""
    if variant == "fp32":
        return dict(metrics)
    return {f"fp32_reference.{k}": float(v) for k, v in metrics.items()}


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`, moving an existing `out_dir` aside first."""
    old: Path | None = None
    if out_dir.exists():
        # rename() cannot replace a non-empty directory; move the old one aside first.
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)  # restore the previous model
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_variant(src: Path, dst: Path, variant: Precision) -> Path:
    """Convert a verified fp32 graph to a serving variant (may overwrite `src`).

    * "fp16": every float initializer and op in half precision except TopK's inputs,
      I/O kept float32 (`keep_io_types`), so the scorer is unchanged. Masked scores
      (-1e9 in fp32) become -inf in fp16, which the scorer's threshold also treats as
      masked. Meant for the CUDA provider; onnxruntime's CPU provider lacks fast fp16
      kernels for several ops.
    * "int8": `onnxruntime.quantization.quantize_dynamic` on MatMul/Gemm weights
      (per-tensor int8, activations quantized on the fly). Meant for CPU.

    Args:
        src: fp32 `model.onnx`.
        dst: Output path.
        variant: "fp16" or "int8" ("fp32" copies).

    Returns:
        `dst`.
    """
    if variant == "fp32":
        if Path(src) != Path(dst):
            shutil.copyfile(src, dst)
        return Path(dst)
    if variant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(src))
        # Keep the ops that carry the -1e9 mask / do the final ranking in fp32: the mask
        # constant overflows fp16 and TopK on -inf ties is not worth the risk. The
        # ScatterElements ops (exclusions; the repeat head's add) stay fp32 too:
        # onnxruntime's CPU provider has no fp16 kernel for a scatter with reduction;
        # so does the explanation's ArgMax (no fp16 CPU kernel either).
        half = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=["TopK", "ScatterElements", "ArgMax"],
        )
        _toposort(half.graph)  # the converter appends its Cast nodes at the end
        onnx.save(half, str(dst))
    elif variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp_out = Path(dst).with_name(f".{Path(dst).name}.int8.tmp")
        quantize_dynamic(
            str(src),
            str(tmp_out),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
        os.replace(tmp_out, dst)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    onnx.checker.check_model(str(dst), full_check=True)
    return Path(dst)


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder `graph.node` topologically in place (Kahn's algorithm, stable)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError("graph has a cycle or an undefined input after conversion")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def measure_latency(
    model_path: Path,
    *,
    batch_sizes: Sequence[int] = (1, 64, 256),
    threads: int = 2,
    repeats: int = 30,
    provider: str = "CPUExecutionProvider",
) -> dict[int, float]:
    """Median wall time (milliseconds) of one `session.run` per batch size.

    Inputs are random full-length histories with one exclusion per row; the session is
    warmed up first. Meant for relative comparisons of variants on one machine.

    Args:
        model_path: A `model.onnx` (or its directory).
        batch_sizes: Batch sizes to time.
        threads: onnxruntime intra-op threads.
        repeats: Timed runs per batch size.
        provider: Execution provider.

    Returns:
        {batch size: median milliseconds}.
    """
    path = Path(model_path)
    if path.is_dir():
        path = path / MODEL_FILENAME
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=[provider])
    meta = ModelMetadata.load(path.parent)
    out: dict[int, float] = {}
    for batch in batch_sizes:
        inputs = _example_inputs(meta.n_items, meta.max_len, batch=batch, n_exclude=1)
        feeds = {name: t.numpy() for name, t in zip(ONNX_INPUTS, inputs, strict=True)}
        for _ in range(3):
            session.run(list(ONNX_OUTPUTS), feeds)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(list(ONNX_OUTPUTS), feeds)
            times.append((time.perf_counter() - t0) * 1000.0)
        out[batch] = float(np.median(times))
    return out
