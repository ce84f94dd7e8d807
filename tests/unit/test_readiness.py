"""/readyz: not ready while partitions are unassigned, rebalancing or tables restore."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streams.web import is_ready


def fake_app(
    *, assigned: bool, rebalancing: bool, in_recovery: bool, completed: bool
) -> SimpleNamespace:
    done = asyncio.Event()
    if completed:
        done.set()
    recovery = SimpleNamespace(in_recovery=in_recovery, completed=done)
    return SimpleNamespace(
        consumer=SimpleNamespace(assignment=lambda: {"tp"} if assigned else set()),
        rebalancing=rebalancing,
        tables=SimpleNamespace(recovery=recovery),
    )


def test_ready_only_when_assigned_settled_and_restored() -> None:
    assert is_ready(fake_app(assigned=True, rebalancing=False, in_recovery=False, completed=True))  # type: ignore[arg-type]
    for blocker in (
        {"assigned": False},
        {"rebalancing": True},
        {"in_recovery": True},
        {"completed": False},
    ):
        state = {
            "assigned": True,
            "rebalancing": False,
            "in_recovery": False,
            "completed": True,
            **blocker,
        }
        assert not is_ready(fake_app(**state)), blocker  # type: ignore[arg-type]
