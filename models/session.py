"""The one place onnxruntime sessions over an exported model are created.

The serving scorer (`models.scorer.OnnxScorer`) and the offline ranker
(`models.ranking.OnnxRanker`) both get their session here, with the same options and
the same execution-provider rules. numpy-free; onnxruntime only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import onnxruntime as ort

__all__ = ["CUDA_PROVIDER_OPTIONS", "Provider", "ProviderUnavailableError", "create_session"]

#: Execution provider choice: CUDA if usable ("auto"), CUDA or fail, or CPU.
Provider = Literal["auto", "cuda", "cpu"]

logger = logging.getLogger("recstream.models.scorer")

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"

#: CUDA execution provider options. Grow the memory arena by what is asked, not in
#: doubling steps, so several worker processes can share one GPU; copy inputs and
#: outputs on the default stream (what IO binding with host buffers expects).
CUDA_PROVIDER_OPTIONS: dict[str, str] = {
    "arena_extend_strategy": "kSameAsRequested",
    "do_copy_in_default_stream": "1",
}


class ProviderUnavailableError(RuntimeError):
    """Raised when an explicitly requested execution provider cannot be used."""


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads  # 0 = onnxruntime default
    return options


def create_session(
    model_path: Path,
    provider: Provider = "cpu",
    intra_op_threads: int = 0,
) -> tuple[ort.InferenceSession, str]:
    """Create an inference session following the provider rules.

    Args:
        model_path: The `.onnx` file.
        provider: "cpu"; "cuda" (raise if CUDA is not really used); or "auto" (CUDA
            when it really works, else CPU).
        intra_op_threads: onnxruntime intra-op threads (0 = onnxruntime default).

    Returns:
        The session and the provider in use, "cpu" or "cuda".

    Raises:
        ProviderUnavailableError: If provider="cuda" and CUDA cannot be used.
        ValueError: On an unknown provider.
    """
    available = ort.get_available_providers()
    path = str(model_path)
    if provider == "cpu":
        session = ort.InferenceSession(path, _session_options(intra_op_threads), providers=[_CPU])
        return session, "cpu"
    if provider == "cuda":
        if _CUDA not in available:
            raise ProviderUnavailableError(
                f"CUDAExecutionProvider is not available in this onnxruntime build "
                f"(available: {available}); install onnxruntime-gpu or use provider='cpu'"
            )
        try:
            session = ort.InferenceSession(
                path,
                _session_options(intra_op_threads),
                providers=[(_CUDA, dict(CUDA_PROVIDER_OPTIONS)), _CPU],
            )
        except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
            raise ProviderUnavailableError(f"creating a CUDA session failed: {exc}") from exc
        # onnxruntime-gpu lists CUDA as available even without a usable GPU/driver and then
        # silently falls back to CPU; only the session's own provider list is the truth.
        if session.get_providers()[:1] != [_CUDA]:
            raise ProviderUnavailableError(
                f"CUDAExecutionProvider could not be loaded (session providers: "
                f"{session.get_providers()}); check the CUDA/cuDNN runtime or use 'cpu'"
            )
        return session, "cuda"
    if provider != "auto":
        raise ValueError(f"provider must be 'auto', 'cuda' or 'cpu', got {provider!r}")
    if _CUDA in available:
        try:
            return create_session(model_path, "cuda", intra_op_threads)
        except ProviderUnavailableError as exc:
            logger.warning("CUDA provider unusable, falling back to CPU: %s", exc)
    return create_session(model_path, "cpu", intra_op_threads)
