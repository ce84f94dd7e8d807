"""Stand-ins for ``models.bundles`` (``CoPurchaseCounts``, ``latest_pairs``) of issue #17.

The stream layer codes against ``streams.bundles.CoPurchaseState`` / ``CoPurchaseModel``;
these follow the interface of DESIGN-17 (plain sums, no decay) so its tests run on
their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streams.bundles import CoPurchaseModel

__all__ = ["StandInCounts", "standin_latest_pairs", "standin_model"]


class StandInCounts:
    """Per anchor, partner -> number of co-purchases (no decay), at most ``max_partners``."""

    def __init__(self, max_partners: int = 50) -> None:
        self.max_partners = max_partners
        self._anchors: dict[str, dict[str, float]] = {}

    def add(self, anchor: str, partner: str, ts: float, weight: float = 1.0) -> None:
        assert anchor != partner
        weights = self._anchors.setdefault(anchor, {})
        weights[partner] = weights.get(partner, 0.0) + weight
        if len(weights) > self.max_partners:
            del weights[min(weights, key=lambda p: (weights[p], p == partner))]

    def top(self, anchor: str, n: int, now: float | None = None) -> list[tuple[str, float]]:
        ranked = sorted(self._anchors.get(anchor, {}).items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[:n]

    def to_dict(self, anchor: str) -> dict[str, Any]:
        return {"ref": 0.0, "partners": dict(self._anchors.get(anchor, {}))}

    def from_dict(self, anchor: str, data: Mapping[str, Any]) -> None:
        self._anchors[anchor] = {str(p): float(w) for p, w in data["partners"].items()}


def standin_latest_pairs(
    purchases: Sequence[tuple[str, str | None, float]], *, window_s: float
) -> list[tuple[str, str, float]]:
    """The newest purchase against each earlier one of the same order or window."""
    item, order, ts = purchases[-1]
    pairs = []
    for other, other_order, other_ts in purchases[:-1]:
        if other != item and (
            (order is not None and order == other_order) or abs(ts - other_ts) <= window_s
        ):
            pairs += [(other, item, ts), (item, other, ts)]
    return pairs


def standin_model() -> CoPurchaseModel:
    return CoPurchaseModel(counts=StandInCounts, latest_pairs=standin_latest_pairs)
