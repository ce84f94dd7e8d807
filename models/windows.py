"""Fixed-length, left-padded training windows cut from encoded timelines (numpy)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.vocab import Step

__all__ = ["TrainingWindows", "build_training_windows"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TrainingWindows:
    """Left-padded training windows: inputs at positions t, next item as target at t.

    Attributes:
        item_seq: int64 [N, L] input items.
        type_seq: int64 [N, L] input event types.
        channel_seq: int64 [N, L] input channels.
        targets: int64 [N, L] next item per position (0 = no target).
    """

    item_seq: IntArray
    type_seq: IntArray
    channel_seq: IntArray
    targets: IntArray

    def __len__(self) -> int:
        """Number of windows (rows)."""
        return int(self.item_seq.shape[0])


def build_training_windows(timelines: Iterable[Sequence[Step]], max_len: int) -> TrainingWindows:
    """Cut timelines into left-padded windows of `max_len` inputs plus shifted targets.

    A timeline of n events yields n - 1 (input, next item) pairs. Long timelines are cut
    from the most recent end into windows of `max_len + 1` events overlapping by one, so
    every transition is trained on exactly once per epoch; the oldest window may be short.

    Args:
        timelines: Oldest-first encoded steps per user.
        max_len: Model sequence length.

    Returns:
        The windows (possibly zero rows).
    """
    chunks: list[Sequence[Step]] = []
    for steps in timelines:
        end = len(steps)
        while end >= 2:
            start = max(0, end - max_len - 1)
            chunks.append(steps[start:end])
            end = start + 1  # overlap by one so the boundary transition is kept
            if start == 0:
                break
    n = len(chunks)
    item_seq = np.zeros((n, max_len), dtype=np.int64)
    type_seq = np.zeros((n, max_len), dtype=np.int64)
    channel_seq = np.zeros((n, max_len), dtype=np.int64)
    targets = np.zeros((n, max_len), dtype=np.int64)
    for row, chunk in enumerate(chunks):
        arr = np.asarray(chunk, dtype=np.int64)  # [m, 3]
        m = arr.shape[0] - 1  # number of input positions
        item_seq[row, max_len - m :] = arr[:-1, 0]
        type_seq[row, max_len - m :] = arr[:-1, 1]
        channel_seq[row, max_len - m :] = arr[:-1, 2]
        targets[row, max_len - m :] = arr[1:, 0]
    return TrainingWindows(item_seq, type_seq, channel_seq, targets)
