"""Build every Kustomize overlay, validate it against Kubernetes schemas, check policy."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.cli import app as cli_app
from deploy.settings import Settings
from tests.deploy import kustomize
from tests.deploy.checks import (
    KUBERNETES_VERSIONS,
    containers,
    pod_spec,
    schema_violations,
    security_violations,
)

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize.build(ROOT / "k8s" / "overlays" / request.param)


def one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, got {len(hits)}"
    return hits[0]


def settings_env(resources: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(resources, "ConfigMap")["data"])


def worker(resources: list[dict[str, Any]]) -> dict[str, Any]:
    sts = one(resources, "StatefulSet", "recstream-worker")
    return next(c for c in containers(sts) if c["name"] == "worker")


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as a pod with this environment would read them."""
    import os

    for key in [k for k in os.environ if k.startswith("RECSTREAM_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_its_schema(overlay, version):
    name, resources = overlay
    problems = [p for obj in resources for p in schema_violations(obj, version)]
    assert problems == [], f"overlay {name}:\n" + "\n".join(problems)
    assert kustomize.check_names(resources) == []


def test_expected_objects_are_there(overlay):
    _, resources = overlay
    kinds = {r["kind"] for r in resources}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
        "CronJob",
        "ScaledObject",
        "TriggerAuthentication",
        "PersistentVolumeClaim",
    } <= kinds
    namespaced = [r for r in resources if r["kind"] != "Namespace"]
    assert {r["metadata"].get("namespace") for r in namespaced} == {"recstream"}


# ------------------------------------------------------------------ settings


def test_configmap_keys_are_settings_fields_and_parse(overlay, monkeypatch):
    _, resources = overlay
    env = settings_env(resources)
    fields = Settings.env_names()
    assert set(env) <= fields, f"not Settings fields: {sorted(set(env) - fields)}"
    settings = settings_from(env, monkeypatch)  # raises on an invalid value
    assert settings.stream.web.port == 6066


def test_env_from_secrets_are_settings_fields_and_exist(overlay):
    _, resources = overlay
    fields = Settings.env_names()
    secrets = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Secret"}
    for obj in resources:
        for c in containers(obj):
            for var in c.get("env", []):
                if var["name"].startswith("RECSTREAM_"):
                    assert var["name"] in fields, var["name"]
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], ref
    # The password reaches the worker through the Secret, never the ConfigMap.
    assert "RECSTREAM_KAFKA_SASL_PASSWORD" not in settings_env(resources)
    names = {v["name"] for v in worker(resources)["env"]}
    assert "RECSTREAM_KAFKA_SASL_PASSWORD" in names


#: Containers that read no settings: the text encoder Job only writes files, so it can
#: be applied on its own, before the ConfigMap of a new version exists (docs/DEPLOY.md).
NO_SETTINGS = {("Job", "recstream-text-encoder")}


def test_config_map_references_resolve(overlay):
    _, resources = overlay
    cm_name = one(resources, "ConfigMap")["metadata"]["name"]
    assert cm_name.startswith("recstream-settings-")  # hashed: a change rolls the pods
    for obj in resources:
        for c in containers(obj):
            refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
            unset = (obj["kind"], obj["metadata"]["name"]) in NO_SETTINGS
            assert refs == ([] if unset else [cm_name]), f"{obj['kind']}/{c['name']}"
            if unset:
                assert "env" not in c and "envFrom" not in c, f"{obj['kind']}/{c['name']}"


# ------------------------------------------------------------------ workers


def test_security_context_everywhere(overlay):
    _, resources = overlay
    assert security_violations(resources) == []


