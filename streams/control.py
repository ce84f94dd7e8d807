"""Control messages: erasure requests and profile expiries (the ``user-erasure`` topic).

Two kinds of record share the topic, both co-partitioned with the user's events:

* an **erasure request** from a service or ``recstream forget USER``: key = the user id
  (so it lands in the partition of the user's events), value
  :class:`ErasureRequest`;
* a **profile expiry** that a worker's TTL sweep sends to the partition it found an
  expired profile in: key = the profile's table key, value :class:`ProfileExpiry`.

A record that is neither is dead-lettered with a reason code, like a bad event.
"""

from __future__ import annotations

from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.events import InvalidEvent, ReasonCode

__all__ = [
    "MAX_CONTROL_BYTES",
    "ErasureRequest",
    "ProfileExpiry",
    "decode_control",
    "erasure_request_bytes",
]

#: Control records are small; anything bigger is not one.
MAX_CONTROL_BYTES = 16 * 1024


class ErasureRequest(BaseModel):
    """Forget a user: profile, latest recommendations; the erasure is audited."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    user_id: str = Field(min_length=1, max_length=256, description="The user to forget.")
    requested_at: float | None = Field(None, description="When it was asked, Unix seconds.")


class ProfileExpiry(BaseModel):
    """Delete an inactive profile (or an old erasure marker) if it is still expired."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    expire: str = Field(min_length=1, description="The table key to delete.")
    before: float = Field(description="Delete only if its last event is older (Unix seconds).")


def erasure_request_bytes(user_id: str, requested_at: float) -> bytes:
    """The value of an erasure request (key it by ``user_id``)."""
    return orjson.dumps({"schema_version": 1, "user_id": user_id, "requested_at": requested_at})


def decode_control(
    raw: bytes | None, key: bytes | None
) -> ErasureRequest | ProfileExpiry | InvalidEvent:
    """Validate a record of the ``user-erasure`` topic.

    The key is required and must be the request's ``user_id`` (an erasure) or the
    table key it expires (an expiry), so the record is in that user's partition.
    """
    if not raw:
        return InvalidEvent(code=ReasonCode.EMPTY, reason="control record has no value")
    if len(raw) > MAX_CONTROL_BYTES:
        return InvalidEvent(code=ReasonCode.TOO_LARGE, reason=f"control record is {len(raw)} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return InvalidEvent(code=ReasonCode.INVALID_JSON, reason="control record is not JSON")
    if not isinstance(doc, dict):
        return InvalidEvent(code=ReasonCode.NOT_AN_OBJECT, reason="control record is no object")
    try:
        request: ErasureRequest | ProfileExpiry = (
            ProfileExpiry.model_validate(doc)
            if "expire" in doc
            else ErasureRequest.model_validate(doc)
        )
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "value" for e in exc.errors())
        return InvalidEvent(code=ReasonCode.SCHEMA_VIOLATION, reason=f"invalid fields: {fields}")
    target = request.expire if isinstance(request, ProfileExpiry) else request.user_id
    if key is None or key != target.encode():
        # The reason never quotes the id: dead-letter reasons are logged.
        return InvalidEvent(
            code=ReasonCode.KEY_MISMATCH, reason="the key must be the user the record is about"
        )
    return request
