"""Message formats: committed JSON Schemas match the code; golden payloads round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from streams.events import EventType, InvalidEvent, decode_event
from streams.messages import (
    DeadLetter,
    RecommendationMessage,
    dead_letter_bytes,
    recommendation_bytes,
)
from streams.schema_files import SCHEMA_DIR, json_schemas

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOW = 1_795_100_000.0


def test_committed_schemas_match_the_models() -> None:
    for stem, schema in json_schemas().items():
        committed = json.loads((SCHEMA_DIR / f"{stem}.json").read_text())
        assert committed == schema, (
            f"streams/schemas/{stem}.json is stale: run `recstream schemas --write`"
        )


@pytest.mark.parametrize("event_type", list(EventType))
def test_golden_events_validate_against_schema_and_decoder(event_type: EventType) -> None:
    stem = f"{event_type.value}.v1"
    raw = (FIXTURES / f"{stem}.json").read_bytes()
    schema = json.loads((SCHEMA_DIR / f"{stem}.json").read_text())
    jsonschema.validate(orjson.loads(raw), schema)
    event = decode_event(event_type, raw.strip(), b"user-0042", now=NOW)
    assert not isinstance(event, InvalidEvent), event
    assert event.user_id == "user-0042"


def test_golden_recommendation_round_trips() -> None:
    raw = (FIXTURES / "recommendation.v1.json").read_bytes()
    jsonschema.validate(
        orjson.loads(raw), json.loads((SCHEMA_DIR / "recommendation.v1.json").read_text())
    )
    msg = RecommendationMessage.model_validate_json(raw)
    rebuilt = recommendation_bytes(
        user_id=msg.user_id,
        items=[(i.item_id, i.score) for i in msg.items],
        model_version=msg.model_version,
        arm=msg.arm,
        strategy=msg.strategy,
        trigger_event_id=msg.trigger_event_id,
        trigger_event_type=msg.trigger_event_type,
        event_ts=msg.event_ts,
        produced_ts=msg.produced_ts,
    )
    assert orjson.loads(rebuilt) == orjson.loads(raw)


def test_a_recommendation_from_before_experiments_is_in_the_control_arm() -> None:
    doc = orjson.loads((FIXTURES / "recommendation.v1.json").read_bytes())
    del doc["arm"]  # written before the field existed
    jsonschema.validate(doc, json.loads((SCHEMA_DIR / "recommendation.v1.json").read_text()))
    assert RecommendationMessage.model_validate(doc).arm == "control"


def test_golden_dead_letter_round_trips() -> None:
    raw = (FIXTURES / "dead-letter.v1.json").read_bytes()
    jsonschema.validate(
        orjson.loads(raw), json.loads((SCHEMA_DIR / "dead-letter.v1.json").read_text())
    )
    msg = DeadLetter.model_validate_json(raw)
    rebuilt = dead_letter_bytes(
        reason_code=msg.reason_code,
        reason=msg.reason,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp_ms=msg.timestamp_ms,
        key=b"user-0042",
        value=b'{"event_id":',
        failed_at=msg.failed_at,
    )
    assert orjson.loads(rebuilt) == orjson.loads(raw)


def test_schema_rejects_what_the_decoder_rejects() -> None:
    schema = json.loads((SCHEMA_DIR / "purchase.v1.json").read_text())
    bad = {"event_id": "p", "user_id": "u", "item_id": "i", "ts": NOW}  # no order_id / price
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    assert isinstance(decode_event(EventType.PURCHASE, orjson.dumps(bad), now=NOW), InvalidEvent)


def test_golden_control_and_audit_records_validate_and_round_trip() -> None:
    from streams.control import ErasureRequest, decode_control, erasure_request_bytes
    from streams.messages import ErasureAudit, erasure_audit_bytes

    raw = (FIXTURES / "erasure-request.v1.json").read_bytes().strip()
    jsonschema.validate(
        orjson.loads(raw), json.loads((SCHEMA_DIR / "erasure-request.v1.json").read_text())
    )
    request = decode_control(raw, b"user-0042")
    assert request == ErasureRequest(user_id="user-0042", requested_at=1795099990.5)
    assert orjson.loads(erasure_request_bytes("user-0042", 1795099990.5)) == orjson.loads(raw)

    audit = orjson.loads((FIXTURES / "erasure-audit.v1.json").read_bytes())
    jsonschema.validate(audit, json.loads((SCHEMA_DIR / "erasure-audit.v1.json").read_text()))
    model = ErasureAudit.model_validate(audit)
    assert (
        orjson.loads(erasure_audit_bytes(**model.model_dump(exclude={"schema_version"}))) == audit
    )


def test_golden_item_rule_validates_and_decodes() -> None:
    from streams.rules import ItemRule, decode_rule

    raw = (FIXTURES / "item-rule.v1.json").read_bytes().strip()
    schema = json.loads((SCHEMA_DIR / "item-rule.v1.json").read_text())
    jsonschema.validate(orjson.loads(raw), schema)
    assert decode_rule(b"sku-00001", raw) == ItemRule(category="lipstick")
    jsonschema.validate({"blocked": True}, schema)  # every field has a default
