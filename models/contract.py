"""The event contract shared by the live worker and the training-data readers (stdlib only).

One definition of what an input event may contain, so that training data can never
hold an event the live worker would dead-letter:

* :class:`EventType` and :class:`Channel`: the event types and sales channels. Their
  member order is the model vocabulary order (``models.interactions.EVENT_TYPES`` and
  ``CHANNELS`` are derived from them), so append new members, never reorder.
* :func:`parse_timestamp`: the one ``ts`` parser. A JSON number is Unix seconds; a
  string must be an RFC 3339 / ISO 8601 timestamp with an explicit UTC offset or an
  uppercase ``Z`` (a numeric string such as ``"1700000000"``, a lowercase ``z`` and a
  naive time are rejected); booleans and every other type are rejected.
* :func:`timestamp_range_error` / :func:`check_timestamp`: the plausibility range,
  ``[2000-01-01T00:00:00Z, now + 1 day]``, which catches milliseconds and zeros.
* :data:`SEARCH_TYPE`: the type of a search event. A search is no interaction (it
  has no item), so it is no :class:`EventType` and no model vocabulary entry: the
  worker keeps only its embedded intent, and the event-log readers skip it.

``streams.events`` (the worker's decoder) and ``models.datasets`` (the event-log
reader) both use these; their error messages are the reason texts of the worker's
``invalid_timestamp`` dead letters.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from enum import StrEnum

__all__ = [
    "MAX_FUTURE_SKEW_S",
    "MIN_TS",
    "SEARCH_TYPE",
    "Channel",
    "EventType",
    "check_timestamp",
    "parse_timestamp",
    "timestamp_range_error",
]

#: Earliest accepted event time: 2000-01-01T00:00:00Z, in Unix seconds.
MIN_TS = 946_684_800.0
#: Accepted clock skew into the future, in seconds.
MAX_FUTURE_SKEW_S = 24 * 3600.0

#: ``type`` of a search event (its own topic; never part of a training history).
SEARCH_TYPE = "search"

_NOT_A_TIMESTAMP = "ts must be a number or an RFC 3339 string"


class EventType(StrEnum):
    """Kind of shopper interaction; each has its own input topic."""

    CLICK = "click"
    BROWSE = "browse"
    PURCHASE = "purchase"


class Channel(StrEnum):
    """Where the interaction happened."""

    WEB = "web"
    APP = "app"
    STORE = "store"


def parse_timestamp(value: object) -> float:
    """Convert an event's ``ts`` to Unix seconds, without the range check.

    Args:
        value: A number (Unix seconds) or an RFC 3339 string with a UTC offset or ``Z``.

    Returns:
        Unix seconds (float; may be out of range, see :func:`timestamp_range_error`).

    Raises:
        ValueError: For a boolean, a non-number non-string, a string that is not an
            ISO timestamp (numeric strings included), or a string without an offset.
    """
    if isinstance(value, bool):
        raise ValueError(_NOT_A_TIMESTAMP)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("ts is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            raise ValueError("ts string needs a UTC offset, e.g. 2026-11-23T14:00:00Z")
        return parsed.timestamp()
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range (json.loads keeps big ints)
            return math.inf
    raise ValueError(_NOT_A_TIMESTAMP)


def timestamp_range_error(ts: float, now: float) -> str | None:
    """Say why a parsed ``ts`` is implausible, or return None when it is in range.

    Args:
        ts: Unix seconds, as returned by :func:`parse_timestamp`.
        now: Current Unix time.

    Returns:
        None when ``ts`` is finite and in ``[2000-01-01, now + 1 day]``, else the reason
        (with a hint when the value looks like milliseconds).
    """
    if MIN_TS <= ts <= now + MAX_FUTURE_SKEW_S and math.isfinite(ts):
        return None
    hint = " (milliseconds? send seconds)" if ts > now * 100 else ""
    return f"ts {ts!r} is outside [2000-01-01, now + 1 day]{hint}"


def check_timestamp(value: object, *, now: float | None = None) -> float:
    """Parse ``ts`` and apply the range check: exactly what the live worker accepts.

    Args:
        value: The raw ``ts`` value of an event.
        now: Current Unix time (defaults to the clock).

    Returns:
        Unix seconds.

    Raises:
        ValueError: With the worker's reason text when the worker would dead-letter it.
    """
    ts = parse_timestamp(value)
    problem = timestamp_range_error(ts, time.time() if now is None else now)
    if problem is not None:
        raise ValueError(problem)
    return ts