def test_state_dir_is_on_a_volume_claim_template(overlay):
    _, resources = overlay
    sts = one(resources, "StatefulSet", "recstream-worker")
    state_dir = Path(settings_env(resources)["RECSTREAM_STATE_DIR"])
    templates = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = [
        m
        for m in worker(resources)["volumeMounts"]
        if state_dir == Path(m["mountPath"]) or Path(m["mountPath"]) in state_dir.parents
    ]
    assert [m["name"] for m in mounts] == ["state"] and "state" in templates
    assert not mounts[0].get("readOnly")
    assert sts["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 10001


def _arg_value(args: list[str], flag: str) -> str | None:
    """The value of `flag` in a container's args (``--flag VALUE`` or ``--flag=VALUE``)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _mount_holding(mounts: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """The volume mount a path lies on (the deepest mount path containing it)."""
    hits = [m for m in mounts if Path(m["mountPath"]) in (path, *path.parents)]
    assert hits, f"{path} is on no volume mount"
    return max(hits, key=lambda m: len(Path(m["mountPath"]).parts))


def test_model_dir_is_on_the_read_only_model_store(overlay):
    _, resources = overlay
    model_dir = Path(settings_env(resources)["RECSTREAM_MODEL_DIR"])
    mount = next(m for m in worker(resources)["volumeMounts"] if m["name"] == "models")
    assert _mount_holding(worker(resources)["volumeMounts"], model_dir) == mount
    assert mount["readOnly"] is True
    spec = pod_spec(one(resources, "StatefulSet"))
    claim = next(v for v in spec["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert one(resources, "PersistentVolumeClaim", claim["claimName"])
    # The CronJob publishes into a store on the same claim (read-write there) ...
    job = pod_spec(one(resources, "CronJob"))
    train = next(iter(containers(one(resources, "CronJob"))))
    store_arg = _arg_value(train["args"], "--store")
    assert store_arg, f"the retrain CronJob publishes no store: {train['args']}"
    store = Path(store_arg)
    store_mount = _mount_holding(train["volumeMounts"], store)
    vol = next(v for v in job["volumes"] if v["name"] == store_mount["name"])
    assert vol.get("persistentVolumeClaim", {}).get("claimName") == claim["claimName"]
    assert not store_mount.get("readOnly")
    # ... and the worker's model dir is that store's root as the worker sees it, so it
    # finds `CURRENT` there and hot-reloads each promotion (a directory below the root,
    # e.g. /models/current, holds neither CURRENT nor model.onnx: the worker cannot start).
    seen_by_worker = Path(mount["mountPath"]) / store.relative_to(store_mount["mountPath"])
    assert model_dir == seen_by_worker, (
        f"RECSTREAM_MODEL_DIR={model_dir}, but the CronJob publishes the store at "
        f"{store} (the worker sees it at {seen_by_worker})"
    )


def test_probes_hit_health_endpoints_on_the_web_port(overlay):
    _, resources = overlay
    c = worker(resources)
    port = int(settings_env(resources)["RECSTREAM_WEB_PORT"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert ports.get(get["port"], get["port"]) == port, probe
        paths[probe] = get["path"]
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # table restore
    grace = pod_spec(one(resources, "StatefulSet"))["terminationGracePeriodSeconds"]
    assert grace >= 30


def test_anti_affinity_and_disruption_budget(overlay):
    name, resources = overlay
    sts = one(resources, "StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [
        t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]
    ]
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    assert terms[0]["labelSelector"]["matchLabels"].items() <= labels.items()
    if name == "gpu":
        assert "requiredDuringSchedulingIgnoredDuringExecution" in anti
    pdb = one(resources, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_gpu_limits_only_in_the_gpu_overlay(overlay):
    name, resources = overlay
    limits = worker(resources)["resources"]["limits"]
    provider = settings_env(resources)["RECSTREAM_PROVIDER"]
    image = worker(resources)["image"]
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and provider == "cuda" and image.endswith("-gpu")
        train = next(iter(containers(one(resources, "CronJob"))))
        assert train["resources"]["limits"]["nvidia.com/gpu"] == 1
    else:
        everything = yaml.safe_dump_all(resources)
        assert "nvidia.com/gpu" not in everything
        assert provider == "cpu" and image.endswith("-cpu")


# ------------------------------------------------------------------ services & scaling


def test_service_monitor_scrapes_the_worker_port(overlay):
    _, resources = overlay
    svc = one(resources, "Service", "recstream-worker")
    pod_labels = one(resources, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert one(resources, "StatefulSet")["spec"]["serviceName"] == svc["metadata"]["name"]
    port = int(settings_env(resources)["RECSTREAM_WEB_PORT"])
    sm = one(resources, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert svc_ports[endpoint["port"]]["port"] == port
    np = one(resources, "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert any(p["port"] == port for rule in np["spec"]["ingress"] for p in rule["ports"])


def test_lookup_api_service_token_and_advertised_address(overlay):
    _, resources = overlay
    api = one(resources, "Service", "recstream-api")
    pod_labels = one(resources, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"].items() <= pod_labels.items()
    assert api["spec"].get("clusterIP") != "None"  # load-balanced over ready workers
    ports = {p["name"]: p["containerPort"] for p in worker(resources)["ports"]}
    assert [ports[p["targetPort"]] for p in api["spec"]["ports"]] == [
        int(settings_env(resources)["RECSTREAM_WEB_PORT"])
    ]
    env = {v["name"]: v for v in worker(resources)["env"]}
    # The token comes from a Secret, never the ConfigMap; each worker advertises its
    # pod IP, where the others forward the lookups of its partitions.
    assert env["RECSTREAM_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "recstream-api-token"
    assert "RECSTREAM_API_TOKEN" not in settings_env(resources)
    advertised = env["RECSTREAM_WEB_ADVERTISED_HOST"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert advertised == "status.podIP"


def test_keda_scales_on_lag_up_to_the_partition_count(overlay, monkeypatch):
    _, resources = overlay
    settings = settings_from(settings_env(resources), monkeypatch)
    so = one(resources, "ScaledObject")
    sts = one(resources, "StatefulSet")
    assert so["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": sts["metadata"]["name"],
    }
    assert so["spec"]["maxReplicaCount"] == settings.stream.partitions
    assert 1 <= so["spec"]["minReplicaCount"] <= settings.stream.partitions
    triggers = so["spec"]["triggers"]
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(
        settings.stream.topics.consumed()
    )
    sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}[
        settings.stream.kafka.sasl_mechanism
    ]
    uses_sasl = settings.stream.kafka.security_protocol.startswith("SASL")
    uses_tls = settings.stream.kafka.security_protocol in ("SSL", "SASL_SSL")
    auths = {r["metadata"]["name"]: r for r in resources if r["kind"] == "TriggerAuthentication"}
    for t in triggers:
        meta = t["metadata"]
        assert t["type"] == "kafka"
        assert meta["consumerGroup"] == settings.stream.app_id
        assert meta["bootstrapServers"] == settings.stream.kafka.bootstrap_servers
        assert meta["allowIdleConsumers"] == "false"
        assert meta.get("sasl", "none") == (sasl if uses_sasl else "none")
        assert meta.get("tls", "disable") == ("enable" if uses_tls else "disable")
        auth = auths[t["authenticationRef"]["name"]]
        params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        assert {"username", "password"} <= params


def test_commands_are_recstream_commands(overlay):
    _, resources = overlay
    commands = {c.name or c.callback.__name__ for c in cli_app.registered_commands}
    groups = {g.name for g in cli_app.registered_groups}
    for obj in resources:
        for c in containers(obj):
            first = c["args"][0]
            if first == "train" and first not in commands:
                pytest.skip("`recstream train` is not in the CLI yet")
            assert first in commands | groups, f"{obj['kind']}: recstream {first}"
    assert worker(resources)["args"] == ["worker"]
    job = next(iter(containers(one(resources, "Job", "recstream-topics"))))
    assert job["args"] == ["topics", "create"]
    encoder = next(iter(containers(one(resources, "Job", "recstream-text-encoder"))))
    assert encoder["args"][:2] == ["text-encoder", "minilm"]
    assert "--keep-current" in encoder["args"]  # idempotent: safe on every apply


def test_text_encoder_job_writes_where_the_workers_read(overlay):
    """The Job's --out, seen through the workers' read-only model-store mount, is their
    RECSTREAM_TEXT_ENCODER_DIR; it lies beside the store's versions, not in one (a
    version directory is immutable and removed with its version)."""
    _, resources = overlay
    encoder_dir = Path(settings_env(resources)["RECSTREAM_TEXT_ENCODER_DIR"])
    mount = _mount_holding(worker(resources)["volumeMounts"], encoder_dir)
    assert mount["name"] == "models" and mount["readOnly"] is True
    job = one(resources, "Job", "recstream-text-encoder")
    [container] = containers(job)
    out = Path(_arg_value(container["args"], "--out") or "")
    out_mount = _mount_holding(container["volumeMounts"], out)
    assert not out_mount.get("readOnly")
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    worker_volumes = {v["name"]: v for v in pod_spec(one(resources, "StatefulSet"))["volumes"]}
    claim = worker_volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert volumes[out_mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
    seen_by_worker = Path(mount["mountPath"]) / out.relative_to(out_mount["mountPath"])
    assert seen_by_worker == encoder_dir
    model_dir = Path(settings_env(resources)["RECSTREAM_MODEL_DIR"])
    assert encoder_dir.parent == model_dir  # beside the versions, in the store root
    assert "recstream-train" in container["image"]  # the export needs torch


def test_serving_pods_do_not_use_the_training_image(overlay):
    _, resources = overlay
    for obj in resources:
        for c in containers(obj):
            is_train = "recstream-train" in c["image"]
            # The retraining and the text encoder export need torch; nothing else does.
            batch = obj["kind"] == "CronJob" or obj["metadata"]["name"] == "recstream-text-encoder"
            assert is_train == batch, f"{obj['kind']}: {c['image']}"
            assert ":" in c["image"].rsplit("/", 1)[-1], f"untagged image {c['image']}"


# ------------------------------------------------------------------ negative tests


def test_checks_catch_violations():
    resources = kustomize.build(ROOT / "k8s" / "overlays" / "gpu")
    broken = copy.deepcopy(resources)
    c = worker(broken)
    c["securityContext"]["readOnlyRootFilesystem"] = False
    c["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    del c["resources"]["limits"]["memory"]
    problems = security_violations(broken)
    assert any("root filesystem is writable" in p for p in problems)
    assert any("capabilities not dropped" in p for p in problems)
    assert any("adds capabilities" in p for p in problems)
    assert any("no memory request and limit" in p for p in problems)

    sts = one(broken, "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/x"
    assert schema_violations(sts, KUBERNETES_VERSIONS[0])  # strict: unknown field
    so = copy.deepcopy(one(resources, "ScaledObject"))
    so["spec"]["maxReplicas"] = 4  # misspelt maxReplicaCount
    assert schema_violations(so, KUBERNETES_VERSIONS[0])


def test_schema_catches_a_wrong_json6902_patch(tmp_path):
    """The GPU overlay's anti-affinity patch, written wrongly, must fail validation."""
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    path = tmp_path / "k8s" / "overlays" / "gpu" / "kustomization.yaml"
    text = path.read_text()
    wrong = text.replace(
        "requiredDuringSchedulingIgnoredDuringExecution/-",
        "requiredDuringSchedulingIgnoredDuringExecution",
    )
    assert wrong != text
    path.write_text(wrong)
    sts = one(kustomize.build(tmp_path / "k8s" / "overlays" / "gpu"), "StatefulSet")
    assert schema_violations(sts, KUBERNETES_VERSIONS[0])


