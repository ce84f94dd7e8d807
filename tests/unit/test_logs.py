"""Logs: JSON lines on request, user ids pseudonymised by default."""

from __future__ import annotations

import json
import logging

from deploy.logs import JsonFormatter, logging_config
from streams.privacy import UserRefs


def test_json_formatter_emits_one_object_with_extras() -> None:
    record = logging.makeLogRecord(
        {
            "name": "recstream.worker",
            "levelname": "INFO",
            "levelno": 20,
            "msg": "model %s loaded",
            "args": ("v1",),
            "model_version": "v1",
            "provider": "cpu",
        }
    )
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["message"] == "model v1 loaded"
    assert data["model_version"] == "v1" and data["provider"] == "cpu"
    assert data["level"] == "INFO" and data["ts"].endswith("Z")
    assert "\n" not in line


def test_logging_config_picks_the_formatter() -> None:
    assert logging_config("INFO", True)["formatters"]["default"]["()"] is JsonFormatter
    assert "format" in logging_config("DEBUG", False)["formatters"]["default"]


def test_user_refs_are_stable_keyed_and_not_the_id() -> None:
    refs = UserRefs(pseudonymize=True, key="secret")
    assert refs("alice") == refs(b"alice") != refs("bob")
    assert "alice" not in refs("alice") and refs("alice").startswith("u:")
    assert UserRefs(pseudonymize=True, key="other")("alice") != refs("alice")
    assert UserRefs(pseudonymize=False)("alice") == "alice"
    assert refs(None) == "-"
