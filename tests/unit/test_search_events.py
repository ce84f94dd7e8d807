"""Search events: the fourth input, validated like the others, and never an interaction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.datasets import read_event_log
from streams.events import (
    MAX_QUERY_CHARS,
    MAX_SEARCH_RESULTS,
    InvalidEvent,
    ReasonCode,
    SearchEvent,
    decode_search,
)
from streams.intent import decayed_weight, make_intent, pack, stored_vector, unpack
from streams.profile import Profile, ProfileLimits, apply_search, remember_intent

NOW = 1_795_100_000.0


def search(**fields: object) -> bytes:
    doc: dict[str, object] = {"event_id": "s1", "user_id": "u1", "query": "red lipstick", "ts": NOW}
    doc.update(fields)
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


def test_a_valid_search_decodes_with_query_results_and_no_item() -> None:
    event = decode_search(search(results=["sku-1", 7], item_id="ignored"), b"u1", now=NOW)
    assert isinstance(event, SearchEvent)
    assert event.query == "red lipstick" and event.results == ["sku-1", "7"]
    assert event.type == "search" and not hasattr(event, "item_id")


@pytest.mark.parametrize(
    ("raw", "key", "code", "says"),
    [
        (search(query="   "), b"u1", ReasonCode.SCHEMA_VIOLATION, "query"),
        (search(query="x" * (MAX_QUERY_CHARS + 1)), b"u1", ReasonCode.SCHEMA_VIOLATION, "query"),
        (search(query=None), b"u1", ReasonCode.SCHEMA_VIOLATION, "query"),
        (search(query=["a"]), b"u1", ReasonCode.SCHEMA_VIOLATION, "query"),
        (
            search(results=[f"i{n}" for n in range(MAX_SEARCH_RESULTS + 1)]),
            b"u1",
            ReasonCode.SCHEMA_VIOLATION,
            "results",
        ),
        (search(results=[""]), b"u1", ReasonCode.SCHEMA_VIOLATION, "results"),
        (search(type="click"), b"u1", ReasonCode.TYPE_MISMATCH, "search topic"),
        (search(), b"u2", ReasonCode.KEY_MISMATCH, "user_id"),
        (search(ts=NOW * 1000), b"u1", ReasonCode.INVALID_TIMESTAMP, "milliseconds"),
        (b"[1]", b"u1", ReasonCode.NOT_AN_OBJECT, "object"),
    ],
)
def test_bad_searches_get_a_reason_code_and_a_clear_reason(
    raw: bytes, key: bytes, code: ReasonCode, says: str
) -> None:
    invalid = decode_search(raw, key, now=NOW)
    assert isinstance(invalid, InvalidEvent)
    assert invalid.code is code and says in invalid.reason


def test_the_longest_query_is_accepted_after_trimming() -> None:
    event = decode_search(search(query=f"  {'q' * MAX_QUERY_CHARS}  "), b"u1", now=NOW)
    assert isinstance(event, SearchEvent) and len(event.query) == MAX_QUERY_CHARS


def test_a_search_folds_only_its_id_and_time_into_the_profile() -> None:
    profile = Profile()
    event = decode_search(search(), b"u1", now=NOW)
    assert isinstance(event, SearchEvent)
    assert apply_search(profile, event, ProfileLimits())
    assert not apply_search(profile, event, ProfileLimits())  # a replay
    assert profile.recent == [] and profile.counts == {} and profile.last_seen == NOW
    assert b"lipstick" not in profile.to_json()
    assert "intent" not in profile.to_dict()  # nothing embedded: no intent


def test_the_intent_is_a_compact_unit_vector_and_the_latest_search_wins() -> None:
    rng = np.random.default_rng(0)
    vector = rng.normal(size=384).astype(np.float32)
    vector /= np.linalg.norm(vector)
    packed = pack(vector)
    assert len(packed) == 1024  # 384 float16 values in base64
    restored = unpack(packed)
    assert restored.dtype == np.float32 and abs(float(np.linalg.norm(restored)) - 1) < 1e-6
    assert float(restored @ vector) > 0.9999
    profile = Profile()
    remember_intent(profile, NOW, packed, 384)
    remember_intent(profile, NOW - 10, pack(-vector), 384)  # an older search, delivered late
    assert profile.intent == [NOW, packed, 384]
    assert Profile.from_json(profile.to_json()).intent == [NOW, packed, 384]


def test_an_intent_of_another_encoder_is_dropped_when_read() -> None:
    vector = np.full(8, 8**-0.5, dtype=np.float32)
    found = stored_vector([NOW, pack(vector), 8], 8)
    assert found is not None and found[0] == NOW and np.allclose(found[1], vector, atol=1e-3)
    assert stored_vector([NOW, pack(vector)], 8) is not None  # stored before dims were
    assert stored_vector([NOW, pack(vector), 8], 384) is None  # another encoder now
    assert stored_vector([NOW, pack(vector)], 384) is None  # its length says so too
    assert stored_vector([NOW, pack(vector), 8], None) is None  # no encoder now
    assert stored_vector([NOW, "not base64!", 8], 8) is None
    assert stored_vector([NOW], 8) is None


def test_the_intent_weight_halves_every_half_life() -> None:
    assert decayed_weight(0.0, 1800) == 1.0
    assert decayed_weight(-5.0, 1800) == 0.0  # the search came after the event
    assert decayed_weight(1800.0, 1800) == pytest.approx(0.5)
    assert decayed_weight(5400.0, 1800) == pytest.approx(0.125)
    intent = make_intent(np.ones(2, dtype=np.float32), 0.5)
    assert intent.weight == 0.5 and intent.vector.shape == (2,)


def test_event_logs_skip_searches_they_are_no_interactions(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    click = {"event_id": "c1", "user_id": "u1", "item_id": "sku-1", "ts": NOW, "type": "click"}
    lines = [click, {"event_id": "s1", "user_id": "u1", "query": "q", "ts": NOW, "type": "search"}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    [only] = read_event_log(log, now=NOW)
    assert only.item_id == "sku-1"
