"""Where a worker's time goes: summaries of py-spy's collapsed stacks.

``recstream bench e2e --profile DIR`` samples each worker with py-spy (``--gil``: the
thread holding the GIL, which is what bounds a Python worker) and writes one
collapsed-stack file per worker (``frame;frame;... count`` per line, outermost
frame first). :func:`summarise` turns one into the share of samples under each
function (inclusive: the function or anything it calls) and in it (self), the
table docs/BENCHMARKS.md compares before and after a change.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FunctionShare", "read_collapsed", "summarise"]

#: py-spy's frame label: ``function (path/to/file.py:line)``; the line is dropped so
#: that the samples of one function add up.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


@dataclass(frozen=True)
class FunctionShare:
    """One function's share of the samples, in percent."""

    function: str
    inclusive: float
    self: float


def _label(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    parts = Path(match["file"]).parts
    return f"{match['func']} ({'/'.join(parts[-2:])})"


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """The stacks of a py-spy ``--format raw`` file: (frames outermost first, count)."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([_label(f) for f in stack.split(";") if f], int(count)))
    return stacks


def summarise(path: Path, top: int = 25) -> tuple[int, list[FunctionShare]]:
    """Total samples and the ``top`` functions by inclusive share.

    A function that recurses counts once per sample. Wrappers are left out: a
    function on every stack of the threads it appears in (``main``, the event loop's
    ``run_forever``...) says nothing about where the time goes.
    """
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    per_root: Counter[str] = Counter()
    roots_of: dict[str, set[str]] = {}
    total = 0
    for frames, count in read_collapsed(path):
        if not frames:
            continue
        total += count
        root = frames[0]
        per_root[root] += count
        for name in set(frames):
            inclusive[name] += count
            roots_of.setdefault(name, set()).add(root)
        own[frames[-1]] += count
    if total == 0:
        return 0, []
    shares = [
        FunctionShare(name, 100.0 * n / total, 100.0 * own[name] / total)
        for name, n in inclusive.most_common()
        if n < sum(per_root[r] for r in roots_of[name]) or own[name] == n
    ]
    return total, shares[:top]
