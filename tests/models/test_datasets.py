"""Readers for event logs, sequence files and session files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.contract import parse_timestamp
from models.datasets import (
    DataFormatError,
    read_event_log,
    read_item_attributes,
    read_item_texts,
    read_prefix_targets,
    read_sequences,
    read_sessions,
)

#: 2026-11-23T12:00:00Z, and a "now" one day later (the worker rejects ts before 2000).
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
NOW = T0 + 86_400


def test_parse_timestamp_numbers_and_rfc3339() -> None:
    moment = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
    assert parse_timestamp(1795000100) == 1795000100.0
    assert parse_timestamp(1795000100.5) == 1795000100.5
    assert parse_timestamp("2026-11-23T12:00:00Z") == moment
    assert parse_timestamp("2026-11-23T13:00:00+01:00") == moment
    # The live worker's contract: a string is RFC 3339 with an offset or uppercase Z.
    for bad in (
        "2026-11-23T12:00:00",
        True,
        None,
        "yesterday",
        "1795000100.5",
        "2026-11-23T12:00:00z",
    ):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_event_log_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        {"event_id": "1", "user_id": "u1", "item_id": "a", "ts": T0 + 10, "type": "click"},
        {
            "event_id": "2",
            "user_id": "u1",
            "item_id": "b",
            "ts": "2026-11-23T12:00:20Z",
            "event_type": "purchase",
            "channel": "app",
            "order_id": "o",
            "price": 3.5,
        },
        {
            "event_id": "3",
            "user_id": "u2",
            "item_id": "a",
            "ts": T0 + 30,
            "type": "browse",
            "channel": "store",
            "dwell_ms": 5,
        },
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    events = read_event_log(path, now=NOW)
    assert [(e.user_id, e.item_id, e.event_type, e.ts, e.channel) for e in events] == [
        ("u1", "a", "click", T0 + 10.0, "web"),
        ("u1", "b", "purchase", T0 + 20.0, "app"),
        ("u2", "a", "browse", T0 + 30.0, "store"),
    ]


def test_event_log_csv(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,event_type,ts,channel\n"
        f"u1,a,click,{T0:.0f},web\nu1,b,browse,2026-11-23T12:00:00Z,\n"
    )
    events = read_event_log(path, now=NOW)
    assert [e.item_id for e in events] == ["a", "b"]
    assert [e.ts for e in events] == [T0, T0]
    assert events[1].channel == "web"
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\nu,a\n")
    with pytest.raises(DataFormatError, match="header"):
        read_event_log(bad)


def test_event_log_invalid_records(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        f'{{"user_id": "u", "item_id": "a", "ts": {T0 + 1}, "type": "click"}}\n'
        "not json\n"
        f'{{"user_id": "u", "item_id": "b", "ts": {T0 + 2}, "type": "refund"}}\n'
        f'{{"user_id": "u", "item_id": "c", "ts": {T0 + 3}}}\n'
        f'{{"user_id": "u", "item_id": "d", "ts": {T0 + 4}, "type": "browse"}}\n'
        '{"user_id": "u", "item_id": "e", "ts": 5, "type": "browse"}\n'
    )
    with pytest.raises(DataFormatError, match=r"events.jsonl:2"):
        read_event_log(path, now=NOW)
    assert [e.item_id for e in read_event_log(path, skip_invalid=True, now=NOW)] == ["a", "d"]


def test_sequences_sessions_and_prefix_targets(tmp_path: Path) -> None:
    seq = tmp_path / "seq.txt"
    seq.write_text("1 5 6 7\n2 8 9\n\n")
    assert read_sequences(seq) == {"1": ["5", "6", "7"], "2": ["8", "9"]}
    seq.write_text("1 5\n1 6\n")
    with pytest.raises(DataFormatError, match="twice"):
        read_sequences(seq)
    sessions = tmp_path / "sessions.txt"
    sessions.write_text("1 2\n3 4 5\n")
    assert read_sessions(sessions) == [["1", "2"], ["3", "4", "5"]]
    tsv = tmp_path / "test.tsv"
    tsv.write_text("1 2 3\t4\n7\t8\n")
    cases = read_prefix_targets(tsv)
    assert [(c.prefix, c.target) for c in cases] == [(("1", "2", "3"), "4"), (("7",), "8")]
    tsv.write_text("1 2 3 4\n")
    with pytest.raises(DataFormatError):
        read_prefix_targets(tsv)
    attrs = tmp_path / "attrs.json"
    attrs.write_text('{"4": [1, 2], "5": []}')
    assert read_item_attributes(attrs) == {"4": ["1", "2"], "5": []}


def test_item_texts_both_forms(tmp_path: Path) -> None:
    obj = tmp_path / "texts.json"
    obj.write_text('{"a": "red lipstick", "b": "blue shampoo"}')
    assert read_item_texts(obj) == {"a": "red lipstick", "b": "blue shampoo"}
    lines = tmp_path / "texts.jsonl"
    lines.write_text('{"item_id": "a", "text": "red"}\n{"item_id": 7, "text": "blue"}\n')
    assert read_item_texts(lines) == {"a": "red", "7": "blue"}
    lines.write_text('{"item_id": "a"}\n')
    with pytest.raises(DataFormatError):
        read_item_texts(lines)
