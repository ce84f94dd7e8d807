"""Length grouping: the cost model that splits a CPU scoring batch by history length.

Every row of one inference call is padded to that call's longest history, and the
encoder's cost grows with that width, so one long history makes the whole batch pay
for it (in a Beauty replay the longest of 64 histories averages 47 items, the mean is
8). The model, in units of one history position of one row: a call of ``r`` rows padded
to ``w`` positions costs ``r * (w + row) + call``, where ``row`` is one row's item
scoring and ``call`` the fixed cost of a call. numpy only; `models.scorer` uses it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["length_groups", "modelled_grouping_costs", "solve_grouping_costs"]

#: Fixed cost of one onnxruntime call on the CPU (session overhead, small kernels),
#: as multiply-adds: ~60 us on the 2-core x86 machine the benchmarks ran on.
_CALL_MACS = 1.0e6


def modelled_grouping_costs(n_items: int, dim: int, n_layers: int) -> tuple[float, float]:
    """(row cost, call cost) counted in multiply-adds, in units of one position.

    One position of one row is n_layers x 12 dim^2 multiply-adds (attention projections
    and FFN); every row also pays for its item logits (n_items x dim), every call
    `_CALL_MACS`.
    """
    per_position = 12.0 * n_layers * dim**2
    return n_items * dim / per_position, _CALL_MACS / per_position


def solve_grouping_costs(
    one: float, narrow: float, wide: float, rows: int, width: int
) -> tuple[float, float, float] | None:
    """Solve the length-grouping cost model from three timed calls.

    The model: a call of ``r`` rows, padded to ``w`` positions, takes
    ``position * (call + r * (w + row))`` seconds.

    Args:
        one: Seconds for 1 row x 1 position.
        narrow: Seconds for ``rows`` rows x 1 position.
        wide: Seconds for ``rows`` rows x ``width`` positions.
        rows: Rows of the last two calls (>= 2).
        width: Positions of the last call (>= 2).

    Returns:
        (seconds per position, row cost, call cost), the costs in positions; None if
        the timings contradict the model (a cost would be zero or negative).
    """
    position = (wide - narrow) / (rows * (width - 1))
    if not position > 0:
        return None
    row = (narrow - one) / (rows - 1) / position - 1.0
    call = one / position - (1.0 + row)
    if row > 0 and call > 0 and np.isfinite([row, call]).all():
        return position, row, call
    return None


def length_groups(
    lengths: npt.NDArray[np.int64], row_cost: float, call_cost: float
) -> list[npt.NDArray[np.int64]]:
    """Split a batch into at most 3 runs of similar history length, cheapest first.

    Rows are sorted by length and cut where the modelled cost -- rows x (width +
    `row_cost`) + `call_cost` per call -- is least (one call when nothing is cheaper).

    Args:
        lengths: History length per row.
        row_cost: Per-row scoring cost, in positions.
        call_cost: Per-call cost, in positions.

    Returns:
        Index arrays into ``lengths``, one per inference call.
    """
    n = lengths.size
    if n < 2:
        return [np.arange(n)]
    order = np.argsort(lengths, kind="stable")
    # Cost of one call over sorted rows [i, j): (j - i) * width[j - 1].
    width = lengths[order].astype(np.float64) + row_cost
    last = width[-1]
    cuts: list[int] = []
    best = n * last + call_cost
    a = np.arange(1, n)  # two calls: [0, a), [a, n)
    two = a * width[a - 1] + (n - a) * last + 2 * call_cost
    if two.min() < best:
        best, cuts = float(two.min()), [int(a[np.argmin(two)])]
    if n >= 3:  # three calls: [0, a), [a, b), [b, n)
        a3 = np.arange(1, n - 1)[:, None]
        b3 = np.arange(2, n)[None, :]
        three = a3 * width[a3 - 1] + (b3 - a3) * width[b3 - 1] + (n - b3) * last
        three = np.where(b3 > a3, three + 3 * call_cost, np.inf)
        i, j = np.unravel_index(int(np.argmin(three)), three.shape)
        if three[i, j] < best:
            cuts = [int(a3[i, 0]), int(b3[0, j])]
    return np.split(order, cuts)
