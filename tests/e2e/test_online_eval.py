"""`evaluate --online`: the live pipeline reproduces offline scoring exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.lab.online_eval import online_vs_offline
from models.splits import EvalCase
from models.synthetic import SyntheticShop

pytestmark = pytest.mark.e2e


def test_online_and_offline_agree(model_dir: Path, shop: SyntheticShop, tmp_path: Path) -> None:
    per_user: dict[str, list[tuple[str, str, str]]] = {}
    for ev in shop.events:
        per_user.setdefault(ev.user_id, []).append((ev.item_id, ev.event_type, ev.channel))
    cases = [
        EvalCase(user_id=u, history=tuple(steps[:-1][-15:]), target=steps[-1][0])
        for u, steps in sorted(per_user.items())
        if len(steps) >= 3
    ][:40]
    result = online_vs_offline(cases, model_dir, tmp_path, partitions=2)
    assert result["answered"] == len(cases)
    # The tiny 2-epoch test model has many near-ties; batches of other sizes and
    # lengths reorder them at the 1e-6 level, so lists may differ by adjacent swaps.
    # (A well-trained Beauty model gives 2,000/2,000 identical lists, BENCHMARKS.md.)
    assert result["identical_lists"] >= 0.6 * len(cases)
    assert result["mean_overlap"] >= 0.95
    for metric, value in result["offline"].items():
        assert abs(result["online"][metric] - value) <= 2 / len(cases), metric
