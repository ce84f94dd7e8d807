"""The rolling per-user profile kept in the ``profiles`` table.

A profile is a small, bounded JSON document (stored as JSON in RocksDB and in the
changelog topic, so any Kafka tool can read it):

* ``recent``: the latest ``history_len`` interactions **in event-time order**,
  oldest first, each ``[item_id, event_type, ts, channel]``;
* ``counts``: interactions per event type since the profile was created;
* ``purchased``: ``[item_id, ts, order_id]`` of the latest purchase of each distinct
  item, oldest first, at most ``max_purchased`` (entries stored before order ids were
  kept have no third element); the co-purchases of a new purchase come from here;
* ``last_seen``: the latest event time seen (Unix seconds);
* ``seen``: ``[ts, id_hash]`` of the latest ``dedup_window`` applied events (a
  48-bit hash of the ``event_id``, exact in JSON), so an event replayed after a crash
  (at-least-once delivery) is not applied twice. A replay has the same event time
  as the original, so the lookup is a binary search on ``ts``;
* ``recs``: the latest recommendation lists sent to the user (at most
  ``FeedbackConfig.lists``), oldest first, each ``[ts, model_version, arm,
  [item_id, ...], [event_type, ...], experiment]``: ``ts`` is the event time of the
  event that triggered the list, the fifth element names the event types already
  counted as hits on it (each list counts at most one hit per event type, so hits /
  lists is a proportion), and ``experiment`` is the id of the experiment it was
  scored under (lists remembered before it existed have no sixth element, read as
  ``"none"``). Written after scoring (``Pipeline._deliver``); profiles stored
  before the field existed load with none.
* ``latest``: the latest recommendation list sent to the user, the document the
  ``recommendations`` topic carries (:class:`streams.messages.RecommendationMessage`),
  or ``null``; what ``GET /users/{user_id}/recommendations`` answers. Replaced only by
  a list triggered by a later (event time) or the same event.
* ``intent`` (only once the user searched and the worker has a text encoder):
  ``[ts, vector, dim]``, the event time of the latest search, its embedded query
  (float16, base64; see ``streams.intent``) and the encoder's dimension (an intent of
  another encoder is dropped when read). Never the query text.

Why event time and not arrival order: a user's clicks, browses and purchases come
from three topics, and Kafka orders records only within one partition of one
topic, so the arrival order across topics differs from run to run (and after a
crash replay). Ordering by event time makes :func:`apply_event` a deterministic
fold: the same set of events gives the same profile in any arrival order, which
the recovery tests check against a reference fold.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from models.experiment import NO_EXPERIMENT
from streams.events import Event, PurchaseEvent, SearchEvent

__all__ = [
    "Profile",
    "ProfileLimits",
    "apply_event",
    "apply_search",
    "event_id_hash",
    "find_hit",
    "remember_intent",
    "remember_latest",
    "remember_list",
]


class ProfileLimits(BaseModel):
    """Bounds that keep every profile small (a few KiB) whatever the user does.

    A group of settings (``RECSTREAM_HISTORY_LEN`` ...; see ``streams.config``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    env_prefix: ClassVar[str] = ""

    history_len: int = Field(
        50, ge=1, description="Interactions kept per user profile (the model sees the tail)."
    )
    max_purchased: int = Field(
        200, ge=1, description="Distinct purchased items remembered for exclusion."
    )
    dedup_window: int = Field(
        64, ge=1, description="Event ids remembered per user for idempotency."
    )


def _recent_key(entry: list[Any]) -> tuple[float, str, str, str]:
    return (entry[2], entry[1], entry[0], entry[3])


def _purchase_key(entry: list[Any]) -> tuple[float, str]:
    return (entry[1], entry[0])


def _seen_key(entry: list[Any]) -> tuple[float, int]:
    return (entry[0], entry[1])


def _ts(entry: list[Any]) -> float:
    return float(entry[0])


def event_id_hash(event_id: str) -> int:
    """48-bit hash of an event id: small in JSON, exact in every JSON parser."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=6).digest(), "big")


@dataclass(slots=True)
class Profile:
    """A user's rolling state; see the module docstring for the fields."""

    recent: list[list[Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    purchased: list[list[Any]] = field(default_factory=list)
    last_seen: float = 0.0
    seen: list[list[Any]] = field(default_factory=list)
    recs: list[list[Any]] = field(default_factory=list)
    latest: dict[str, Any] | None = None
    intent: list[Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Profile:
        """Wrap the table's stored JSON (``None`` means a new user).

        The lists are used as they are, not copied: every table read deserialises a
        fresh document, and this runs once per event on the hot path.
        """
        if not data:
            return cls()
        return cls(
            recent=data.get("recent", []),
            counts=data.get("counts", {}),
            purchased=data.get("purchased", []),
            last_seen=float(data.get("last_seen", 0.0)),
            seen=data.get("seen", []),
            recs=data.get("recs", []),
            latest=data.get("latest"),
            intent=data.get("intent"),
        )

    @classmethod
    def from_json(cls, raw: bytes | None) -> Profile:
        """Decode the table's stored bytes (``None`` means a new user)."""
        return cls.from_dict(orjson.loads(raw) if raw else None)

    def to_json(self) -> bytes:
        """The stored bytes: the :meth:`to_dict` document as compact JSON."""
        return orjson.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The JSON document stored in the table and its changelog."""
        doc = {
            "recent": self.recent,
            "counts": self.counts,
            "purchased": self.purchased,
            "last_seen": self.last_seen,
            "seen": self.seen,
            "recs": self.recs,
            "latest": self.latest,
        }
        if self.intent is not None:
            doc["intent"] = self.intent
        return doc

    def history(self) -> list[tuple[str, str, str]]:
        """``(item_id, event_type, channel)`` per recent interaction, oldest first."""
        return [(r[0], r[1], r[3]) for r in self.recent]

    def purchased_items(self) -> frozenset[str]:
        """Items this user bought (within the ``max_purchased`` bound)."""
        return frozenset(str(p[0]) for p in self.purchased)

    def has_applied(self, event_id: str, ts: float) -> bool:
        """Whether the event with this id and time was already folded in (within the window)."""
        h = event_id_hash(event_id)
        i = bisect.bisect_left(self.seen, ts, key=_ts)
        while i < len(self.seen) and self.seen[i][0] == ts:
            if self.seen[i][1] == h:
                return True
            i += 1
        return False


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
    if profile.has_applied(event.event_id, event.ts):
        return False
    etype = event.event_type.value
    _insert_bounded(
        profile.recent,
        [event.item_id, etype, event.ts, event.channel.value],
        _recent_key,
        limits.history_len,
    )
    profile.counts[etype] = profile.counts.get(etype, 0) + 1
    if isinstance(event, PurchaseEvent):
        previous = next((p for p in profile.purchased if p[0] == event.item_id), None)
        if previous is None or previous[1] < event.ts:
            if previous is not None:
                profile.purchased.remove(previous)
            _insert_bounded(
                profile.purchased,
                [event.item_id, event.ts, event.order_id],
                _purchase_key,
                limits.max_purchased,
            )
    profile.last_seen = max(profile.last_seen, event.ts)
    _insert_bounded(
        profile.seen, [event.ts, event_id_hash(event.event_id)], _seen_key, limits.dedup_window
    )
    return True


def apply_search(profile: Profile, event: SearchEvent, limits: ProfileLimits) -> bool:
    """Fold a search into ``profile``: only its id (idempotency) and time.

    The query itself is not kept; its embedding is, once scored
    (:func:`remember_intent`).

    Returns:
        ``False`` if the event id was already applied (a replay), else ``True``.
    """
    if profile.has_applied(event.event_id, event.ts):
        return False
    profile.last_seen = max(profile.last_seen, event.ts)
    _insert_bounded(
        profile.seen, [event.ts, event_id_hash(event.event_id)], _seen_key, limits.dedup_window
    )
    return True


def remember_intent(profile: Profile, ts: float, packed: str, dim: int) -> None:
    """Keep the embedded query (of an encoder of ``dim`` dimensions) of a search at
    ``ts`` unless a later search's is there."""
    if profile.intent is None or float(profile.intent[0]) <= ts:
        profile.intent = [ts, packed, dim]


def remember_list(
    profile: Profile,
    ts: float,
    model_version: str,
    arm: str,
    items: list[str],
    limit: int,
    experiment: str = NO_EXPERIMENT,
) -> None:
    """Remember a recommendation list sent to this user; keep the latest ``limit``.

    Args:
        profile: the user's profile (changed in place).
        ts: event time of the event that triggered the list, Unix seconds.
        model_version: the model that scored it.
        arm: the experiment arm it was scored in.
        items: the recommended item ids, best first.
        limit: lists kept per profile (the oldest, by ``ts``, are dropped).
        experiment: id of the experiment it was scored under (:data:`NO_EXPERIMENT`: none).
    """
    if limit <= 0:
        return
    # A redelivered event (at-least-once) is scored again: the same list, once.
    if any(r[0] == ts and r[1:4] == [model_version, arm, items] for r in profile.recs):
        return
    _insert_bounded(profile.recs, [ts, model_version, arm, items, [], experiment], _rec_key, limit)


def remember_latest(profile: Profile, message: dict[str, Any]) -> None:
    """Keep ``message`` as the user's latest list unless a later event's list is there.

    Lists of one user can be delivered out of event-time order (events of three
    topics, redeliveries); the list of the latest triggering event wins.
    """
    current = profile.latest
    if current is None or float(current.get("event_ts", 0.0)) <= float(message["event_ts"]):
        profile.latest = message


def _rec_key(entry: list[Any]) -> float:
    return float(entry[0])


def find_hit(profile: Profile, event: Event, window_s: float) -> list[Any] | None:
    """The remembered list this interaction is a hit on, marked as counted; else ``None``.

    A hit is an interaction with an item of a list triggered earlier (event time) by
    at most ``window_s`` seconds whose hits of this event type were not counted yet.
    The newest such list is credited. Call it once per applied (not replayed) event.
    """
    etype = event.event_type.value
    entry: list[Any]
    for entry in reversed(profile.recs):
        age = event.ts - float(entry[0])
        if 0 < age <= window_s and event.item_id in entry[3] and etype not in entry[4]:
            entry[4].append(etype)
            return entry
    return None
