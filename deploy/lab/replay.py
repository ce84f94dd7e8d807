"""Turning datasets into recstream input events, for replays and benchmarks.

Sequence files (one user per line, items in order) and session files carry no
event types or times. :func:`events_from_sequences` makes them look like a shop's
stream: each interaction becomes a browse, click or purchase (a fixed, seeded mix),
users are interleaved round-robin so many are active at once, and timestamps
advance by a fixed step from ``start_ts``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence

from streams.client import event_from_dict
from streams.events import Event

__all__ = ["events_from_sequences", "interleave"]


def interleave(sequences: Sequence[tuple[str, Sequence[str]]]) -> Iterator[tuple[str, str, int]]:
    """``(user, item, position)`` taking one item from each active user in turn."""
    position = 0
    active = list(sequences)
    while active:
        still = []
        for user, items in active:
            if position < len(items):
                yield user, items[position], position
                if position + 1 < len(items):
                    still.append((user, items))
        active = still
        position += 1


def events_from_sequences(
    sequences: Iterable[tuple[str, Sequence[str]]],
    *,
    seed: int = 0,
    start_ts: float = 1_790_000_000.0,
    step_s: float = 0.01,
    mix: tuple[float, float, float] = (0.5, 0.35, 0.15),
    limit: int | None = None,
) -> list[Event]:
    """Make input events from per-user item sequences.

    Args:
        sequences: ``(user_id, [item_id, ...])`` in chronological order.
        seed: seeds the event-type draw (browse, click, purchase per ``mix``).
        start_ts: time of the first event, Unix seconds.
        step_s: time between consecutive events of the whole stream.
        mix: probabilities of browse, click and purchase.
        limit: stop after this many events.
    """
    rng = random.Random(seed)
    kinds = ("browse", "click", "purchase")
    out: list[Event] = []
    for n, (user, item, pos) in enumerate(interleave(list(sequences))):
        if limit is not None and n >= limit:
            break
        kind = rng.choices(kinds, weights=mix)[0]
        record: dict[str, object] = {
            "event_type": kind,
            "event_id": f"{user}-{pos}",
            "user_id": user,
            "item_id": item,
            "ts": start_ts + n * step_s,
        }
        if kind == "browse":
            record["dwell_ms"] = rng.randint(500, 60_000)
        elif kind == "purchase":
            record.update(order_id=f"o-{user}-{pos}", quantity=1, price=10.0)
        out.append(event_from_dict(record))
    return out
