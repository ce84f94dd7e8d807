"""Input event schemas (v1) and the one place where raw Kafka records are validated.

Every input record is decoded by :func:`decode_event` (interactions: click, browse,
purchase) or :func:`decode_search` (a search, the fourth input: no item, a query).
Neither raises on bad input:
it returns either a valid event or an :class:`InvalidEvent` carrying a stable
reason code and a human-readable reason, which the agent routes to the dead-letter
topic together with the original bytes.

Schema evolution rule: a new field is only ever added with a default, so an old
producer keeps validating; unknown fields are ignored, so a newer producer does
not land in the dead-letter topic.
"""

from __future__ import annotations

import math
import time
from enum import StrEnum
from typing import Annotated, Literal, TypeVar, cast

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from models.contract import (
    MAX_FUTURE_SKEW_S,
    MIN_TS,
    SEARCH_TYPE,
    Channel,
    EventType,
    parse_timestamp,
    timestamp_range_error,
)

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_FUTURE_SKEW_S",
    "MAX_QUERY_CHARS",
    "MAX_SEARCH_RESULTS",
    "MIN_TS",
    "BrowseEvent",
    "Channel",
    "ClickEvent",
    "Event",
    "EventType",
    "InvalidEvent",
    "PurchaseEvent",
    "ReasonCode",
    "SearchEvent",
    "decode_event",
    "decode_search",
]

#: Records larger than this are rejected before parsing (a click is ~200 bytes).
MAX_EVENT_BYTES = 64 * 1024

# EventType, Channel, MIN_TS, MAX_FUTURE_SKEW_S and the ts parser are the shared event
# contract in models.contract (re-exported here), so the training-data reader accepts
# exactly the events this decoder accepts.


class ReasonCode(StrEnum):
    """Stable, machine-readable reasons an input record was dead-lettered."""

    TOO_LARGE = "too_large"
    EMPTY = "empty"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    SCHEMA_VIOLATION = "schema_violation"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TYPE_MISMATCH = "type_mismatch"
    UNSUPPORTED_VERSION = "unsupported_version"
    KEY_MISMATCH = "key_mismatch"
    UNKNOWN_TOPIC = "unknown_topic"
    PROCESSING_ERROR = "processing_error"


Id = Annotated[str, Field(min_length=1, max_length=256)]

#: An event time: Unix epoch seconds, or an RFC 3339 string parsed to them.
EventTime = Annotated[
    float,
    BeforeValidator(parse_timestamp),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]}),
]


class _EventBase(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="ignore", coerce_numbers_to_str=True, str_strip_whitespace=True
    )

    schema_version: Literal[1] = Field(1, description="Event schema version.")
    event_id: Id = Field(description="Globally unique id; replays with the same id apply once.")
    user_id: Id = Field(description="Shopper id; must equal the Kafka record key.")
    item_id: Id = Field(description="Catalog item id (the shop's own SKU or product id).")
    ts: EventTime = Field(
        description="Event time: Unix epoch seconds (number) or an RFC 3339 string."
    )
    channel: Channel = Field(Channel.WEB, description="web, app or store.")

    @property
    def event_type(self) -> EventType:
        """The interaction kind of this event."""
        raise NotImplementedError


class ClickEvent(_EventBase):
    """A shopper clicked an item (opened its page, added it to the cart, ...)."""

    type: Literal["click"] = Field("click", description="Optional; must match the topic.")

    @property
    def event_type(self) -> EventType:
        """Always :attr:`EventType.CLICK`."""
        return EventType.CLICK


class BrowseEvent(_EventBase):
    """An item was shown to and looked at by the shopper."""

    type: Literal["browse"] = Field("browse", description="Optional; must match the topic.")
    dwell_ms: int | None = Field(
        None, ge=0, le=24 * 3600 * 1000, description="Time spent on the item, milliseconds."
    )

    @property
    def event_type(self) -> EventType:
        """Always :attr:`EventType.BROWSE`."""
        return EventType.BROWSE


