"""Core interaction vocabulary shared by training, export, scoring and the stream code.

This module is deliberately dependency-free (stdlib only) so that every layer,
including the torch-free serving path, can import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from models.contract import Channel, EventType

__all__ = ["CHANNELS", "EVENT_TYPES", "HistoryItem", "Interaction", "fingerprint_interactions"]

#: Event types the model understands, in vocabulary order. Model index = position + 1
#: because index 0 is reserved for padding. Defined once, by `models.contract.EventType`.
EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)

#: Sales channels the model understands, in vocabulary order (index = position + 1, 0 = pad).
#: Defined once, by `models.contract.Channel`.
CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)

#: One step of a user's history as the scorer sees it: (item_id, event_type, channel).
HistoryItem = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item interaction, the unit the recommender trains on.

    Attributes:
        user_id: External user identifier.
        item_id: External item identifier (SKU).
        event_type: One of `EVENT_TYPES`.
        ts: Event time as unix seconds (UTC).
        channel: One of `CHANNELS`; defaults to "web".
    """

    user_id: str
    item_id: str
    event_type: str
    ts: float  # unix seconds (UTC)
    channel: str = "web"


def fingerprint_interactions(interactions: Iterable[Interaction]) -> str:
    """Return the hex sha256 of the interactions, in the order given.

    The digest covers every field (`ts` via `repr`, which round-trips floats exactly).
    It is order-sensitive on purpose: training breaks timestamp ties by input order, so
    two orderings of the same multiset can train different models.

    Args:
        interactions: The interactions to fingerprint.

    Returns:
        64 lowercase hex characters.
    """
    digest = hashlib.sha256()
    for it in interactions:
        # Unit/record separators cannot appear in sane ids, so fields cannot run together.
        digest.update(
            f"{it.user_id}\x1f{it.item_id}\x1f{it.event_type}\x1f{it.ts!r}\x1f{it.channel}\x1e".encode()
        )
    return digest.hexdigest()
