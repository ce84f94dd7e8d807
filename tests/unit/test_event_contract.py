"""One event contract: the live worker and the training-data reader accept the same events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

import models.contract
import streams.events
from models.contract import check_timestamp
from models.datasets import DataFormatError, read_event_log
from models.interactions import CHANNELS, EVENT_TYPES
from streams.events import ClickEvent, EventType, InvalidEvent, ReasonCode, decode_event

NOW = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
T = datetime(2026, 11, 23, 14, 0, tzinfo=UTC).timestamp()  # 2026-11-23T14:00:00Z

# (ts as sent, Unix seconds when the contract accepts it, else None)
TIMESTAMPS: list[tuple[object, float | None]] = [
    ("1700000000", None),  # numeric string: a number must be sent as a JSON number
    ("1700000000.5", None),
    ("2026-11-23T14:00:00z", None),  # lowercase z
    ("2026-11-23T14:00:00Z", T),
    ("2026-11-23T15:00:00+01:00", T),
    ("2026-11-23T14:00:00.250Z", T + 0.25),
    ("2026-11-23T14:00:00", None),  # naive: no UTC offset
    ("2026-11-23", None),  # a date is naive too
    (" 2026-11-23T14:00:00Z", None),  # not stripped
    ("yesterday", None),
    ("", None),
    (1700000000, 1700000000.0),
    (1700000000.5, 1700000000.5),
    (True, None),
    (False, None),
    (None, None),
    ([1700000000], None),
    ({"seconds": 1700000000}, None),
    (1700000000000, None),  # milliseconds
    (T * 1000, None),
    (0, None),
    (12, None),
    (946_684_800, 946_684_800.0),  # 2000-01-01T00:00:00Z, the earliest accepted
    (946_684_799, None),
    (NOW + 3600, NOW + 3600),  # within the 1-day clock skew
    (NOW + 2 * 86_400, None),  # too far in the future
    ("2000-01-01T00:00:00+00:00", 946_684_800.0),
    ("1999-12-31T23:59:59Z", None),
]


def _record(ts: object) -> bytes:
    return orjson.dumps(
        {"event_id": "e1", "user_id": "u1", "item_id": "sku-1", "ts": ts, "type": "click"}
    )


def _read_one(tmp_path: Path, line: bytes) -> float | DataFormatError:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line + b"\n")
    try:
        (interaction,) = read_event_log(path, now=NOW)
    except DataFormatError as exc:
        return exc
    return interaction.ts


@pytest.mark.parametrize(("ts", "expected"), TIMESTAMPS, ids=[repr(t) for t, _ in TIMESTAMPS])
def test_worker_and_dataset_reader_agree_on_timestamps(
    tmp_path: Path, ts: object, expected: float | None
) -> None:
    line = _record(ts)
    worker = decode_event(EventType.CLICK, line, b"u1", now=NOW)
    reader = _read_one(tmp_path, line)
    if expected is None:
        assert isinstance(worker, InvalidEvent), worker
        assert worker.code is ReasonCode.INVALID_TIMESTAMP
        assert isinstance(reader, DataFormatError), reader
        with pytest.raises(ValueError) as contract:
            check_timestamp(ts, now=NOW)
        # Both report the shared contract's reason.
        assert str(contract.value) in worker.reason
        assert str(contract.value) in str(reader)
    else:
        assert isinstance(worker, ClickEvent), worker
        assert worker.ts == pytest.approx(expected)
        assert reader == worker.ts
        assert check_timestamp(ts, now=NOW) == worker.ts


def test_csv_cells_follow_the_same_contract(tmp_path: Path) -> None:
    """CSV cells are untyped: a JSON number literal is that number, other text is RFC 3339."""
    path = tmp_path / "events.csv"
    rows = [
        "1700000000",
        "1700000000.5",
        "2026-11-23T14:00:00Z",
        "2026-11-23T14:00:00z",
        "2026-11-23T14:00:00",
        "1700000000000",
        "1_700_000_000",
        " 1700000000",
        "nan",
    ]
    path.write_text(
        "user_id,item_id,event_type,ts\n"
        + "".join(f"u1,item-{i},click,{ts}\n" for i, ts in enumerate(rows))
    )
    got = read_event_log(path, skip_invalid=True, now=NOW)
    assert [(e.item_id, e.ts) for e in got] == [
        ("item-0", 1700000000.0),
        ("item-1", 1700000000.5),
        ("item-2", T),
    ]
    with pytest.raises(DataFormatError, match=r"events.csv:5: ts is not an RFC 3339 timestamp"):
        read_event_log(path, now=NOW)  # row 4 (file line 5) has a lowercase z


def test_worker_reason_texts_are_unchanged() -> None:
    """The dead-letter reason texts are part of the worker's interface."""
    lower_z = decode_event(EventType.CLICK, _record("2026-11-23T14:00:00z"), now=NOW)
    assert isinstance(lower_z, InvalidEvent)
    assert lower_z.reason == "ts: Value error, ts is not an RFC 3339 timestamp"
    naive = decode_event(EventType.CLICK, _record("2026-11-23T14:00:00"), now=NOW)
    assert isinstance(naive, InvalidEvent)
    assert naive.reason == (
        "ts: Value error, ts string needs a UTC offset, e.g. 2026-11-23T14:00:00Z"
    )
    boolean = decode_event(EventType.CLICK, _record(True), now=NOW)
    assert isinstance(boolean, InvalidEvent)
    assert boolean.reason == "ts: Value error, ts must be a number or an RFC 3339 string"
    millis = decode_event(EventType.CLICK, _record(T * 1000), now=NOW)
    assert isinstance(millis, InvalidEvent) and millis.code is ReasonCode.INVALID_TIMESTAMP
    assert millis.reason == (
        f"ts {T * 1000!r} is outside [2000-01-01, now + 1 day] (milliseconds? send seconds)"
    )
    early = decode_event(EventType.CLICK, _record(12), now=NOW)
    assert isinstance(early, InvalidEvent)
    assert early.reason == "ts 12.0 is outside [2000-01-01, now + 1 day]"


def test_event_types_and_channels_are_defined_once() -> None:
    assert streams.events.EventType is models.contract.EventType
    assert streams.events.Channel is models.contract.Channel
    assert streams.events.MIN_TS == models.contract.MIN_TS
    assert streams.events.MAX_FUTURE_SKEW_S == models.contract.MAX_FUTURE_SKEW_S
    assert ClickEvent.model_fields["channel"].annotation is models.contract.Channel
    # The model vocabulary is derived from the enums, in member order.
    assert EVENT_TYPES == tuple(models.contract.EventType) == ("click", "browse", "purchase")
    assert CHANNELS == tuple(models.contract.Channel) == ("web", "app", "store")
