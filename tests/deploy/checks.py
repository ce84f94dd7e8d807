"""Policy checks on built manifests; each returns a list of violations (empty = OK).

Kept apart from the tests so the negative tests can show each check catching a
broken manifest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate

from tests.deploy.crd_schemas import CRD_SCHEMAS

__all__ = [
    "KUBERNETES_VERSIONS",
    "containers",
    "pod_spec",
    "schema_violations",
    "security_violations",
]

# The oldest Kubernetes the manifests support (persistentVolumeClaimRetentionPolicy is
# GA in 1.32) and the newest schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())


def schema_violations(obj: dict[str, Any], version: str) -> list[str]:
    """Strict schema validation: core kinds by kubernetes-validate, CRDs by ours."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    crd = CRD_SCHEMAS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
    if crd is not None:
        errors = jsonschema.Draft202012Validator(crd).iter_errors(obj)
        return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'/'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    return []


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Pod, Deployment, StatefulSet, Job, CronJob...)."""
    kind = obj["kind"]
    if kind == "Pod":
        return dict(obj["spec"])
    if kind == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return dict(obj["spec"]["template"]["spec"])
    return None


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container and init container of a workload."""
    spec = pod_spec(obj)
    if spec is None:
        return
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def security_violations(resources: list[dict[str, Any]]) -> list[str]:
    """Non-root, read-only root, no privilege escalation, capabilities dropped."""
    problems: list[str] = []
    for obj in resources:
        spec = pod_spec(obj)
        if spec is None:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: service account token is mounted")
        for c in containers(obj):
            sc = c.get("securityContext", {})
            name = f"{where}/{c['name']}"
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if non_root is not True:
                problems.append(f"{name}: runAsNonRoot is not true")
            if uid is not None and uid == 0:
                problems.append(f"{name}: runs as uid 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: privilege escalation allowed")
            if sc.get("privileged"):
                problems.append(f"{name}: privileged")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}: capabilities not dropped (drop: [ALL])")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{name}: adds capabilities")
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                problems.append(f"{name}: no writable /tmp with a read-only root")
            limits = c.get("resources", {}).get("limits", {})
            requests = c.get("resources", {}).get("requests", {})
            for res in ("cpu", "memory"):
                if res not in requests or res not in limits:
                    problems.append(f"{name}: no {res} request and limit")
    return problems
