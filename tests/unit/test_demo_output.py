"""`recstream demo`'s console output: each section heading starts a line of its own."""

from __future__ import annotations

import io
import re

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
