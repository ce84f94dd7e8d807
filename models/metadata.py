"""`metadata.json`: everything the scorer needs next to `model.onnx` (stdlib only).

Item vocabulary convention: `items[i]` is the external id of model index `i`, and
`items[0]` is stored as JSON `null` because index 0 is the padding item. `popularity`
is aligned the same way (`popularity[0] == 0`), so both lists have `n_items + 1` entries.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.interactions import CHANNELS, EVENT_TYPES

#: How a hidden state is scored against the (tied) item table: "dot" = inner product
#: (classic SASRec); "cosine" = cosine similarity divided by a temperature (both sides
#: L2-normalised, as in NISER / CORE), which stops popular items winning on norm alone.
SIMILARITIES = ("dot", "cosine")

#: The architecture of models recorded before there was a choice (see
#: `models.architectures`): the causal transformer.
DEFAULT_ARCH = "sasrec"

#: Score the graph gives padding / excluded items before TopK. A large negative *finite*
#: value (not -inf) keeps TopK well defined in every runtime; real scores are O(10). The
#: networks also use it as the additive attention mask (finite, so a fully masked row
#: cannot NaN) and to mask accidental hits among sampled negatives.
MASKED_SCORE = -1.0e9
#: Graph scores at or below this are masked items: `MASKED_SCORE` in fp32 graphs, which
#: the fp16 variant saturates to -65504 (or -inf). Real logits are O(10).
MASKED_THRESHOLD = -1.0e4

__all__ = [
    "CHECKPOINT_FILENAME",
    "DEFAULT_ARCH",
    "EXPLAIN_OUTPUTS",
    "FORMAT_VERSION",
    "ITEM_TABLE_FILENAME",
    "MASKED_SCORE",
    "MASKED_THRESHOLD",
    "METADATA_FILENAME",
    "MODEL_FILENAME",
    "ONNX_INPUTS",
    "ONNX_OUTPUTS",
    "SUCCESSOR_OUTPUTS",
    "SIMILARITIES",
    "VARIANTS",
    "MetadataError",
    "ModelMetadata",
    "make_model_version",
]

#: Version of the metadata.json schema written by this code.
FORMAT_VERSION = 1
#: File names inside an exported model directory.
MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"
#: The torch checkpoint a published store version keeps beside its graph (optional; a
#: warm start from the store, ``recstream train --init-from STORE``, needs it).
CHECKPOINT_FILENAME = "checkpoint.pt"
#: The item table (float32 [n_items + 1, D], ``numpy.save`` format) an export writes
#: beside the graph: what the scorer maps cold items into and explains old graphs with.
ITEM_TABLE_FILENAME = "item_table.npy"
#: Graph input / output names, in order. Every graph has `ONNX_OUTPUTS`; graphs that
#: explain (see `models.network.ServingRecommender`) add `EXPLAIN_OUTPUTS` after them.
ONNX_INPUTS: tuple[str, ...] = ("item_seq", "type_seq", "channel_seq", "exclude")
ONNX_OUTPUTS: tuple[str, ...] = ("scores", "items")
EXPLAIN_OUTPUTS: tuple[str, ...] = ("reason_pos", "reason_cos", "user", "history_scores")
#: After `EXPLAIN_OUTPUTS`, graphs with the transition-prior head (`models.transitions`)
#: add the items it scores beyond the user vector and their final scores, so that the
#: scorer can score every item exactly as the graph does.
SUCCESSOR_OUTPUTS: tuple[str, ...] = ("successor_items", "successor_scores")
#: Numeric variants of an exported graph.
VARIANTS: tuple[str, ...] = ("fp32", "fp16", "int8")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class MetadataError(ValueError):
    """Raised when metadata.json is missing fields, inconsistent, or of an unknown format."""


def make_model_version(fingerprint: str, now: datetime | None = None) -> str:
    """Build a sortable model version such as "20261123T142500Z-1a2b3c4d".

    Args:
        fingerprint: Hex training-data fingerprint; its first 8 characters are used.
        now: Timestamp to use (default: current UTC time). Naive datetimes are taken as UTC.

    Returns:
        "<UTC compact ISO timestamp>-<8 hex>".
    """
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}-{fingerprint[:8]}"


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(slots=True)
class ModelMetadata:
    """Description of an exported model, serialized as `metadata.json`.

    Attributes:
        model_version: Unique version string (see `make_model_version`).
        items: External item ids in index order; `items[0]` is None (padding).
        popularity: Interaction counts per item index (same alignment as `items`).
        max_len: Fixed input sequence length.
        max_k: Number of results the graph returns per row (upper bound for `k`).
        dim: Embedding / model width.
        n_layers: Number of transformer blocks.
        n_heads: Number of attention heads.
        training_data_fingerprint: sha256 hex digest of the training interactions.
        opset: ONNX opset of `model.onnx`.
        created_at: ISO-8601 UTC creation time ("...Z").
        event_types: Event-type vocabulary (index = position + 1).
        channels: Channel vocabulary (index = position + 1).
        onnx_inputs: Graph input names in order.
        onnx_outputs: Graph output names in order.
        metrics: Free-form evaluation metrics (e.g. {"hr@10": 0.4}); may be empty.
        format_version: Schema version of this file.
        variant: Numeric variant of the graph: "fp32" (reference), "fp16" (for CUDA) or
            "int8" (dynamic quantization, for CPU).
        exporter: Exporter that wrote the graph (e.g. "torch.onnx legacy (TorchScript)").
        recent_popularity: Cold-start lists for new users: interaction counts per item
            index over the most recent part of the training data, under "all" and per
            channel (same alignment as `items`). Empty = use `popularity`.
        similarity: What a score is: "dot" (inner product, unbounded) or "cosine"
            (cosine similarity / `temperature`, within +-1/temperature).
        temperature: The "cosine" temperature (1.0 with "dot").
        arch: The sequence encoder's architecture (`models.architectures`; files
            written before the field existed are `DEFAULT_ARCH`). Informational: the
            graph's inputs and outputs are the same for every architecture.
        repeat_head: Whether the graph scores history items with the repeat-aware head
            (`models.repeat`); the worker's ``model`` history policy needs it.
        transition_head: Whether the graph adds the transition-prior head's term
            (`models.transitions`) to the newest items' successors. Informational: the
            graph's inputs and outputs are the same.
        item_table: File name (in the model directory) of the item table the graph
            scores with, `ITEM_TABLE_FILENAME`; "" when the export has none (older).
    """

    model_version: str
    items: list[str | None]
    popularity: list[int]
    max_len: int
    max_k: int
    dim: int
    n_layers: int
    n_heads: int
    training_data_fingerprint: str
    opset: int
    created_at: str = field(default_factory=_utc_now_iso)
    event_types: list[str] = field(default_factory=lambda: list(EVENT_TYPES))
    channels: list[str] = field(default_factory=lambda: list(CHANNELS))
    onnx_inputs: list[str] = field(default_factory=lambda: list(ONNX_INPUTS))
    onnx_outputs: list[str] = field(default_factory=lambda: list(ONNX_OUTPUTS))
    metrics: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    variant: str = "fp32"
    exporter: str = ""
    recent_popularity: dict[str, list[int]] = field(default_factory=dict)
    similarity: str = "dot"
    temperature: float = 1.0
    arch: str = DEFAULT_ARCH
    repeat_head: bool = False
    transition_head: bool = False
    item_table: str = ""

    @property
    def n_items(self) -> int:
        """Number of real items (excluding the padding index)."""
        return len(self.items) - 1

    @property
    def explains(self) -> bool:
        """Whether the graph has the explanation outputs (`EXPLAIN_OUTPUTS`)."""
        explain = [*ONNX_OUTPUTS, *EXPLAIN_OUTPUTS]
        return self.onnx_outputs in (explain, [*explain, *SUCCESSOR_OUTPUTS])

    def validate(self) -> None:
        """Check internal consistency.

        Raises:
            MetadataError: On an unknown format version or inconsistent fields.
        """
        if self.format_version != FORMAT_VERSION:
            raise MetadataError(
                f"unsupported metadata format_version {self.format_version} "
                f"(this code reads {FORMAT_VERSION})"
            )
        if not self.items or self.items[0] is not None:
            raise MetadataError("items[0] must be null (padding index)")
        real = self.items[1:]
        if any(not isinstance(i, str) or not i for i in real):
            raise MetadataError("items[1:] must be non-empty strings")
        if len(set(real)) != len(real):
            raise MetadataError("items contains duplicate ids")
        if len(self.popularity) != len(self.items):
            raise MetadataError(
                f"popularity has {len(self.popularity)} entries, expected {len(self.items)}"
            )
        if any(c < 0 for c in self.popularity):
            raise MetadataError("popularity counts must be non-negative")
        for name in ("max_len", "max_k", "dim", "n_layers", "n_heads", "opset"):
            if getattr(self, name) < 1:
                raise MetadataError(f"{name} must be >= 1")
        if self.max_k > self.n_items:
            raise MetadataError(f"max_k={self.max_k} exceeds the {self.n_items} items")
        if not _SHA256_RE.match(self.training_data_fingerprint):
            raise MetadataError("training_data_fingerprint must be 64 lowercase hex chars")
        for key, counts in self.recent_popularity.items():
            if len(counts) != len(self.items) or any(c < 0 for c in counts):
                raise MetadataError(f"recent_popularity[{key!r}] must be {len(self.items)} counts")
        if self.variant not in VARIANTS:
            raise MetadataError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.similarity not in SIMILARITIES:
            raise MetadataError(
                f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise MetadataError("temperature must be a positive number")
        if any(not math.isfinite(v) for v in self.metrics.values()):
            raise MetadataError("metrics must be finite numbers")
        if self.onnx_outputs[:2] != list(ONNX_OUTPUTS):
            raise MetadataError(f"onnx_outputs must start with {list(ONNX_OUTPUTS)}")
        if self.item_table and ("/" in self.item_table or self.item_table.startswith(".")):
            raise MetadataError("item_table must be a file name inside the model directory")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (keys in a stable, readable order)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        """Build and validate metadata from a parsed JSON object.

        Unknown keys are ignored so that newer writers can add optional fields.

        Raises:
            MetadataError: If required fields are missing or the result is inconsistent.
        """
        names = set(cls.__dataclass_fields__)
        try:
            meta = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:  # missing required fields
            raise MetadataError(f"invalid metadata: {exc}") from exc
        meta.metrics = {str(k): float(v) for k, v in meta.metrics.items()}
        meta.validate()
        return meta

    def save(self, path: Path) -> None:
        """Validate and write as JSON to `path` (a file path), fsynced.

        Args:
            path: Destination file, typically `<model_dir>/metadata.json`.
        """
        self.validate()
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        """Read and validate metadata from a JSON file or a model directory.

        Args:
            path: `metadata.json` itself or the directory that contains it.

        Raises:
            MetadataError: If the content is invalid.
            FileNotFoundError: If the file does not exist.
        """
        file = path / METADATA_FILENAME if path.is_dir() else path
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise MetadataError(f"{file}: top-level JSON value must be an object")
        return cls.from_dict(data)
