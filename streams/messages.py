"""Output message schemas: recommendation lists (v2) and dead-letter envelopes (v1).

Recommendation schema v2 only adds optional fields to v1 (a ``reason`` per item, a
``bundle`` per list); the v1 schema allows additional properties. A consumer that pins
``schema_version: 1`` (the released client before v2, the v1 JSON Schema) rejects a
list labelled 2, so the worker can label its lists 1
(``RECSTREAM_OUTPUT_SCHEMA_VERSION=1``, the new fields still present) until every
consumer reads 2. :class:`RecommendationMessage` reads 1 and 2 and ignores unknown
fields (forward compatible).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_DEAD_LETTER_VALUE_BYTES",
    "RECOMMENDATION_SCHEMA_VERSION",
    "Bundle",
    "BundleItem",
    "DeadLetter",
    "ErasureAudit",
    "ItemReason",
    "ReasonKind",
    "RecommendedItem",
    "RecommendationMessage",
    "dead_letter_bytes",
    "erasure_audit_bytes",
    "recommendation_bytes",
    "recommendation_dict",
]


#: The version the worker writes by default; readers accept 1 and 2.
RECOMMENDATION_SCHEMA_VERSION: Literal[2] = 2

#: Why an item is in a list (``models.scorer.ReasonCode``; the stream adds
#: ``bought_together``).
ReasonKind = Literal["similar_to_viewed", "bought_together", "matches_search", "popular"]


class ItemReason(BaseModel):
    """Why one item was recommended (schema v2)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    code: ReasonKind = Field(
        description="`similar_to_viewed` (like `item_id`, an item of the user's history), "
        "`bought_together` (often bought with `item_id`, the trigger item), "
        "`matches_search` (the user's latest search) or `popular` (the fallback list)."
    )
    item_id: str | None = Field(
        None, description="The history item or trigger item the reason names, if any."
    )


class RecommendedItem(BaseModel):
    """One recommended item and its model score (higher is better)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    item_id: str
    score: float
    reason: ItemReason | None = Field(None, description="Why it is here (v2; optional).")


class BundleItem(BaseModel):
    """An item frequently bought together with a bundle's anchor."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    item_id: str
    score: float = Field(description="Decayed co-purchase count with the anchor.")


class Bundle(BaseModel):
    """Items frequently bought together with the trigger item of a list (schema v2)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    anchor_item_id: str = Field(description="The trigger event's item.")
    items: list[BundleItem] = Field(
        description="Best first; none bought by or hidden from the user."
    )


class RecommendationMessage(BaseModel):
    """What the ``recommendations`` topic carries: one message per processed event.

    The key is the ``user_id``. After a worker crash a message can be sent again
    for the same event (at-least-once); de-duplicate on ``trigger_event_id``.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1, 2] = Field(
        RECOMMENDATION_SCHEMA_VERSION, description="2 (1: before reasons and bundles)."
    )
    user_id: str
    items: list[RecommendedItem] = Field(description="Best first, at most K.")
    model_version: str = Field(description="Version of the model that scored, or 'none'.")
    arm: str = Field(
        "control",
        description="Experiment arm of the user: 'control' (the current model; everyone "
        "outside an A/B experiment) or 'candidate'.",
    )
    strategy: str = Field(
        description="'sequential' (transformer over the history) or 'popular' (fallback)."
    )
    trigger_event_id: str = Field(description="event_id of the event that triggered this list.")
    trigger_event_type: str
    event_ts: float = Field(description="Event time of the trigger, Unix seconds.")
    produced_ts: float = Field(description="When the worker produced this list, Unix seconds.")
    bundle: Bundle | None = Field(
        None, description="Items often bought with the trigger item (v2; optional)."
    )


def recommendation_bytes(**fields: Any) -> bytes:
    """Serialise a :class:`RecommendationMessage` without model overhead (hot path).

    Takes the keyword arguments of :func:`recommendation_dict`.
    """
    return orjson.dumps(recommendation_dict(**fields))


