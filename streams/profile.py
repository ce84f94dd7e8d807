"""The rolling per-user profile kept in the ``profiles`` table.

A profile is a small, bounded JSON document (stored as JSON in RocksDB and in the
changelog topic, so any Kafka tool can read it):

* ``recent``: the latest ``history_len`` interactions **in event-time order**,
  oldest first, each ``[item_id, event_type, ts, channel]``;
* ``counts``: interactions per event type since the profile was created;
* ``purchased``: ``[item_id, ts]`` of the latest purchase of each distinct item,
  oldest first, at most ``max_purchased``;
* ``last_seen``: the latest event time seen (Unix seconds);
* ``seen``: ``[ts, event_id]`` of the latest ``dedup_window`` applied events, so an
  event replayed after a crash (at-least-once delivery) is not applied twice.

Why event time and not arrival order: a user's clicks, browses and purchases come
from three topics, and Kafka orders records only within one partition of one
topic, so the arrival order across topics differs from run to run (and after a
crash replay). Ordering by event time makes :func:`apply_event` a deterministic
fold: the same set of events gives the same profile in any arrival order, which
the recovery tests check against a reference fold.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from streams.events import Event, EventType

__all__ = ["Profile", "ProfileLimits", "apply_event"]


@dataclass(frozen=True, slots=True)
class ProfileLimits:
    """Bounds that keep every profile small (a few KiB) whatever the user does.

    Attributes:
        history_len: interactions kept in ``recent`` (the model sees the tail).
        max_purchased: distinct purchased items remembered for exclusion.
        dedup_window: applied event ids remembered for idempotency.
    """

    history_len: int = 50
    max_purchased: int = 200
    dedup_window: int = 256


def _recent_key(entry: list[Any]) -> tuple[float, str, str, str]:
    return (float(entry[2]), str(entry[1]), str(entry[0]), str(entry[3]))


@dataclass(slots=True)
class Profile:
    """A user's rolling state; see the module docstring for the fields."""

    recent: list[list[Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    purchased: list[list[Any]] = field(default_factory=list)
    last_seen: float = 0.0
    seen: list[list[Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Profile:
        """Build from the table's stored JSON (``None`` means a new user)."""
        if not data:
            return cls()
        return cls(
            recent=[list(x) for x in data.get("recent", [])],
            counts=dict(data.get("counts", {})),
            purchased=[list(x) for x in data.get("purchased", [])],
            last_seen=float(data.get("last_seen", 0.0)),
            seen=[list(x) for x in data.get("seen", [])],
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document stored in the table and its changelog."""
        return {
            "recent": self.recent,
            "counts": self.counts,
            "purchased": self.purchased,
            "last_seen": self.last_seen,
            "seen": self.seen,
        }

    def history(self) -> list[tuple[str, str, str]]:
        """``(item_id, event_type, channel)`` per recent interaction, oldest first."""
        return [(str(r[0]), str(r[1]), str(r[3])) for r in self.recent]

    def purchased_items(self) -> frozenset[str]:
        """Items this user bought (within the ``max_purchased`` bound)."""
        return frozenset(str(p[0]) for p in self.purchased)

    def has_applied(self, event_id: str) -> bool:
        """Whether an event with this id was already folded in (within the window)."""
        return any(s[1] == event_id for s in self.seen)


def _insert_bounded(entries: list[list[Any]], entry: list[Any], key: Any, limit: int) -> None:
    """Insert keeping ``entries`` sorted by ``key``; drop the oldest beyond ``limit``."""
    bisect.insort(entries, entry, key=key)
    if len(entries) > limit:
        del entries[: len(entries) - limit]


def apply_event(profile: Profile, event: Event, limits: ProfileLimits) -> bool:
    """Fold one event into ``profile`` in place.

    Returns:
        ``False`` if the event id was already applied (a replay), else ``True``.
    """
    if profile.has_applied(event.event_id):
        return False
    etype = event.event_type.value
    _insert_bounded(
        profile.recent,
        [event.item_id, etype, event.ts, event.channel.value],
        _recent_key,
        limits.history_len,
    )
    profile.counts[etype] = profile.counts.get(etype, 0) + 1
    if event.event_type is EventType.PURCHASE:
        previous = next((p for p in profile.purchased if p[0] == event.item_id), None)
        if previous is None or previous[1] < event.ts:
            if previous is not None:
                profile.purchased.remove(previous)
            _insert_bounded(
                profile.purchased,
                [event.item_id, event.ts],
                lambda p: (float(p[1]), str(p[0])),
                limits.max_purchased,
            )
    profile.last_seen = max(profile.last_seen, event.ts)
    _insert_bounded(
        profile.seen,
        [event.ts, event.event_id],
        lambda s: (float(s[0]), str(s[1])),
        limits.dedup_window,
    )
    return True
