"""`recstream bench grouping`'s measurement on the tiny model."""

from __future__ import annotations

from pathlib import Path

from models.speed import grouping_benchmark
from models.synthetic import SyntheticShop


def test_grouping_benchmark_times_every_mode(
    tiny_model_dir: Path, tiny_shop: SyntheticShop
) -> None:
    by_user: dict[str, list[tuple[str, str, str]]] = {}
    for e in tiny_shop.events:
        by_user.setdefault(e.user_id, []).append((e.item_id, e.event_type, e.channel))
    histories = [h[:n] for h in by_user.values() for n in range(1, len(h) + 1)]
    rows = grouping_benchmark(tiny_model_dir, histories, [4, 32], rows_per_size=64, repeats=1)
    assert [r["batch"] for r in rows] == [4, 32]
    for row in rows:
        assert row["one_call_us_per_row"] > 0 and row["grouped_us_per_row"] > 0
        assert row["speedup"] == row["one_call_us_per_row"] / row["grouped_us_per_row"]
        assert row["speedup_measured"] == (
            row["one_call_us_per_row"] / row["grouped_measured_us_per_row"]
        )
        assert row["modelled_costs"]["source"] == "modelled"
        assert 1 <= row["mean_longest"] <= max(len(h) for h in histories)
