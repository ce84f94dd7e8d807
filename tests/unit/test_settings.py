"""Settings: one env prefix, secrets stay secret, everything reaches the stream config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from deploy.settings import Settings, markdown_table
from deploy.topics import topic_specs


def test_env_prefix_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("RECSTREAM_PARTITIONS", "12")
    monkeypatch.setenv("RECSTREAM_TOPIC_CLICKS", "shop.clicks.v1")
    monkeypatch.setenv("RECSTREAM_STATE_DIR", "/data/state")
    monkeypatch.setenv("RECSTREAM_PROVIDER", "cuda")
    s = Settings()
    cfg = s.stream
    assert cfg.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert cfg.partitions == 12
    assert cfg.topics.clicks == "shop.clicks.v1"
    assert cfg.state_dir == Path("/data/state")
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
    assert "hunter2" not in repr(s.stream)
    assert s.stream.kafka.client_config()["sasl.password"] == "hunter2"
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
        "recommendations-latest",
        "events-dlq",
        "user-erasure",
        "user-erasure-audit",
        "item-rules",
        "shop-profiles-changelog",
        "searches",
        "items",
        "co-purchases",
        "bundles",
        "shop-bundle-counts-changelog",
    }
    assert names["shop-profiles-changelog"].config["cleanup.policy"] == "compact"
    assert names["recommendations-latest"].config == {"cleanup.policy": "compact"}
    assert names["item-rules"].config == {"cleanup.policy": "compact"}
    # The catalog and the bundles are read whole by every worker: the latest per item.
    for compacted in ("items", "bundles", "shop-bundle-counts-changelog"):
        assert names[compacted].config == {"cleanup.policy": "compact"}
    assert names["searches"].config == names["co-purchases"].config == names["clicks"].config
    # Erasure requests expire like events; the audit of erasures is kept forever.
    assert names["user-erasure"].config == names["clicks"].config
    assert names["user-erasure-audit"].config == {"cleanup.policy": "delete", "retention.ms": "-1"}
    assert names["clicks"].config["cleanup.policy"] == "delete"


def test_every_setting_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    undocumented = [n for n in Settings.env_names() if f"`{n}`" not in readme]
    assert not undocumented, f"add to the README configuration table: {undocumented}"


def test_readme_configuration_table_is_generated_from_the_settings() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme, (
        "README's configuration table is out of date: replace it with the output of "
        "`recstream config --markdown`"
    )


def test_every_nested_field_has_one_flat_name_and_variable() -> None:
    fields = Settings.fields()
    assert len({f.env for f in fields.values()}) == len(fields)
    assert fields["kafka_bootstrap_servers"].path == ("stream", "kafka", "bootstrap_servers")
    assert fields["max_batch"].path == ("stream", "scoring", "max_batch")
    assert fields["model_dir"].path == ("model_dir",)
    assert all(f.info.description for f in fields.values()), "every setting says what it does"
    # Internal hooks are not settings.
    assert "store" not in fields and "changelog_linger_ms" not in fields


def test_to_env_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None).replace(
        partitions=7,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_password="hunter2",
        topic_clicks="c.v1",
        inference_thread=False,
        max_wait_ms=2.5,
        log_level="WARNING",
    )
    for key in [k for k in __import__("os").environ if k.startswith("RECSTREAM_")]:
        monkeypatch.delenv(key)
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    assert Settings(_env_file=None) == s


def test_replace_validates_and_rejects_unknown_names() -> None:
    s = Settings(_env_file=None)
    assert s.replace(max_batch=8).stream.scoring.max_batch == 8
    assert s.stream.scoring.max_batch == 64  # a copy, not a mutation
    with pytest.raises(ValueError, match="did you mean max_batch"):
        s.replace(max_bach=8)
    with pytest.raises(ValidationError):
        s.replace(max_batch=0)
    with pytest.raises(ValidationError):
        s.replace(provider="tpu")
    with pytest.raises(ValueError, match="unknown setting"):
        Settings(_env_file=None, max_bach=8)


def test_config_command_prints_the_table_and_masks_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from deploy.cli import app

    runner = CliRunner()
    table = runner.invoke(app, ["config", "--markdown"])
    assert table.exit_code == 0 and table.stdout == markdown_table()
    monkeypatch.setenv("RECSTREAM_MAX_BATCH", "8")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_PASSWORD", "hunter2")
    shown = runner.invoke(app, ["config"])
    assert shown.exit_code == 0
    assert "RECSTREAM_MAX_BATCH=8\n" in shown.stdout
    assert "hunter2" not in shown.stdout and "RECSTREAM_KAFKA_SASL_PASSWORD=**" in shown.stdout
    monkeypatch.setenv("RECSTREAM_MAX_BATCH", "0")
    assert runner.invoke(app, ["config"]).exit_code != 0


def test_unknown_recstream_variables_are_named_with_close_matches() -> None:
    env = {
        "RECSTREAM_MAX_BATCH": "8",
        "RECSTREAM_MAX_BACH": "8",
        "RECSTREAM_TEST_KAFKA_BOOTSTRAP": "x:1",
        "RECSTREAM_LIBRDKAFKA": "/lib/x.so",
        "PATH": "/bin",
    }
    [unknown] = Settings.unknown_env(env)
    assert unknown.startswith("RECSTREAM_MAX_BACH (did you mean RECSTREAM_MAX_BATCH")


def test_erasure_markers_must_outlive_the_input_retention() -> None:
    assert Settings(retention_hours=14 * 24).stream.data_privacy.erasure_marker_days == 14
    with pytest.raises(ValueError, match="ERASURE_MARKER_DAYS"):
        Settings(retention_hours=15 * 24)
    Settings(retention_hours=30 * 24, privacy_erasure_marker_days=30)


def test_the_text_encoder_is_loaded_with_its_own_thread_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One intra-op thread by default, whatever the scorer's `RECSTREAM_INTRA_OP_THREADS`."""
    import numpy as np

    import deploy.worker
    from models.text_encoder import OnnxTextEncoder

    loaded: list[int] = []

    class Loaded:
        dim = 4

        def encode(self, texts: object) -> np.ndarray:
            return np.zeros((0, 4), dtype=np.float32)

    def load(directory: Path, provider: str = "auto", intra_op_threads: int = 0) -> Loaded:
        loaded.append(intra_op_threads)
        return Loaded()

    monkeypatch.setattr(OnnxTextEncoder, "load", load)
    (tmp_path / "encoder.onnx").write_bytes(b"")  # an empty folder is "not written yet"
    for env, expected in [({}, 1), ({"RECSTREAM_TEXT_ENCODER_THREADS": "3"}, 3)]:
        for name, value in {"RECSTREAM_INTRA_OP_THREADS": "0", **env}.items():
            monkeypatch.setenv(name, value)
        settings = Settings(_env_file=None, text_encoder_dir=tmp_path)  # type: ignore[call-arg]
        assert deploy.worker.load_text_support(settings) is not None
        assert loaded[-1] == expected
