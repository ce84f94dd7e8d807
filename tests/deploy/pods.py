"""Run the containers of rendered Kubernetes manifests as local processes.

What a kubelet would do, minus the isolation: the image's entrypoint (``recstream``,
from the Dockerfiles' ``ENTRYPOINT``) plus the container's ``args``, with the
environment Kubernetes would inject (``envFrom`` ConfigMaps and Secrets, ``env``
values and ``secretKeyRef``/``configMapKeyRef``), and every volume mount mapped to a
local directory: one per PersistentVolumeClaim (shared by every pod that mounts it,
as a ReadWriteMany volume is), one per pod for ``volumeClaimTemplates`` and
``emptyDir``. Paths under a mount point, in the environment and in the arguments,
are rewritten to the local directory.

Only what a local machine cannot reproduce is overridden, and the caller names it
(the Kafka address and security of a test broker, a free web port per process).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.deploy.checks import containers, pod_spec

__all__ = ["LocalPod", "local_pods"]

#: The images' ``ENTRYPOINT ["recstream"]``, as this interpreter runs it.
ENTRYPOINT = [sys.executable, "-m", "deploy.cli"]


@dataclass
class LocalPod:
    """One container of one pod (replica), ready to run here."""

    kind: str
    name: str
    container: str
    replica: int
    args: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]
    read_only: set[str] = field(default_factory=set)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def argv(self, *extra: str) -> list[str]:
        """The command line: the entrypoint, the manifest's args, then ``extra``."""
        return [*ENTRYPOINT, *self.args, *extra]

    def run(
        self,
        log: Path,
        *extra: str,
        overrides: dict[str, str] | None = None,
        timeout_s: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion (a Job's or CronJob's container); output goes to ``log``."""
        out = subprocess.run(
            self.argv(*extra),
            env=self._environ(overrides),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(out.stdout + out.stderr)
        return out

    def start(self, log: Path, overrides: dict[str, str] | None = None) -> LocalPod:
        """Start a long-running container (a Deployment's or StatefulSet's)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv(), env=self._environ(overrides), stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, as Kubernetes sends it; SIGKILL after the grace period."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    rc = self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    rc = self.proc.wait()
            else:
                rc = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def _environ(self, overrides: dict[str, str] | None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
        return {**base, **self.env, **(overrides or {}), "PYTHONUNBUFFERED": "1"}


def _objects(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def _secret_value(secret: dict[str, Any], key: str) -> str:
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode()


def _env(container: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, str]:
    config_maps = _objects(resources, "ConfigMap")
    secrets = _objects(resources, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]].get("data", {}))
        elif "secretRef" in source:
            secret = secrets[source["secretRef"]["name"]]
            for key in {**secret.get("stringData", {}), **secret.get("data", {})}:
                env[key] = _secret_value(secret, key)
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            secret = secrets[ref["secretKeyRef"]["name"]]
            env[var["name"]] = _secret_value(secret, ref["secretKeyRef"]["key"])
        elif "configMapKeyRef" in ref:
            cm = config_maps[ref["configMapKeyRef"]["name"]]
            env[var["name"]] = cm["data"][ref["configMapKeyRef"]["key"]]
        elif ref.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[var["name"]] = "127.0.0.1"  # every "pod" runs on this machine
        else:
            raise NotImplementedError(f"valueFrom {sorted(ref)} of {var['name']}")
    return env


def _volume_dirs(obj: dict[str, Any], replica: int, root: Path) -> dict[str, Path]:
    """Volume name -> local directory for one pod of ``obj``."""
    spec = pod_spec(obj)
    assert spec is not None
    pod = f"{obj['metadata']['name']}-{replica}"
    dirs: dict[str, Path] = {}
    for volume in spec.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            dirs[volume["name"]] = root / "pvc" / claim
        elif "emptyDir" in volume:
            dirs[volume["name"]] = root / "emptydir" / pod / volume["name"]
        else:
            raise NotImplementedError(f"volume {volume['name']}: {sorted(volume)}")
    for template in obj.get("spec", {}).get("volumeClaimTemplates", []):
        name = template["metadata"]["name"]
        dirs[name] = root / "pvc" / f"{name}-{pod}"
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return dirs


def _map_paths(value: str, mounts: dict[str, Path]) -> str:
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")) :]
    return value


def local_pods(resources: list[dict[str, Any]], root: Path) -> dict[str, list[LocalPod]]:
    """Every container of every workload, by ``<kind>/<name>/<container>``: one
    :class:`LocalPod` per replica (``spec.replicas``, 1 for Jobs and CronJobs)."""
    pods: dict[str, list[LocalPod]] = {}
    for obj in resources:
        if pod_spec(obj) is None:
            continue
        replicas = int(obj.get("spec", {}).get("replicas", 1))
        for container in containers(obj):
            if "command" in container:  # would replace the image's entrypoint
                raise NotImplementedError(f"{obj['metadata']['name']}: container command")
            key = f"{obj['kind']}/{obj['metadata']['name']}/{container['name']}"
            for replica in range(replicas):
                dirs = _volume_dirs(obj, replica, root)
                mounts = {
                    m["mountPath"]: dirs[m["name"]] for m in container.get("volumeMounts", [])
                }
                read_only = {
                    m["mountPath"] for m in container.get("volumeMounts", []) if m.get("readOnly")
                }
                env = {k: _map_paths(v, mounts) for k, v in _env(container, resources).items()}
                args = [_map_paths(a, mounts) for a in container.get("args", [])]
                pods.setdefault(key, []).append(
                    LocalPod(
                        obj["kind"],
                        obj["metadata"]["name"],
                        container["name"],
                        replica,
                        args,
                        env,
                        mounts,
                        read_only,
                    )
                )
    return pods
