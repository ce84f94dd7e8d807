"""Output message schemas: recommendation lists and dead-letter envelopes (v1)."""

from __future__ import annotations

import base64
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DeadLetter",
    "RecommendedItem",
    "RecommendationMessage",
    "dead_letter_bytes",
    "recommendation_bytes",
]


class RecommendedItem(BaseModel):
    """One recommended item and its model score (higher is better)."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    score: float


class RecommendationMessage(BaseModel):
    """What the ``recommendations`` topic carries: one message per processed event.

    The key is the ``user_id``. After a worker crash a message can be sent again
    for the same event (at-least-once); de-duplicate on ``trigger_event_id``.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    user_id: str
    items: list[RecommendedItem] = Field(description="Best first, at most K.")
    model_version: str = Field(description="Version of the model that scored, or 'none'.")
    strategy: str = Field(
        description="'sequential' (transformer over the history) or 'popular' (fallback)."
    )
    trigger_event_id: str = Field(description="event_id of the event that triggered this list.")
    trigger_event_type: str
    event_ts: float = Field(description="Event time of the trigger, Unix seconds.")
    produced_ts: float = Field(description="When the worker produced this list, Unix seconds.")


def recommendation_bytes(
    *,
    user_id: str,
    items: list[tuple[str, float]],
    model_version: str,
    strategy: str,
    trigger_event_id: str,
    trigger_event_type: str,
    event_ts: float,
    produced_ts: float,
) -> bytes:
    """Serialise a :class:`RecommendationMessage` without model overhead (hot path)."""
    return orjson.dumps(
        {
            "schema_version": 1,
            "user_id": user_id,
            "items": [{"item_id": i, "score": round(float(s), 6)} for i, s in items],
            "model_version": model_version,
            "strategy": strategy,
            "trigger_event_id": trigger_event_id,
            "trigger_event_type": trigger_event_type,
            "event_ts": event_ts,
            "produced_ts": produced_ts,
        }
    )


class DeadLetter(BaseModel):
    """What the dead-letter topic carries for every rejected input record.

    The key is the original record key. ``value_base64`` holds the original value
    byte for byte, so a fixed record can be re-produced to its topic unchanged.
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


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


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
        }
    )
