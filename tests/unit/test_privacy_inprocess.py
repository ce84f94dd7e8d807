"""Erasure, expiry and pseudonyms in the Pipeline, in process (see test_pipeline_inprocess)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import orjson
import pytest

from streams.control import ErasureRequest, ProfileExpiry, decode_control, erasure_request_bytes
from streams.events import InvalidEvent, ReasonCode
from streams.privacy import UserKeys, pseudonym
from tests.unit.test_pipeline_inprocess import NOW, Harness, click, harness, send, until

__all__ = ["harness"]  # the fixture, imported for these tests


def test_erasure_deletes_profile_tombstones_outputs_audits_and_keeps_old_events_out(
    harness: Harness,
) -> None:
    h = harness
    erasure = h.config.topics.user_erasure

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: len(h.recommendations) == 1)
        await asyncio.sleep(0.05)
        h.sink.deliver_all()
        before = len(h.sink.records)

        request = await send(agent, erasure, erasure_request_bytes("u1", NOW), offset=0)
        await until(lambda: len(h.sink.on(h.config.topics.erasure_audit)) == 1)
        assert h.profiles.get("u1") is None
        new = h.sink.records[before:]
        by_topic = {(r.topic, r.key): r.value for r in new}
        # The profile's changelog tombstone, the latest list's tombstone, the marker
        # (no raw id in its key) and the audit record (pseudonym only).
        assert by_topic[(h.changelog, b'"u1"')] is None
        assert by_topic[(h.config.topics.recommendations_latest, b"u1")] is None
        marker = UserKeys("", "recstream").marker("u1")
        assert "u1" not in marker and orjson.loads(h.profiles.get(marker))["erased_at"] > 0
        audit = orjson.loads(
            by_topic[(h.config.topics.erasure_audit, pseudonym("u1", "recstream").encode())] or b""
        )
        assert audit["profile_found"] is True and audit["requested_at"] == NOW
        # Acked only once every record of the erasure is delivered.
        assert not request.message.acked
        h.sink.deliver_all()
        assert request.message.acked

        # The same event again (a replay, older than the erasure): dropped, acked.
        replayed = await send(agent, "clicks", click("e1"), offset=1)
        await until(lambda: replayed.message.acked)
        assert h.profiles.get("u1") is None and len(h.recommendations) == 1

    h.run(body)


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        (b"u1", b"{nope", ReasonCode.INVALID_JSON),
        (b"u1", b"[1]", ReasonCode.NOT_AN_OBJECT),
        (b"u1", b"", ReasonCode.EMPTY),
        (b"u1", orjson.dumps({"user_id": ""}), ReasonCode.SCHEMA_VIOLATION),
        (b"u2", orjson.dumps({"user_id": "u1"}), ReasonCode.KEY_MISMATCH),
        (None, orjson.dumps({"user_id": "u1"}), ReasonCode.KEY_MISMATCH),
        (b"u1", orjson.dumps({"expire": "u1"}), ReasonCode.SCHEMA_VIOLATION),
    ],
)
def test_bad_control_records_are_rejected_with_a_reason(
    key: bytes | None, value: bytes, code: ReasonCode
) -> None:
    decoded = decode_control(value, key)
    assert isinstance(decoded, InvalidEvent) and decoded.code == code
    assert "u1" not in decoded.reason  # reasons are logged: no user ids in them


def test_control_records_decode() -> None:
    assert decode_control(erasure_request_bytes("u1", 5.0), b"u1") == ErasureRequest(
        user_id="u1", requested_at=5.0
    )
    assert decode_control(orjson.dumps({"expire": "p:ab", "before": 3.0}), b"p:ab") == (
        ProfileExpiry(expire="p:ab", before=3.0)
    )


def test_a_bad_erasure_record_is_dead_lettered_and_the_worker_goes_on(harness: Harness) -> None:
    h = harness

    async def body(agent: Any) -> None:
        await send(agent, h.config.topics.user_erasure, b"{nope", offset=0)
        await until(lambda: len(h.dead_letters) == 1)
        assert h.dead_letters[0].json()["reason_code"] == "invalid_json"
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: len(h.recommendations) == 1)

    h.run(body)


def test_expiry_deletes_only_what_is_still_expired_and_the_sweep_finds_it(
    harness: Harness,
) -> None:
    h = harness
    erasure = h.config.topics.user_erasure
    ttl_s = h.config.data_privacy.profile_ttl_days * 86400.0

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1"), offset=0)  # last_seen = NOW - 5
        await until(lambda: len(h.recommendations) == 1)
        await asyncio.sleep(0.05)
        entries = [("u1", h.profiles.get("u1"))]
        # Not expired now; expired once the TTL has passed.
        assert list(h.pipeline.expired_keys(entries, NOW)) == []
        [(key, cutoff)] = h.pipeline.expired_keys(entries, NOW + ttl_s + 60)
        assert key == "u1" and cutoff > NOW - 5

        # An expiry whose cutoff the profile is newer than leaves it alone.
        stale = orjson.dumps({"expire": "u1", "before": NOW - 60})
        await send(agent, erasure, stale, offset=0)
        await asyncio.sleep(0.1)
        assert h.profiles.get("u1") is not None
        expiry = orjson.dumps({"expire": "u1", "before": cutoff})
        await send(agent, erasure, expiry, offset=1)
        await until(lambda: h.profiles.get("u1") is None)
        assert h.sink.on(h.changelog)[-1].value is None
        assert h.sink.on(h.config.topics.recommendations_latest)[-1].value is None

    h.run(body)


def test_pseudonyms_are_keyed_stable_and_distinct() -> None:
    keys = UserKeys("k1", "logkey")
    assert keys.state("alice") == pseudonym("alice", "k1") == keys.audit("alice")
    assert keys.state("alice").startswith("p:") and len(keys.state("alice")) == 34
    assert keys.state("alice") != UserKeys("k2", "logkey").state("alice")
    assert keys.state("alice") != keys.state("bob")
    plain = UserKeys("", "logkey")
    assert plain.state("alice") == "alice" and plain.audit("alice") == pseudonym("alice", "logkey")
    # What a shop computes on its side (README, "Privacy"): HMAC-SHA256, 32 hex.
    for user, key in (("alice", "k1"), ("ünï", "k2"), ("", "k1"), ("bob", "k1")):
        expected = hmac.new(key.encode(), user.encode(), hashlib.sha256).hexdigest()[:32]
        assert pseudonym(user, key) == "p:" + expected


def test_user_keys_are_remembered_per_user_and_forgotten_on_erasure(harness: Harness) -> None:
    keys = UserKeys("k1", "logkey")
    assert keys.state("alice") == keys.state("alice") == pseudonym("alice", "k1")
    assert keys.marker("bob") == UserKeys("k1", "logkey").marker("bob")
    assert keys.state.cache_info().currsize == 1  # type: ignore[attr-defined]
    keys.forget()
    assert keys.state.cache_info().currsize == keys.marker.cache_info().currsize == 0  # type: ignore[attr-defined]
    assert keys.state("alice") == pseudonym("alice", "k1")

    h = harness

    async def body(agent: Any) -> None:
        await send(agent, "clicks", click("e1"), offset=0)
        await until(lambda: h.profiles.get("u1") is not None)
        assert h.pipeline.users.marker.cache_info().currsize == 1  # type: ignore[attr-defined]
        await send(agent, h.config.topics.user_erasure, erasure_request_bytes("u1", NOW), offset=0)
        await until(lambda: h.profiles.get("u1") is None)
        assert h.pipeline.users.marker.cache_info().currsize == 0  # type: ignore[attr-defined]

    h.run(body)


def test_a_user_erased_while_an_event_is_scored_stays_erased(harness: Harness) -> None:
    h = harness
    erasure = h.config.topics.user_erasure

    async def body(agent: Any) -> None:
        # The erasure is taken while the click waits for its batch (30 ms).
        event = await send(agent, "clicks", click("e1"), offset=0)
        await send(agent, erasure, erasure_request_bytes("u1", NOW), offset=0)
        await until(lambda: len(h.recommendations) == 1)
        await asyncio.sleep(0.05)
        # Its list still went out, but nothing of the user was ever written: no
        # profile, no changelog record, no latest list after the tombstone; the audit
        # says a profile was found (the one in flight).
        assert h.profiles.get("u1") is None
        assert [r.value for r in h.sink.on(h.changelog) if r.key == b'"u1"'] == []
        assert [r.value for r in h.sink.on(h.config.topics.recommendations_latest)] == [None]
        audit = orjson.loads(h.sink.on(h.config.topics.erasure_audit)[0].value or b"")
        assert audit["profile_found"] is True
        h.sink.deliver_all()
        assert event.message.acked and h.pipeline.acks.pending == 0

    h.run(body)
