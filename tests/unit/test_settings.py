"""Settings: one env prefix, secrets stay secret, everything reaches the stream config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from deploy.settings import Settings
from deploy.topics import topic_specs


def test_env_prefix_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("RECSTREAM_PARTITIONS", "12")
    monkeypatch.setenv("RECSTREAM_TOPIC_CLICKS", "shop.clicks.v1")
    monkeypatch.setenv("RECSTREAM_STATE_DIR", "/data/state")
    monkeypatch.setenv("RECSTREAM_PROVIDER", "cuda")
    s = Settings()
    cfg = s.stream_config()
    assert cfg.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.partitions == 12
    assert cfg.topics.clicks == "shop.clicks.v1"
    assert cfg.data_dir == Path("/data/state")
    assert s.provider == "cuda"


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_PROVIDER", "tpu")
    with pytest.raises(ValidationError):
        Settings()


def test_sasl_password_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_PASSWORD", "hunter2")
    s = Settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert "hunter2" not in repr(s.stream_config())
    assert s.stream_config().security.password == "hunter2"
    conf = s.client_config()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["sasl.password"] == "hunter2"


def test_topic_specs_are_co_partitioned_and_changelog_is_compacted() -> None:
    specs = topic_specs(Settings(partitions=6, app_id="shop"))
    assert {s.partitions for s in specs} == {6}
    names = {s.name: s for s in specs}
    assert set(names) == {
        "clicks",
        "browses",
        "purchases",
        "recommendations",
        "events-dlq",
        "shop-profiles-changelog",
    }
    assert names["shop-profiles-changelog"].config["cleanup.policy"] == "compact"
    assert names["clicks"].config["cleanup.policy"] == "delete"


def test_every_setting_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    undocumented = [n for n in Settings.model_fields if f"`RECSTREAM_{n.upper()}`" not in readme]
    assert not undocumented, f"add to the README configuration table: {undocumented}"
