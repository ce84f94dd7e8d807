"""Event validation: every bad record gets a reason code, every good one a typed event."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import (
    BrowseEvent,
    ClickEvent,
    EventType,
    InvalidEvent,
    PurchaseEvent,
    ReasonCode,
    decode_event,
)

NOW = 1_795_000_000.0


def raw(**fields: object) -> bytes:
    base: dict[str, object] = {"event_id": "e1", "user_id": "u1", "item_id": "sku-1", "ts": NOW - 5}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


def test_valid_events_of_each_type() -> None:
    click = decode_event(EventType.CLICK, raw(channel="app"), b"u1", now=NOW)
    assert (
        isinstance(click, ClickEvent)
        and click.channel == "app"
        and click.event_type is EventType.CLICK
    )
    browse = decode_event(EventType.BROWSE, raw(dwell_ms=1200), now=NOW)
    assert isinstance(browse, BrowseEvent) and browse.dwell_ms == 1200 and browse.channel == "web"
    purchase = decode_event(EventType.PURCHASE, raw(order_id="o1", quantity=2, price=9.5), now=NOW)
    assert isinstance(purchase, PurchaseEvent) and purchase.quantity == 2 and purchase.price == 9.5


def test_rfc3339_timestamp_and_numeric_ids_are_accepted() -> None:
    ev = decode_event(
        EventType.CLICK, raw(ts="2026-11-17T10:00:00+00:00", item_id=123, user_id=7), now=NOW
    )
    assert isinstance(ev, ClickEvent)
    assert ev.item_id == "123" and ev.user_id == "7"
    assert ev.ts == pytest.approx(1_794_909_600.0)


@pytest.mark.parametrize(
    ("event_type", "payload", "key", "code"),
    [
        (EventType.CLICK, b"", None, ReasonCode.EMPTY),
        (EventType.CLICK, b"\xff\xfe{}", None, ReasonCode.INVALID_UTF8),
        (EventType.CLICK, b"{not json", None, ReasonCode.INVALID_JSON),
        (EventType.CLICK, b"[1, 2]", None, ReasonCode.NOT_AN_OBJECT),
        (EventType.CLICK, raw(item_id=None), None, ReasonCode.SCHEMA_VIOLATION),
        (EventType.CLICK, raw(channel="fax"), None, ReasonCode.SCHEMA_VIOLATION),
        (EventType.PURCHASE, raw(), None, ReasonCode.SCHEMA_VIOLATION),
        (EventType.PURCHASE, raw(order_id="o", price=-1), None, ReasonCode.SCHEMA_VIOLATION),
        (EventType.BROWSE, raw(dwell_ms="long"), None, ReasonCode.SCHEMA_VIOLATION),
        (EventType.CLICK, raw(ts="yesterday"), None, ReasonCode.INVALID_TIMESTAMP),
        (EventType.CLICK, raw(ts=NOW * 1000), None, ReasonCode.INVALID_TIMESTAMP),
        (EventType.CLICK, raw(ts=12), None, ReasonCode.INVALID_TIMESTAMP),
        (EventType.CLICK, raw(ts=True), None, ReasonCode.INVALID_TIMESTAMP),
        (EventType.CLICK, raw(type="purchase"), None, ReasonCode.TYPE_MISMATCH),
        (EventType.CLICK, raw(schema_version=2), None, ReasonCode.UNSUPPORTED_VERSION),
        (EventType.CLICK, raw(), b"someone-else", ReasonCode.KEY_MISMATCH),
        (EventType.CLICK, b"{" + b" " * 70_000 + b"}", None, ReasonCode.TOO_LARGE),
    ],
)
def test_invalid_records_get_a_reason_code(
    event_type: EventType, payload: bytes, key: bytes | None, code: ReasonCode
) -> None:
    result = decode_event(event_type, payload, key, now=NOW)
    assert isinstance(result, InvalidEvent)
    assert result.code is code
    assert result.reason


def test_millisecond_timestamps_get_a_hint() -> None:
    result = decode_event(EventType.CLICK, raw(ts=NOW * 1000), now=NOW)
    assert isinstance(result, InvalidEvent) and "milliseconds" in result.reason


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert isinstance(decode_event(EventType.CLICK, raw(new_field=[1]), now=NOW), ClickEvent)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = decode_event(EventType.CLICK, data, now=NOW)
    assert isinstance(result, InvalidEvent | ClickEvent)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "event_id",
                "user_id",
                "item_id",
                "ts",
                "channel",
                "order_id",
                "price",
                "quantity",
                "dwell_ms",
                "type",
            ]
        ),
        json_values,
    ),
    st.sampled_from(list(EventType)),
)
def test_arbitrary_objects_never_raise(payload: dict[str, object], event_type: EventType) -> None:
    result = decode_event(event_type, json.dumps(payload).encode(), now=NOW)
    if isinstance(result, InvalidEvent):
        assert result.code in ReasonCode
    else:
        assert result.event_type is event_type
