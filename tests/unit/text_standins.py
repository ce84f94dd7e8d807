"""Stand-ins for the text side of issue #17 (``models.text_encoder``, ``models.catalog``).

The stream layer codes against the interfaces of DESIGN-17 (``streams.intent.TextEncoder``,
``streams.catalog.TextIndex``, ``ItemText``); these small implementations let its tests
run without the real ONNX encoder. ``FakeEncoder`` is deterministic: a text's vector
is its normalised letter counts, so texts with the same letters point the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from streams.catalog import TextSupport

__all__ = ["FakeEncoder", "StandInTextIndex", "fake_text_support", "plain_item_text"]


class FakeEncoder:
    """Embeds a text as the unit vector of its letter counts (a..z); records each call."""

    dim = 26

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.threads.add(threading.current_thread().name)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    out[row, ord(ch) - 97] += 1.0
            if not out[row].any():
                out[row, 0] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class StandInTextIndex:
    """``models.catalog.ItemTextIndex``'s interface over a dict."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vectors: dict[str, np.ndarray] = {}
        self.version = 0

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        assert vectors.shape == (len(item_ids), self.dim)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        for item, vector in zip(item_ids, vectors, strict=True):
            self.vectors[item] = vector
        self.version += 1

    def remove(self, item_ids: Sequence[str]) -> None:
        for item in item_ids:
            self.vectors.pop(item, None)
        self.version += 1

    def __len__(self) -> int:
        return len(self.vectors)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.vectors


def plain_item_text(
    title: str,
    description: str | None = None,
    attributes: Mapping[str, object] | Sequence[str] | None = None,
) -> str:
    """``models.text_encoder.item_text``'s signature: the parts joined by '. '."""
    parts = [title, description or ""]
    if isinstance(attributes, Mapping):
        parts.append("; ".join(f"{k}: {attributes[k]}" for k in sorted(attributes)))
    elif attributes is not None:
        parts.append("; ".join(attributes))
    return ". ".join(p for p in parts if p)


def fake_text_support() -> TextSupport:
    encoder = FakeEncoder()
    return TextSupport(
        encoder=encoder, index=StandInTextIndex(encoder.dim), item_text=plain_item_text
    )
