"""Message formats: committed JSON Schemas match the code; golden payloads round-trip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import jsonschema
import orjson
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class V1Item(BaseModel):
    """``RecommendedItem`` of the released v1 client (``streams/messages.py`` at 9db32c8)."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    score: float


class V1RecommendationMessage(BaseModel):
    """``RecommendationMessage`` of the released v1 client, verbatim: it pins version 1."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = 1
    user_id: str
    items: list[V1Item] = Field(description="Best first, at most K.")
    model_version: str = Field(description="Version of the model that scored, or 'none'.")
    arm: str = Field("control")
    strategy: str = Field(description="'sequential' or 'popular' (fallback).")
    trigger_event_id: str = Field(description="event_id of the event that triggered this list.")
    trigger_event_type: str
    event_ts: float = Field(description="Event time of the trigger, Unix seconds.")
    produced_ts: float = Field(description="When the worker produced this list, Unix seconds.")


#: SHA-256 of ``recommendation.v1.json`` as released: consumers validate against it.
V1_SCHEMA_SHA256 = "f2d55429e2e2eb7ca3d83ec2abf434c6bea84e573ba14b2083f0902035016473"


def _schema(stem: str) -> dict[str, object]:
    schema: dict[str, object] = json.loads((SCHEMA_DIR / f"{stem}.json").read_text())
    return schema


def test_golden_recommendation_v2_round_trips_with_reasons_and_bundle() -> None:
    raw = (FIXTURES / "recommendation.v2.json").read_bytes()
    jsonschema.validate(orjson.loads(raw), _schema("recommendation.v2"))
    msg = RecommendationMessage.model_validate_json(raw)
    assert msg.schema_version == 2 and msg.bundle is not None
    rebuilt = recommendation_bytes(
        user_id=msg.user_id,
        items=[(i.item_id, i.score) for i in msg.items],
        reasons=[(i.reason.code, i.reason.item_id) if i.reason else None for i in msg.items],
        bundle=(msg.bundle.anchor_item_id, [(b.item_id, b.score) for b in msg.bundle.items]),
        model_version=msg.model_version,
        arm=msg.arm,
        strategy=msg.strategy,
        trigger_event_id=msg.trigger_event_id,
        trigger_event_type=msg.trigger_event_type,
        event_ts=msg.event_ts,
        produced_ts=msg.produced_ts,
    )
    assert orjson.loads(rebuilt) == orjson.loads(raw)


def test_a_list_without_reasons_or_bundle_leaves_the_optional_fields_out() -> None:
    doc = orjson.loads(
        recommendation_bytes(
            user_id="u",
            items=[("a", 1.0)],
            model_version="m",
            strategy="popular",
            trigger_event_id="e",
            trigger_event_type="click",
            event_ts=NOW,
            produced_ts=NOW,
        )
    )
    jsonschema.validate(doc, _schema("recommendation.v2"))
    assert doc["schema_version"] == 2 and "bundle" not in doc
    assert doc["items"] == [{"item_id": "a", "score": 1.0}]


def test_v1_golden_recommendation_still_validates_and_parses() -> None:
    doc = orjson.loads((FIXTURES / "recommendation.v1.json").read_bytes())
    jsonschema.validate(doc, _schema("recommendation.v1"))  # the committed v1 schema
    jsonschema.validate(doc, _schema("recommendation.v2"))  # v2 only adds optional fields
    msg = RecommendationMessage.model_validate(doc)
    assert msg.schema_version == 1 and msg.bundle is None
    assert [i.reason for i in msg.items] == [None, None]
    assert V1RecommendationMessage.model_validate(doc).items[0].item_id == "sku-00020"


def _explained_list(schema_version: int | None) -> dict[str, object]:
    """A list as the worker writes it, with reasons and a bundle."""
    label = {} if schema_version is None else {"schema_version": schema_version}
    doc: dict[str, object] = orjson.loads(
        recommendation_bytes(
            user_id="u",
            items=[("a", 2.0), ("b", 1.0)],
            reasons=[("similar_to_viewed", "h"), ("bought_together", "t")],
            bundle=("t", [("b", 3.0)]),
            model_version="m",
            strategy="sequential",
            trigger_event_id="e",
            trigger_event_type="click",
            event_ts=NOW,
            produced_ts=NOW,
            **label,
        )
    )
    return doc


def test_the_committed_v1_schema_is_the_released_one() -> None:
    digest = hashlib.sha256((SCHEMA_DIR / "recommendation.v1.json").read_bytes()).hexdigest()
    assert digest == V1_SCHEMA_SHA256, "recommendation.v1.json is released: never change it"


def test_a_consumer_pinning_v1_reads_lists_written_with_output_schema_version_1() -> None:
    doc = _explained_list(1)
    assert doc["schema_version"] == 1 and "bundle" in doc
    jsonschema.validate(doc, _schema("recommendation.v1"))  # additional fields allowed
    old = V1RecommendationMessage.model_validate(doc)
    assert [(i.item_id, i.score) for i in old.items] == [("a", 2.0), ("b", 1.0)]
    new = RecommendationMessage.model_validate(doc)  # a v2 reader sees the extras too
    assert new.bundle is not None and new.items[1].reason is not None
    assert new.items[1].reason.code == "bought_together"


def test_default_output_is_v2_which_a_consumer_pinning_v1_rejects() -> None:
    """Why the upgrade note says: consumers first, or RECSTREAM_OUTPUT_SCHEMA_VERSION=1."""
    doc = _explained_list(None)
    assert doc["schema_version"] == 2
    jsonschema.validate(doc, _schema("recommendation.v2"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema("recommendation.v1"))
    with pytest.raises(ValidationError):
        V1RecommendationMessage.model_validate(doc)


def test_a_bad_reason_code_is_rejected_by_schema_and_model() -> None:
    doc = orjson.loads((FIXTURES / "recommendation.v2.json").read_bytes())
    doc["items"][0]["reason"]["code"] = "because"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _schema("recommendation.v2"))
    with pytest.raises(ValidationError):
        RecommendationMessage.model_validate(doc)


def test_a_recommendation_from_before_experiments_is_in_the_control_arm() -> None:
    doc = orjson.loads((FIXTURES / "recommendation.v1.json").read_bytes())
    del doc["arm"]  # written before the field existed
    jsonschema.validate(doc, _schema("recommendation.v1"))
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


def test_golden_search_validates_against_schema_and_decoder() -> None:
    from streams.events import SearchEvent, decode_search

    raw = (FIXTURES / "search.v1.json").read_bytes().strip()
    jsonschema.validate(orjson.loads(raw), _schema("search.v1"))
    event = decode_search(raw, b"user-0042", now=NOW)
    assert isinstance(event, SearchEvent) and event.query == "matte red lipstick"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**orjson.loads(raw), "query": ""}, _schema("search.v1"))


def test_golden_catalog_item_validates_and_decodes() -> None:
    from streams.catalog import CatalogItem, decode_item

    raw = (FIXTURES / "item.v1.json").read_bytes().strip()
    jsonschema.validate(orjson.loads(raw), _schema("item.v1"))
    decoded = decode_item(b"sku-00017", raw)
    assert isinstance(decoded, CatalogItem) and decoded.category == "lipstick"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"price": 1.0}, _schema("item.v1"))  # a title is required


class _Record:
    """The part of a ``confluent_kafka.Message`` the reader uses."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


def test_the_client_reads_lists_labelled_1_and_2_and_ignores_unknown_fields() -> None:
    from streams.client import RecommendationReader

    v1 = orjson.loads((FIXTURES / "recommendation.v1.json").read_bytes())
    future = {**_explained_list(None), "trigger_event_id": "e2", "added_later": {"x": 1}}
    reader = RecommendationReader({"bootstrap.servers": "127.0.0.1:1"}, "recs")
    try:
        reader._early = [_Record(orjson.dumps(d)) for d in (v1, _explained_list(1), future)]
        got = [reader.poll(0) for _ in range(3)]
    finally:
        reader.close()
    assert [m.schema_version if m else None for m in got] == [1, 1, 2]
    assert got[2] is not None and got[2].bundle is not None
