"""docker/docker-compose.yml parses and agrees with deploy/settings.py and the metrics."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.settings import Settings
from streams.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
RECSTREAM_SERVICES = ("topics", "worker", "replay")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: str, shell: dict[str, str]) -> str:
    """What compose puts in the container for ``${VAR}`` and ``${VAR:-default}``."""
    return _VARIABLE.sub(lambda m: shell.get(m["name"]) or m["default"] or "", value)


def settings_for(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, shell: dict[str, str] | None = None
) -> Settings:
    """The settings a container of ``env`` gets, started from a shell with ``shell``."""
    for key in [k for k in os.environ if k.startswith("RECSTREAM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, interpolate(str(value), shell or {}))
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_services(compose):
    assert {"kafka", "topics", "seed", "worker", "replay", "prometheus", "grafana"} <= set(
        compose["services"]
    )
    for name, svc in compose["services"].items():
        assert "image" in svc, name
        assert not svc["image"].endswith(":latest") or "build" in svc, name
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")


@pytest.mark.parametrize("service", RECSTREAM_SERVICES)
def test_environment_keys_are_settings_fields(compose, service, monkeypatch):
    env = compose["services"][service]["environment"]
    fields = Settings.env_names()
    assert set(env) <= fields, sorted(set(env) - fields)
    settings_for(env, monkeypatch)  # every value parses


def test_ports_match_the_web_port(compose, monkeypatch):
    worker = compose["services"]["worker"]
    settings = settings_for(worker["environment"], monkeypatch)
    assert f"{settings.stream.web.port}:{settings.stream.web.port}" in worker["ports"]
    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = [
        t for job in prom["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets == [f"worker:{settings.stream.web.port}"]
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_the_worker_gets_a_lookup_api_token_with_a_documented_default(compose, monkeypatch):
    """Without a token the lookup API answers 503; compose sets a dev default that the
    shell's RECSTREAM_API_TOKEN overrides, and docker/README.md names it."""
    env = compose["services"]["worker"]["environment"]
    token = settings_for(env, monkeypatch).stream.api.token.get_secret_value()
    assert token == "dev-token-change-me"
    assert token in (DOCKER / "README.md").read_text()
    mine = settings_for(env, monkeypatch, {"RECSTREAM_API_TOKEN": "s3cret"})
    assert mine.stream.api.token.get_secret_value() == "s3cret"
    for service in ("topics", "replay"):  # the token goes only where it is checked
        assert "RECSTREAM_API_TOKEN" not in compose["services"][service]["environment"]


def test_kafka_listener_matches_bootstrap_servers(compose, monkeypatch):
    settings = settings_for(compose["services"]["worker"]["environment"], monkeypatch)
    kafka = compose["services"]["kafka"]["environment"]
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    hosts = {a.split("://", 1)[1] for a in advertised}
    assert set(settings.stream.kafka.bootstrap_servers.split(",")) <= hosts
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert settings.stream.kafka.security_protocol == "PLAINTEXT"


def test_worker_volumes_and_hardening(compose, monkeypatch):
    worker = compose["services"]["worker"]
    settings = settings_for(worker["environment"], monkeypatch)
    mounts = {v.split(":")[1]: v for v in worker["volumes"]}
    state = Path(settings.stream.state_dir)
    assert any(Path(m) == state or Path(m) in state.parents for m in mounts)
    model_mount = next(m for m in mounts if Path(m) in Path(settings.model_dir).parents)
    assert mounts[model_mount].endswith(":ro")
    assert worker["read_only"] is True and "/tmp" in worker["tmpfs"]
    assert worker["cap_drop"] == ["ALL"]
    health = worker["healthcheck"]["test"]
    assert "/readyz" in health
    deps = worker["depends_on"]
    assert deps["topics"]["condition"] == "service_completed_successfully"
    assert deps["seed"]["condition"] == "service_completed_successfully"
    assert compose["services"]["replay"]["depends_on"]["worker"]["condition"] == ("service_healthy")


def test_builds_point_at_existing_dockerfiles(compose):
    for name, svc in compose["services"].items():
        if "build" in svc:
            context = (DOCKER / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), name


def test_grafana_provisioning_and_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "dashboards" / "recstream.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(
        mounts["./grafana/dashboards"]
    )
    datasource = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def _metric_names() -> set[str]:
    names: set[str] = set()
    for metric in Metrics().registry.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
        if metric.type == "histogram":
            names |= {f"{metric.name}_bucket", f"{metric.name}_sum", f"{metric.name}_count"}
        if metric.type == "counter":
            names.add(f"{metric.name}_total")
        if metric.type == "info":
            names.add(f"{metric.name}_info")
    return names


def test_dashboard_queries_use_real_metrics():
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "recstream.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\brecstream_[a-z_]+", e)}
    known = _metric_names()
    assert used and used <= known, sorted(used - known)
    for required in (
        "recstream_events_consumed_total",
        "recstream_events_invalid_total",
        "recstream_recommendations_produced_total",
        "recstream_event_to_recommendation_seconds_bucket",
        "recstream_inference_batch_size_bucket",
        "recstream_inference_seconds_bucket",
        "recstream_model_info",
        "recstream_ready",
    ):
        assert required in used, required
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_text_encoder_service_is_the_k8s_job_and_feeds_the_worker(compose, monkeypatch):
    """The one-shot service runs the Kubernetes Job's command (tests/e2e/test_k8s_loop.py
    runs that one) in the training image, into the models volume the worker reads as
    RECSTREAM_TEXT_ENCODER_DIR, and the worker waits for it."""
    from tests.deploy import kustomize
    from tests.deploy.checks import containers

    service = compose["services"]["text-encoder"]
    resources = kustomize.build(ROOT / "k8s" / "overlays" / "cpu")
    [job] = [r for r in resources if r["metadata"]["name"] == "recstream-text-encoder"]
    [container] = containers(job)
    assert service["command"] == container["args"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile.train"  # torch for the export
    out = Path(service["command"][service["command"].index("--out") + 1])
    volume, mount = next(
        v.split(":")[:2] for v in service["volumes"] if out.is_relative_to(v.split(":")[1])
    )
    worker = compose["services"]["worker"]
    settings = settings_for(worker["environment"], monkeypatch)
    assert settings.text_encoder_dir is not None
    worker_mount = next(v for v in worker["volumes"] if v.startswith(f"{volume}:"))
    seen_by_worker = Path(worker_mount.split(":")[1]) / out.relative_to(mount)
    assert settings.text_encoder_dir == seen_by_worker
    depends = worker["depends_on"]["text-encoder"]
    assert depends["condition"] == "service_completed_successfully"
