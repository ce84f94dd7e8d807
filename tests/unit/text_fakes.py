"""A deterministic text encoder for the stream layer's tests (``streams.intent.TextEncoder``).

``FakeEncoder`` embeds a text as its normalised letter counts, so texts with the same
letters point the same way, and records each call and the thread that made it. The
index and the text rule are the real ones (``models.catalog``, ``models.text_encoder``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from models.catalog import ItemTextIndex
from streams.catalog import TextSupport

__all__ = ["FakeEncoder", "fake_text_support"]


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


def fake_text_support() -> TextSupport:
    """The worker's text side with the fake encoder and an empty real index."""
    encoder = FakeEncoder()
    return TextSupport(encoder=encoder, index=ItemTextIndex(encoder.dim))
