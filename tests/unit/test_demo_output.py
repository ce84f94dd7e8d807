"""`recstream demo`'s console output: each section heading starts a line of its own."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from deploy.lab.demo import _live

#: Characters of a rich table's border (rules are drawn with "─" alone).
BORDER = set("┌┐└┘├┤┬┴┼│┏┓┗┛┃┡┩╇")
#: Terminal control sequences (cursor moves, show/hide cursor) of a live display.
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _table(answered: int) -> Table:
    table = Table(title=f"latest recommendations ({answered}/3 events answered)")
    table.add_column("user")
    table.add_column("top 3 recommended items")
    table.add_row("user-0001", "red mug; blue mug; teapot")
    return table


def _live_table_then_heading(console: Console) -> list[str]:
    with _live(console, _table(0)) as view:
        view.update(_table(3))
    console.rule("[bold]5. Summary")
    file = console.file
    assert isinstance(file, io.StringIO)
    return [CONTROL.sub("", line) for line in file.getvalue().splitlines()]


@pytest.mark.parametrize("terminal", [False, True], ids=["file-or-pipe", "terminal"])
def test_summary_heading_does_not_continue_the_tables_bottom_border(terminal: bool) -> None:
    console = Console(file=io.StringIO(), width=80, force_terminal=terminal, color_system=None)
    lines = _live_table_then_heading(console)
    at = next(i for i, line in enumerate(lines) if "5. Summary" in line)
    heading = lines[at]
    assert not set(heading) & BORDER, heading
    assert heading.strip("─ ") == "5. Summary", heading
    # Directly below the table: its bottom border is the line before, no blank line.
    bottom = lines[at - 1].strip()
    assert bottom.startswith("└") and bottom.endswith("┘"), bottom


def test_a_reason_prints_its_code_and_the_item_it_names() -> None:
    from deploy.lab.demo import reason_text

    assert reason_text({"code": "similar_to_viewed", "item_id": "sku-00012"}) == (
        "similar_to_viewed sku-00012"
    )
    assert reason_text({"code": "bought_together", "item_id": "sku-7"}) == "bought_together sku-7"
    assert reason_text({"code": "matches_search", "item_id": None}) == "matches_search"
    assert reason_text(None) == "-"


def test_the_search_table_shows_both_lists_with_reasons_and_marks_new_items() -> None:
    from deploy.lab.demo import _search_table, search_outcome
    from models.synthetic import generate_shop
    from streams.messages import RecommendationMessage

    shop = generate_shop(n_items=24, n_users=5, seed=3)
    tea = [i.item_id for i in shop.catalog if i.category == "Tea"]
    other = [i.item_id for i in shop.catalog if i.category != "Tea"]
    events = [e for e in shop.events if e.user_id == shop.events[0].user_id]

    def message(items: list[tuple[str, dict[str, str | None]]], trigger: str) -> Any:
        return RecommendationMessage.model_validate(
            {
                "schema_version": 2,
                "user_id": "user-0001",
                "items": [{"item_id": i, "score": 1.0, "reason": r} for i, r in items],
                "model_version": "m",
                "strategy": "sequential",
                "trigger_event_id": trigger,
                "trigger_event_type": "search",
                "event_ts": 1.0,
                "produced_ts": 2.0,
            }
        )

    viewed = {"code": "similar_to_viewed", "item_id": events[0].item_id}
    before = message([(other[0], viewed), (other[1], viewed)], "e1")
    after = message(
        [(tea[0], {"code": "matches_search", "item_id": None}), (other[0], viewed)], "s1"
    )
    outcome = search_outcome(shop, events, "Tea", before, after, frozenset({tea[0]}))
    assert outcome["query"] == "tea" and events[0].item_id in outcome["history"]
    assert [e["new"] for e in outcome["after"]] == [True, False]
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(_search_table(shop, outcome))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "searches 'tea'" in text and "before the search" in text and "after the search" in text
    assert f"{shop.item(tea[0]).title} (new)" in text
    assert f"similar_to_viewed {events[0].item_id}" in text and "matches_search" in text