def test_real_kustomize_agrees(overlay):
    """Where a kustomize or kubectl binary exists, our builder must match it."""
    name, resources = overlay
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build"]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize"]
    else:
        pytest.skip("no kustomize or kubectl binary here (none is installable from PyPI)")
    out = subprocess.run(
        [*cmd, str(ROOT / "k8s" / "overlays" / name)], check=True, capture_output=True, text=True
    ).stdout
    real = list(yaml.safe_load_all(out))
    suffix = re.compile(r"recstream-settings-[a-z0-9]{10}")

    def normal(objs: list[dict[str, Any]]) -> list[str]:
        return sorted(
            suffix.sub("recstream-settings-HASH", json.dumps(o, sort_keys=True)) for o in objs
        )

    assert normal(real) == normal(resources)


def test_workers_and_archiver_share_the_pseudonym_keys(overlay):
    """Both keys: the archive holds the workers' pseudonyms, and the archiver maps an
    erasure request's id to the same pseudonym (and names it as the audit does)."""
    _, resources = overlay
    archiver = next(
        c
        for r in resources
        if r["kind"] == "Deployment" and "archive" in r["metadata"]["name"]
        for c in containers(r)
    )
    for container in (worker(resources), archiver):
        env = {v["name"]: v for v in container["env"]}
        ref = env["RECSTREAM_PRIVACY_USER_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "recstream-pseudonym-key", "key": "user-key"}
        ref = env["RECSTREAM_LOG_PSEUDONYM_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "recstream-pseudonym-key", "key": "key"}


# ------------------------------------------------------------------ the documented apply

#: The first `kubectl apply` of docs/DEPLOY.md ("Apply", "Upgrades"): everything but
#: the workloads that consume the topics or the encoder.
FIRST_APPLY = "app.kubernetes.io/component notin (worker,archiver,retrain)"


def _selected(obj: dict[str, Any], selector: str) -> bool:
    """Kubernetes' ``KEY notin (A,B)``: true where the label is absent or another value."""
    match = re.fullmatch(r"(\S+) notin \(([^)]*)\)", selector)
    assert match, selector
    value = obj["metadata"].get("labels", {}).get(match.group(1))
    return value not in match.group(2).split(",")


def _references(obj: dict[str, Any]) -> set[tuple[str, str]]:
    """(kind, name) of the ConfigMaps, Secrets, claims and service account a pod uses."""
    spec = pod_spec(obj) or {}
    refs = (
        {("ServiceAccount", spec["serviceAccountName"])} if "serviceAccountName" in spec else set()
    )
    for volume in spec.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
    for c in containers(obj):
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                refs.add(("ConfigMap", source["configMapRef"]["name"]))
        for var in c.get("env", []):
            if "secretKeyRef" in var.get("valueFrom", {}):
                refs.add(("Secret", var["valueFrom"]["secretKeyRef"]["name"]))
    return refs


def test_the_first_apply_runs_the_jobs_before_any_workload(overlay):
    """The Jobs (topics, text encoder) and all they need, and no worker, archiver or
    CronJob of the new version: those come with the second apply, once the topics and
    the encoder exist."""
    _, resources = overlay
    assert FIRST_APPLY in (ROOT / "docs" / "DEPLOY.md").read_text()
    first = [r for r in resources if _selected(r, FIRST_APPLY)]
    names = {(r["kind"], r["metadata"]["name"]) for r in first}
    assert {("Job", "recstream-topics"), ("Job", "recstream-text-encoder")} <= names
    assert not {r["kind"] for r in first} & {"StatefulSet", "Deployment", "CronJob"}
    assert ("Namespace", "recstream") in names
    for job in (r for r in first if r["kind"] == "Job"):
        assert _references(job) <= names, job["metadata"]["name"]
    rest = [r for r in resources if not _selected(r, FIRST_APPLY)]
    assert {r["kind"] for r in rest} >= {"StatefulSet", "Deployment", "CronJob"}
