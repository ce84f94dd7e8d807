"""Co-purchase counts (decay, bound, eviction, state round trip) and the bundle replay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deploy.text_cli import register
from models.bundles import (
    CoPurchaseCounts,
    Purchase,
    co_purchase_pairs,
    evaluate_bundles,
    latest_pairs,
    purchases_from_sequences,
)
from models.synthetic import generate_shop

H = 3600.0  # the half-life of most tests: one hour
DAY = 86400.0


def test_weights_halve_every_half_life() -> None:
    counts = CoPurchaseCounts(half_life_s=H)
    counts.add("a", "b", ts=0.0)
    assert counts.top("a", 1, now=H) == [("b", pytest.approx(0.5))]
    assert counts.top("a", 1, now=3 * H) == [("b", pytest.approx(0.125))]
    counts.add("a", "b", ts=H)
    assert counts.top("a", 1, now=H) == [("b", pytest.approx(1.5))]
    assert counts.top("a", 1) == [("b", pytest.approx(1.5))]  # default: the latest time


def test_recent_partners_outrank_old_heavier_ones() -> None:
    counts = CoPurchaseCounts(half_life_s=H)
    counts.add("a", "old", ts=0.0, weight=2.0)  # 0.5 two half-lives later
    counts.add("a", "new", ts=2 * H)  # 1.0
    counts.add("a", "tie", ts=2 * H)
    assert [p for p, _ in counts.top("a", 3)] == ["new", "tie", "old"]  # ties by id
    assert counts.top("unknown", 3) == [] and counts.top("a", 0) == []
    plain = CoPurchaseCounts(half_life_s=math.inf)
    for ts in (0.0, 1e9):
        plain.add("a", "b", ts)
    assert plain.top("a", 1) == [("b", 2.0)]  # no decay: a plain count


def test_the_lightest_partner_is_evicted() -> None:
    counts = CoPurchaseCounts(half_life_s=H, max_partners=3)
    for partner, weight in (("b", 3.0), ("c", 2.0), ("d", 1.0)):
        counts.add("a", partner, ts=0.0, weight=weight)
    counts.add("a", "e", ts=0.0, weight=1.5)  # evicts d
    assert [p for p, _ in counts.top("a", 10)] == ["b", "c", "e"]
    counts.add("a", "f", ts=0.0, weight=0.5)  # lighter than everyone: not kept
    assert [p for p, _ in counts.top("a", 10)] == ["b", "c", "e"]
    counts.add("a", "g", ts=0.0, weight=1.5)  # ties with e: the older entry goes
    assert [p for p, _ in counts.top("a", 10)] == ["b", "c", "g"]
    counts.add("a", "b", ts=0.0)  # a known partner never evicts
    assert counts.top("a", 10)[0] == ("b", 4.0)


def test_decay_decides_eviction() -> None:
    counts = CoPurchaseCounts(half_life_s=H, max_partners=2)
    counts.add("a", "b", ts=0.0, weight=4.0)  # 0.5 three half-lives later
    counts.add("a", "c", ts=0.0, weight=3.0)  # 0.375
    counts.add("a", "d", ts=3 * H)
    assert counts.top("a", 5) == [("d", pytest.approx(1.0)), ("b", pytest.approx(0.5))]


def test_far_apart_times_stay_finite() -> None:
    counts = CoPurchaseCounts(half_life_s=H)
    counts.add("a", "old", ts=0.0)
    counts.add("a", "new", ts=100 * H)  # past the rebase point (2 ** 30)
    counts.add("a", "late", ts=-2000 * H)  # a very late event: weighs ~nothing
    top = counts.top("a", 3, now=100 * H)
    assert [p for p, _ in top] == ["new", "old", "late"]
    assert top[0][1] == pytest.approx(1.0) and top[1][1] == pytest.approx(2.0**-100)
    assert all(math.isfinite(w) for _, w in counts.top("a", 3, now=-1e12))


def test_state_round_trips_through_json() -> None:
    counts = CoPurchaseCounts(half_life_s=H, max_partners=4)
    for n, partner in enumerate("bcdbbe"):
        counts.add("a", partner, ts=n * 600.0)
    state = json.loads(json.dumps(counts.to_dict("a")))
    restored = CoPurchaseCounts(half_life_s=H, max_partners=4)
    restored.from_dict("a", state)
    assert restored.top("a", 10, now=5 * H) == counts.top("a", 10, now=5 * H)
    for c in (counts, restored):  # and both go on the same way
        c.add("a", "f", ts=2 * H)
        c.add("a", "c", ts=2 * H)
    assert restored.top("a", 10) == counts.top("a", 10)
    assert counts.to_dict("zzz") == {"ref": 0.0, "last": 0.0, "partners": {}}
    assert "zzz" not in counts and "a" in counts and len(counts) == 1


def test_from_dict_keeps_the_heaviest_and_rejects_bad_state() -> None:
    counts = CoPurchaseCounts(max_partners=2)
    counts.from_dict("a", {"ref": 5.0, "partners": {"b": 1.0, "c": 3.0, "d": 2.0, "a": 9.0}})
    assert [p for p, _ in counts.top("a", 5)] == ["c", "d"]
    counts.from_dict("a", {"ref": 5.0, "partners": {}})
    assert "a" not in counts
    for bad in ({"partners": {}}, {"ref": "x", "partners": {}}, {"ref": 0, "partners": {"b": -1}}):
        with pytest.raises(ValueError, match="invalid co-purchase state"):
            counts.from_dict("a", bad)


def test_bad_arguments_are_rejected() -> None:
    counts = CoPurchaseCounts()
    for args in (("a", "a", 0.0), ("a", "b", math.nan), ("a", "b", 0.0, -1.0)):
        with pytest.raises(ValueError):
            counts.add(*args)
    for kwargs in ({"half_life_s": 0.0}, {"max_partners": 0}):
        with pytest.raises(ValueError):
            CoPurchaseCounts(**kwargs)  # type: ignore[arg-type]


def test_co_purchase_pairs() -> None:
    purchases = [
        ("x", "o1", 0.0),
        ("y", None, 100.0),  # within the window of x
        ("z", "o1", 10 * H),  # same order as x, outside the window
        ("w", None, 20 * H),  # alone
        ("x", None, 20 * H + 10),  # x again: pairs with w
    ]
    pairs = co_purchase_pairs(purchases, window_s=H)
    assert pairs == [
        ("x", "y", 100.0),
        ("y", "x", 100.0),
        ("x", "z", 10 * H),
        ("z", "x", 10 * H),
        ("w", "x", 20 * H + 10),
        ("x", "w", 20 * H + 10),
    ]
    repeated = [("a", None, 0.0), ("a", None, 1.0), ("b", None, 2.0)]
    assert latest_pairs(repeated, window_s=H) == [("a", "b", 2.0), ("b", "a", 2.0)]
    assert latest_pairs(repeated[:2], window_s=H) == []  # an item is not its own partner
    assert latest_pairs([], window_s=H) == []


def _drifting_world() -> list[Purchase]:
    """100 shoppers a day apart buy A then, 10 minutes later, B; from day 80 on, C."""
    log = []
    for day in range(100):
        user = f"u{day}"
        log.append(Purchase(user, "A", None, day * DAY))
        log.append(Purchase(user, "B" if day < 80 else "C", None, day * DAY + 600))
    return log


def test_replay_on_a_planted_world_where_the_bundle_changes() -> None:
    report = evaluate_bundles(_drifting_world(), window_s=H, half_life_s=DAY, ks=(1, 5))
    # The test part is the last 20 % (days 80-99); its cases are the 20 C purchases.
    assert report.n_purchases == 200 and report.n_cases == 20
    assert report.cutoff_ts == 80 * DAY
    hits = report.hits
    # The decayed counts follow the change within two days: A's top partner is then C.
    assert hits["streaming"]["hit@1"] >= 0.85
    # Counted without decay, or fitted on the past, B stays on top; C is not popular.
    for method in ("streaming-no-decay", "static", "popularity"):
        assert hits[method]["hit@1"] == 0.0
    assert hits["streaming-no-decay"]["hit@5"] == pytest.approx(0.95)  # C second from day 81
    assert hits["static"]["hit@5"] == 0.0  # C never co-purchased in the training prefix
    assert all(h["coverage"] == 1.0 for h in hits.values())


def test_replay_uses_only_the_past() -> None:
    """Each shopper's second item is new: no method may have seen it in A's bundle."""
    log = []
    for day in range(50):
        log.append(Purchase(f"u{day}", "A", f"o{day}", day * DAY))
        log.append(Purchase(f"u{day}", f"new{day}", f"o{day}", day * DAY + 5 * H))
    report = evaluate_bundles(log, window_s=H, half_life_s=DAY)
    assert report.n_cases == 10  # same order: paired although 5 h apart
    assert all(h["hit@10"] == 0.0 for h in report.hits.values())


def test_replay_on_the_synthetic_shop_beats_popularity() -> None:
    shop = generate_shop(n_items=400, n_users=1500, seed=3)
    log = [
        Purchase(e.user_id, e.item_id, e.order_id, e.ts)
        for e in shop.events
        if e.event_type == "purchase"
    ]
    report = evaluate_bundles(log)
    assert report.n_cases > 100
    hits = report.hits
    assert hits["streaming"]["hit@10"] > 2 * hits["popularity"]["hit@10"]
    assert hits["static"]["hit@10"] > 2 * hits["popularity"]["hit@10"]


def test_replay_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no purchases"):
        evaluate_bundles([])
    with pytest.raises(ValueError, match="train_fraction"):
        evaluate_bundles(_drifting_world(), train_fraction=1.0)


def test_sequences_get_invented_times() -> None:
    log = purchases_from_sequences({"u1": ["a", "b", "c"], "u2": ["d"]}, step_s=DAY, seed=1)
    u1 = [p for p in log if p.user_id == "u1"]
    assert [p.item_id for p in u1] == ["a", "b", "c"]
    assert [p.ts - u1[0].ts for p in u1] == [0.0, DAY, 2 * DAY]
    assert all(p.order_id is None for p in log)
    assert purchases_from_sequences({"u1": ["a"]}, seed=1) == purchases_from_sequences(
        {"u1": ["a"]}, seed=1
    )


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("noop")(lambda: None)  # more than one command: keep subcommand names
    register(cli)
    return cli


def test_cli_on_the_synthetic_shop(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["evaluate-bundles", "--synthetic", "--users", "300"])
    assert result.exit_code == 0, result.output
    for method in ("streaming", "streaming-no-decay", "static", "popularity", "hit@10"):
        assert method in result.output


def test_cli_on_sequences(app: typer.Typer, tmp_path: Path) -> None:
    data = tmp_path / "seq.txt"
    data.write_text("".join(f"u{n} A {'B' if n < 80 else 'C'}\n" for n in range(100)))
    result = CliRunner().invoke(
        app,
        ["evaluate-bundles", "--data", str(data), "--format", "sequences", "--window-s", "86400"],
    )
    assert result.exit_code == 0, result.output
    assert "invented times" in result.output


def test_cli_needs_exactly_one_source(app: typer.Typer, tmp_path: Path) -> None:
    for args in ([], ["--synthetic", "--data", str(tmp_path)]):
        result = CliRunner().invoke(app, ["evaluate-bundles", *args])
        assert result.exit_code != 0 and "exactly one" in result.output


def test_cli_on_an_event_log(app: typer.Typer, tmp_path: Path) -> None:
    """Purchases of an event log (clicks ignored); the drifting world, 2024 onwards."""
    start = 1_704_067_200.0  # 2024-01-01
    data = tmp_path / "events.jsonl"
    with open(data, "w") as fh:
        for n, p in enumerate(_drifting_world()):
            for kind in ("click", "purchase"):
                record = {"event_id": f"{kind}{n}", "user_id": p.user_id, "item_id": p.item_id}
                record |= {"ts": start + p.ts, "type": kind, "channel": "web"}
                fh.write(json.dumps(record) + "\n")
    args = ["evaluate-bundles", "--data", str(data), "--half-life-s", str(DAY)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "200 purchases, 20 cases" in " ".join(result.output.split())