def recommendation_dict(
    *,
    user_id: str,
    items: list[tuple[str, float]],
    model_version: str,
    strategy: str,
    trigger_event_id: str,
    trigger_event_type: str,
    event_ts: float,
    produced_ts: float,
    arm: str = "control",
    reasons: Sequence[tuple[str, str | None] | None] | None = None,
    bundle: tuple[str, Sequence[tuple[str, float]]] | None = None,
    schema_version: int = RECOMMENDATION_SCHEMA_VERSION,
) -> dict[str, Any]:
    """A :class:`RecommendationMessage` as a plain JSON document (hot path: no validation).

    Args:
        schema_version: the label, 1 or 2 (``RECSTREAM_OUTPUT_SCHEMA_VERSION``); the
            fields are the same for both.
        reasons: ``(code, item_id)`` per item, aligned with ``items`` (``None``: no
            reason for that item, or for the whole list).
        bundle: ``(anchor item, [(item, score), ...])``, or ``None``.
    """
    if reasons is None:
        listed = [{"item_id": i, "score": round(s, 6)} for i, s in items]
    else:
        listed = [
            {"item_id": i, "score": round(s, 6)}
            if r is None
            else {"item_id": i, "score": round(s, 6), "reason": {"code": r[0], "item_id": r[1]}}
            for (i, s), r in zip(items, reasons, strict=True)
        ]
    doc: dict[str, Any] = {
        "schema_version": schema_version,
        "user_id": user_id,
        "items": listed,
        "model_version": model_version,
        "arm": arm,
        "strategy": strategy,
        "trigger_event_id": trigger_event_id,
        "trigger_event_type": trigger_event_type,
        "event_ts": event_ts,
        "produced_ts": produced_ts,
    }
    if bundle is not None:
        doc["bundle"] = {
            "anchor_item_id": bundle[0],
            "items": [{"item_id": i, "score": round(s, 6)} for i, s in bundle[1]],
        }
    return doc


class ErasureAudit(BaseModel):
    """What the ``user-erasure-audit`` topic carries: one record per erasure done.

    The key is the pseudonym. No user id: the pseudonym is a keyed hash (the
    pseudonymous mode's key, else the logs' pseudonym key), so whoever holds the key
    can check that a given user was erased, and nobody else can list the users.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    pseudonym: str = Field(description="Keyed hash of the user id, `p:<32 hex>`.")
    erased_at: float = Field(description="When the worker erased the user, Unix seconds.")
    requested_at: float | None = Field(description="When the erasure was asked, Unix seconds.")
    profile_found: bool = Field(description="Whether a profile was there to delete.")


def erasure_audit_bytes(
    *, pseudonym: str, erased_at: float, requested_at: float | None, profile_found: bool
) -> bytes:
    """Serialise an :class:`ErasureAudit` record."""
    return orjson.dumps(
        {
            "schema_version": 1,
            "pseudonym": pseudonym,
            "erased_at": erased_at,
            "requested_at": requested_at,
            "profile_found": profile_found,
        }
    )


class DeadLetter(BaseModel):
    """What the dead-letter topic carries for every rejected input record.

    The key is the original record key. ``value_base64`` holds the original value
    byte for byte, so a fixed record can be re-produced to its topic unchanged.
    Values over :data:`MAX_DEAD_LETTER_VALUE_BYTES` are truncated (``value_truncated``,
    with the full ``value_size`` and ``value_sha256``) so the envelope always fits in
    a Kafka message; the full record stays in its source topic at ``offset``.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    reason_code: str = Field(description="Stable code, e.g. invalid_json, schema_violation.")
    reason: str = Field(description="Human-readable explanation.")
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = Field(description="Record timestamp of the original, ms.")
    key_base64: str | None
    value_base64: str | None
    failed_at: float = Field(description="When it was dead-lettered, Unix seconds.")
    value_size: int | None = Field(None, description="Size of the original value, bytes.")
    value_truncated: bool = Field(False, description="value_base64 holds only a prefix.")
    value_sha256: str | None = Field(None, description="SHA-256 of the full original value.")


#: Largest original value copied into an envelope (base64 grows it by a third;
#: Kafka's default message limit is 1 MiB).
MAX_DEAD_LETTER_VALUE_BYTES = 512 * 1024


def _b64(data: bytes | None, limit: int = MAX_DEAD_LETTER_VALUE_BYTES) -> str | None:
    return None if data is None else base64.b64encode(data[:limit]).decode("ascii")


def dead_letter_bytes(
    *,
    reason_code: str,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    failed_at: float,
) -> bytes:
    """Serialise a :class:`DeadLetter` envelope."""
    return orjson.dumps(
        {
            "schema_version": 1,
            "reason_code": reason_code,
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp_ms": timestamp_ms,
            "key_base64": _b64(key),
            "value_base64": _b64(value),
            "failed_at": failed_at,
            "value_size": None if value is None else len(value),
            "value_truncated": value is not None and len(value) > MAX_DEAD_LETTER_VALUE_BYTES,
            "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        }
    )