class PurchaseEvent(_EventBase):
    """The shopper bought an item; purchased items are never recommended back."""

    type: Literal["purchase"] = Field("purchase", description="Optional; must match the topic.")
    order_id: Id = Field(description="Order the line belongs to.")
    quantity: int = Field(1, ge=1, le=1_000_000, description="Units bought.")
    price: float = Field(ge=0, le=1e9, description="Unit price in the shop's currency.")

    @field_validator("price")
    @classmethod
    def _finite_price(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("price must be finite")
        return value

    @property
    def event_type(self) -> EventType:
        """Always :attr:`EventType.PURCHASE`."""
        return EventType.PURCHASE


Event = ClickEvent | BrowseEvent | PurchaseEvent

#: Longest query accepted (after stripping whitespace); most are a few words.
MAX_QUERY_CHARS = 512
#: Most result item ids a search event may list.
MAX_SEARCH_RESULTS = 100


class SearchEvent(BaseModel):
    """The shopper searched the shop: the query is their intent, in their own words.

    No ``item_id``: a search is no interaction, so it never enters the history the
    model reads. The worker embeds the query (when a text encoder is configured) and
    keeps only the vector, never the text.
    """

    model_config = ConfigDict(
        frozen=True, extra="ignore", coerce_numbers_to_str=True, str_strip_whitespace=True
    )

    schema_version: Literal[1] = Field(1, description="Event schema version.")
    type: Literal["search"] = Field("search", description="Optional; must match the topic.")
    event_id: Id = Field(description="Globally unique id; replays with the same id apply once.")
    user_id: Id = Field(description="Shopper id; must equal the Kafka record key.")
    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description=f"What the shopper typed (1..{MAX_QUERY_CHARS} characters after trimming).",
    )
    results: list[Id] | None = Field(
        None,
        max_length=MAX_SEARCH_RESULTS,
        description=f"Item ids the shop showed for the query, best first (at most "
        f"{MAX_SEARCH_RESULTS}); optional.",
    )
    ts: EventTime = Field(
        description="Event time: Unix epoch seconds (number) or an RFC 3339 string."
    )
    channel: Channel = Field(Channel.WEB, description="web, app or store.")


_MODELS: dict[EventType, type[ClickEvent] | type[BrowseEvent] | type[PurchaseEvent]] = {
    EventType.CLICK: ClickEvent,
    EventType.BROWSE: BrowseEvent,
    EventType.PURCHASE: PurchaseEvent,
}


_M = TypeVar("_M", bound=ClickEvent | BrowseEvent | PurchaseEvent | SearchEvent)


class InvalidEvent(BaseModel):
    """Why a record could not be accepted."""

    model_config = ConfigDict(frozen=True)

    code: ReasonCode
    reason: str


def _first_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode_event(
    event_type: EventType,
    raw: bytes | None,
    key: bytes | None = None,
    *,
    now: float | None = None,
) -> Event | InvalidEvent:
    """Validate one input record.

    Args:
        event_type: the type implied by the topic the record came from.
        raw: the record value exactly as consumed.
        key: the record key; when present it must equal ``user_id`` so that
            events and profiles of one user share a partition.
        now: current Unix time, for the future-skew check (defaults to the clock).

    Returns:
        The typed event, or an :class:`InvalidEvent` with a reason code.
    """
    return _decode(_MODELS[event_type], event_type.value, raw, key, now)


def decode_search(
    raw: bytes | None, key: bytes | None = None, *, now: float | None = None
) -> SearchEvent | InvalidEvent:
    """Validate one record of the searches topic; the rules of :func:`decode_event`."""
    return _decode(SearchEvent, SEARCH_TYPE, raw, key, now)


def _decode(
    model: type[_M], type_name: str, raw: bytes | None, key: bytes | None, now: float | None
) -> _M | InvalidEvent:
    if not raw:
        return InvalidEvent(code=ReasonCode.EMPTY, reason="record has no value")
    if len(raw) > MAX_EVENT_BYTES:
        return InvalidEvent(
            code=ReasonCode.TOO_LARGE,
            reason=f"record is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}",
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InvalidEvent(
            code=ReasonCode.INVALID_UTF8, reason=f"not UTF-8: {exc.reason} at byte {exc.start}"
        )
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return InvalidEvent(code=ReasonCode.INVALID_JSON, reason=f"not JSON: {exc}")
    if not isinstance(payload, dict):
        return InvalidEvent(
            code=ReasonCode.NOT_AN_OBJECT,
            reason=f"expected a JSON object, got {type(payload).__name__}",
        )
    version = payload.get("schema_version", 1)
    if version != 1:
        return InvalidEvent(
            code=ReasonCode.UNSUPPORTED_VERSION,
            reason=f"schema_version {version!r} is not supported (this worker reads 1)",
        )
    declared = payload.get("type", payload.get("event_type"))
    if declared is not None and declared != type_name:
        return InvalidEvent(
            code=ReasonCode.TYPE_MISMATCH,
            reason=f"event declares type {declared!r} but arrived on the {type_name} topic",
        )
    payload.pop("event_type", None)
    try:
        event = cast(_M, model.model_validate(payload))  # Self of a TypeVar-bound class
    except ValidationError as exc:
        code = ReasonCode.SCHEMA_VIOLATION
        if any(err["loc"][:1] == ("ts",) for err in exc.errors()):
            code = ReasonCode.INVALID_TIMESTAMP
        return InvalidEvent(code=code, reason=_first_errors(exc))
    out_of_range = timestamp_range_error(event.ts, time.time() if now is None else now)
    if out_of_range is not None:
        return InvalidEvent(code=ReasonCode.INVALID_TIMESTAMP, reason=out_of_range)
    if key is not None and key != event.user_id.encode():
        return InvalidEvent(
            code=ReasonCode.KEY_MISMATCH,
            reason="record key differs from user_id; key events by user_id so that "
            "a user's events and profile share one partition",
        )
    return event
