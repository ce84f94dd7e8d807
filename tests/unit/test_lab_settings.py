"""The lab builds workers from validated Settings: a misspelt setting fails at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from deploy.lab.bench import WorkerVariant
from deploy.lab.scratch import FAST_GROUP_SETTINGS, WorkerProcess, lab_settings, settings_env
from deploy.settings import Settings


def test_bench_variants_are_validated_when_made() -> None:
    assert WorkerVariant("per-event", {"max_batch": 1, "max_wait_ms": 0}).name == "per-event"
    with pytest.raises(ValueError, match="did you mean max_batch"):
        WorkerVariant("typo", {"max_bach": 1})
    with pytest.raises(ValidationError):
        WorkerVariant("bad value", {"changelog_producer": "kafka-streams"})


def test_lab_settings_ignore_the_callers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_MAX_BATCH", "3")
    settings = lab_settings(**FAST_GROUP_SETTINGS)
    assert settings.stream.scoring.max_batch == Settings.defaults().stream.scoring.max_batch
    assert settings.stream.consumer.session_timeout_s == 3.0
    assert settings.stream.web.host == "127.0.0.1"
    with pytest.raises(ValueError, match="unknown setting"):
        lab_settings(session_timeout=3.0)


def test_worker_process_passes_its_whole_settings_to_the_child(tmp_path: Path) -> None:
    settings = lab_settings(max_batch=8, model_dir=tmp_path / "m", web_port=7001)
    worker = WorkerProcess(settings, tmp_path / "w.log")
    env = worker.settings.to_env()
    assert env["RECSTREAM_MAX_BATCH"] == "8" and env["RECSTREAM_WEB_PORT"] == "7001"
    assert worker.url == "http://127.0.0.1:7001"
    # A mapping of flat names is validated the same way.
    with pytest.raises(ValueError, match="unknown setting"):
        WorkerProcess({"web_prot": 1}, tmp_path / "w.log")


def test_settings_env_gives_just_the_named_variables() -> None:
    env = settings_env(kafka_bootstrap_servers="k:9092", partitions=2)
    assert env == {"RECSTREAM_KAFKA_BOOTSTRAP_SERVERS": "k:9092", "RECSTREAM_PARTITIONS": "2"}
    with pytest.raises(ValueError):
        settings_env(partitons=2)


def test_scratch_worker_settings_take_overrides_of_their_own_defaults(tmp_path: Path) -> None:
    from deploy.lab.scratch import ScratchDeployment
    from streams.topics import TopicNames

    dep = ScratchDeployment("127.0.0.1:1", "recstream-t-1", TopicNames(), 2, "1")
    settings = dep.worker_settings(
        tmp_path / "m", tmp_path / "s", log_level="INFO", provider="auto", top_k=5
    )
    assert settings.log_level == "INFO" and settings.provider == "auto"
    assert settings.stream.scoring.top_k == 5
    assert settings.stream.app_id == "recstream-t-1" and settings.stream.partitions == 2
    assert settings.stream.consumer.session_timeout_s == 3.0
