"""Run workers as child processes (the demo, the benchmarks and the tests use this).

A worker in its own process is what production runs; it also lets callers kill
it with SIGKILL to test crash recovery.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deploy.lab.brokers.base import Broker
from deploy.settings import Settings
from streams.topics import TopicNames, required_topics

__all__ = ["ScratchDeployment", "WorkerProcess", "free_port", "lab_settings", "settings_env"]

#: Consumer-group timings for the embedded broker (flat setting names): a restarted
#: worker rejoins in seconds instead of waiting out two default session timeouts.
FAST_GROUP_SETTINGS: dict[str, Any] = {
    "session_timeout_s": 3.0,
    "heartbeat_interval_s": 0.3,
    "rebalance_timeout_s": 3.0,
}


@dataclass(frozen=True)
class ScratchDeployment:
    """A throw-away deployment on a broker: uuid-tagged topics, app id and group.

    The benchmarks, the crash drill, online evaluation and the tests run workers
    against fresh topics, so runs never see each other's records, offsets or
    changelog.
    """

    bootstrap_servers: str
    app_id: str
    topics: TopicNames
    partitions: int
    tag: str

    @classmethod
    def create(cls, broker: Broker, purpose: str, partitions: int) -> ScratchDeployment:
        """Create the topics (inputs, output, DLQ, changelog) on ``broker``."""
        tag = uuid.uuid4().hex[:8]
        # Every topic of the deployment, each default name with the tag.
        topics = TopicNames(
            **{field: f"{name}-{tag}" for field, name in TopicNames().model_dump().items()}
        )
        app_id = f"recstream-{purpose}-{tag}"
        broker.create_topics(required_topics(app_id, topics, partitions))
        return cls(broker.bootstrap_servers, app_id, topics, partitions, tag)

    @property
    def client_config(self) -> dict[str, str]:
        """librdkafka settings for producers and consumers of this deployment."""
        return {"bootstrap.servers": self.bootstrap_servers}

    def topic_settings(self) -> dict[str, str]:
        """This deployment's topic names as flat settings (``topic_clicks``...)."""
        return {f"topic_{field}": name for field, name in self.topics.model_dump().items()}

    def worker_settings(self, model_dir: Path, state_dir: Path, **overrides: Any) -> Settings:
        """Validated settings of a worker of this deployment (CPU provider, fast group
        timings, a free local web port); ``overrides`` are flat setting names."""
        base: dict[str, Any] = {
            "kafka_bootstrap_servers": self.bootstrap_servers,
            "app_id": self.app_id,
            "partitions": self.partitions,
            **self.topic_settings(),
            "model_dir": model_dir,
            "state_dir": state_dir,
            "provider": "cpu",
            "log_level": "WARNING",
            **FAST_GROUP_SETTINGS,
        }
        return lab_settings(**{**base, **overrides})


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lab_settings(**changes: Any) -> Settings:
    """Validated settings for a lab worker: the defaults (never this process's own
    ``RECSTREAM_*`` environment) with ``changes`` by flat name, served on a free port
    of 127.0.0.1 unless ``web_port``/``web_host`` are given, with a random lookup API
    token unless ``api_token`` is given. A misspelt name raises."""
    local = {
        "web_host": "127.0.0.1",
        "web_advertised_host": "127.0.0.1",
        "web_port": free_port(),
        "api_token": secrets.token_hex(16),
    }
    return Settings.defaults().replace(**{**local, **changes})


def settings_env(**changes: Any) -> dict[str, str]:
    """``RECSTREAM_*`` variables for just these settings (flat names), validated."""
    env = Settings.defaults().replace(**changes).to_env()
    wanted = {Settings.fields()[name].env for name in changes}
    return {key: value for key, value in env.items() if key in wanted}


class WorkerProcess:
    """A ``recstream worker`` child process.

    Args:
        settings: the worker's settings; or flat setting names and values, applied to
            :func:`lab_settings` (defaults, a free local web port).
        log_path: file receiving the worker's stdout and stderr.
        source: run the worker code of this checkout (its root: ``python -m
            deploy.cli`` starts there), e.g. an older commit measured beside this one;
            default: the code of this process.
    """

    def __init__(
        self,
        settings: Settings | Mapping[str, Any],
        log_path: Path,
        source: Path | None = None,
    ) -> None:
        self.settings = settings if isinstance(settings, Settings) else lab_settings(**settings)
        self.log_path = log_path
        self.source = source
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the worker's web server."""
        return f"http://127.0.0.1:{self.settings.stream.web.port}"

    def start(self) -> WorkerProcess:
        """Spawn the worker (returns at once; see :meth:`wait_ready`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTREAM_")}
        env.update(self.settings.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "worker"],
            env=env,
            cwd=self.source,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as resp:  # noqa: S310
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, TimeoutError):
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the worker is ready; raises with the log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s} s:\n{self.log_tail()}")

    def lookup(self, path: str, token: str | None = None) -> tuple[int, Any]:
        """``GET path`` with the worker's API token (or ``token``): ``(status, JSON body)``."""
        secret = self.settings.stream.api.token.get_secret_value() if token is None else token
        request = urllib.request.Request(  # noqa: S310 - a local http URL
            self.url + path, headers={"Authorization": f"Bearer {secret}"} if secret else {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                return int(resp.status), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read() or b"null")

    def metrics_text(self) -> str:
        """The worker's ``/metrics`` page."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:  # noqa: S310
            return str(resp.read().decode())

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the worker log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful: flush, commit, leave the group), SIGKILL after a timeout."""
        rc = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        elif self.proc is not None:
            rc = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or committed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
