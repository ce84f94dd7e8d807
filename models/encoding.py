"""Turn histories into the fixed-shape int64 arrays the network consumes (numpy only).

Training, offline evaluation and the ONNX scorer all go through these helpers, so the
index conventions (0 = padding, left padding, truncation to the most recent events)
cannot drift between training and serving.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.interactions import CHANNELS, EVENT_TYPES, HistoryItem

__all__ = [
    "CHANNEL_INDEX",
    "EVENT_TYPE_INDEX",
    "PAD_INDEX",
    "EncodedHistories",
    "encode_exclude",
    "encode_histories",
    "vocab_index",
]

#: Index reserved for padding in the item, event-type and channel vocabularies.
PAD_INDEX = 0

IntArray = npt.NDArray[np.int64]


def vocab_index(values: Sequence[str | None]) -> dict[str, int]:
    """Map names to indices for a vocabulary whose position 0 is padding.

    Args:
        values: Vocabulary in index order; entries that are None (padding) are skipped.

    Returns:
        Name -> index dictionary.
    """
    return {value: i for i, value in enumerate(values) if value is not None}


#: Event type -> model index (0 = pad / unknown).
EVENT_TYPE_INDEX: dict[str, int] = vocab_index([None, *EVENT_TYPES])
#: Channel -> model index (0 = pad / unknown).
CHANNEL_INDEX: dict[str, int] = vocab_index([None, *CHANNELS])


@dataclass(frozen=True, slots=True)
class EncodedHistories:
    """A batch of left-padded histories.

    Attributes:
        item_seq: Item indices [B, max_len], 0 = padding.
        type_seq: Event-type indices [B, max_len], 0 = padding or unknown type.
        channel_seq: Channel indices [B, max_len], 0 = padding or unknown channel.
        lengths: Number of known (non-padding) steps per row [B].
    """

    item_seq: IntArray
    type_seq: IntArray
    channel_seq: IntArray
    lengths: IntArray

    @property
    def has_known(self) -> npt.NDArray[np.bool_]:
        """Boolean mask [B] of rows with at least one known item."""
        return self.lengths > 0


def encode_histories(
    histories: Sequence[Sequence[HistoryItem]],
    item_index: Mapping[str, int],
    max_len: int,
    *,
    type_index: Mapping[str, int] = EVENT_TYPE_INDEX,
    channel_index: Mapping[str, int] = CHANNEL_INDEX,
) -> EncodedHistories:
    """Encode oldest-first histories into left-padded index arrays.

    Unknown items are dropped (they carry no learned embedding); unknown event types or
    channels of a known item map to the padding index 0, whose embedding is zero. Only
    the most recent `max_len` known steps are kept.

    Args:
        histories: One oldest-first sequence of (item_id, event_type, channel) per row.
        item_index: External item id -> model index (>= 1).
        max_len: Fixed sequence length of the model.
        type_index: Event type -> index.
        channel_index: Channel -> index.

    Returns:
        The encoded batch.
    """
    n = len(histories)
    item_seq = np.zeros((n, max_len), dtype=np.int64)
    type_seq = np.zeros((n, max_len), dtype=np.int64)
    channel_seq = np.zeros((n, max_len), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for row, history in enumerate(histories):
        known = [
            (idx, type_index.get(event_type, PAD_INDEX), channel_index.get(channel, PAD_INDEX))
            for item_id, event_type, channel in history
            if (idx := item_index.get(item_id)) is not None
        ][-max_len:]
        if not known:
            continue
        length = len(known)
        # Left padding: the most recent event always sits at position max_len - 1.
        block = np.asarray(known, dtype=np.int64)
        item_seq[row, max_len - length :] = block[:, 0]
        type_seq[row, max_len - length :] = block[:, 1]
        channel_seq[row, max_len - length :] = block[:, 2]
        lengths[row] = length
    return EncodedHistories(item_seq, type_seq, channel_seq, lengths)


def encode_exclude(exclude: Sequence[Collection[str]], item_index: Mapping[str, int]) -> IntArray:
    """Encode per-row exclude sets as a right-padded [B, E] index array.

    Unknown ids are ignored. E is at least 1 (a single padding column) because the
    exported graph requires a non-empty exclude dimension; padding with 0 is harmless
    since index 0 (padding item) is always masked anyway.

    Args:
        exclude: One collection of external item ids per row.
        item_index: External item id -> model index.

    Returns:
        int64 array [B, max(1, largest known exclude set)].
    """
    rows = [
        sorted({i for item in ids if (i := item_index.get(item)) is not None}) for ids in exclude
    ]
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), max(1, width)), dtype=np.int64)
    for row, indices in enumerate(rows):
        out[row, : len(indices)] = indices
    return out
