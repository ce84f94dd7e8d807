"""Search intent: the embedded query a profile keeps, and how its weight decays.

A search is embedded by the text encoder of the worker (``RECSTREAM_TEXT_ENCODER_DIR``:
an exported ``models.text_encoder.OnnxTextEncoder`` directory) in the inference thread,
batched with the scoring, never on the event loop. The profile keeps only the vector
(float16, base64: 768 bytes for a 384-dimension encoder), the encoder's dimension and
the search's event time, never the query text. A stored intent whose dimension is not
the current encoder's (the worker now runs another encoder) is dropped when read
(:func:`stored_vector`): a wrong-sized vector would fail the scorer's whole batch.
Every later event of the user carries it to the scorer as an intent whose weight
halves every ``RECSTREAM_SEARCH_HALF_LIFE_S`` seconds of event time; below
``RECSTREAM_SEARCH_MIN_WEIGHT`` it is no longer sent.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from models.scorer import Intent

__all__ = ["TextEncoder", "decayed_weight", "make_intent", "pack", "stored_vector", "unpack"]


class TextEncoder(Protocol):
    """What the worker needs of ``models.text_encoder.OnnxTextEncoder`` (the seam
    where tests pass a deterministic fake instead of an ONNX model)."""

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[len(texts), dim]``, unit rows."""
        ...


def make_intent(vector: np.ndarray, weight: float) -> Intent:
    """The scorer's intent for an embedded query decayed to ``weight``."""
    return Intent(vector=vector, weight=weight)


def pack(vector: np.ndarray) -> str:
    """A unit vector as float16 base64, the profile's compact copy of an intent."""
    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode("ascii")


def unpack(packed: str) -> np.ndarray:
    """The float32 unit vector of :func:`pack` (renormalised: float16 rounds)."""
    vector = np.frombuffer(base64.b64decode(packed), dtype=np.float16).astype(np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def decayed_weight(age_s: float, half_life_s: float) -> float:
    """``0.5 ** (age / half-life)`` for a search ``age_s`` seconds before the event.

    0 for a negative age: the search came after the event (a late or replayed older
    event), so it cannot have shaped it.
    """
    if age_s < 0:
        return 0.0
    return float(0.5 ** (age_s / half_life_s))


def stored_vector(stored: Sequence[Any], dim: int | None) -> tuple[float, np.ndarray] | None:
    """``(search time, unit vector)`` of a profile's ``intent`` if it fits an encoder of
    ``dim`` dimensions, else ``None`` (no encoder, another encoder's, or damaged).

    ``stored`` is ``[ts, packed, dim]`` (``[ts, packed]`` before the dimension was
    kept: then the vector's own length is checked).
    """
    if dim is None or len(stored) < 2:
        return None
    if len(stored) > 2 and stored[2] != dim:
        return None
    try:
        ts, vector = float(stored[0]), unpack(str(stored[1]))
    except (TypeError, ValueError, binascii.Error):
        return None
    if vector.shape != (dim,) or not np.isfinite(vector).all():
        return None
    return ts, vector
