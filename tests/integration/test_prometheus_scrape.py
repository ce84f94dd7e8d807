"""A real Prometheus server scrapes a live worker and loads the alert rules.

The ``prometheus`` binary (Debian's ``prometheus`` package, which ``make test``
installs as root with apt) runs as a child process with a temporary config and
storage, scraping the worker's ``/metrics`` every second.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.lab.scratch import free_port
from models.synthetic import SyntheticShop
from streams.client import event_from_dict

from .conftest import Deployment

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="no prometheus binary: `make test` installs it (apt-get install prometheus) "
        "when run as root with apt; otherwise install Debian's `prometheus` package",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"


@dataclasses.dataclass
class PrometheusServer:
    """A ``prometheus`` child process on a free 127.0.0.1 port."""

    binary: str
    workdir: Path
    port: int = dataclasses.field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self, targets: list[str]) -> PrometheusServer:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "recstream",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_until(lambda: self.get("/-/ready") is not None, 30, "never became ready")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:  # noqa: S310
                return bytes(resp.read())
        except (urllib.error.URLError, OSError, TimeoutError):
            return None

    def api(self, path: str) -> Any:
        body = self.get(path)
        assert body is not None, f"{path} did not answer:\n{self.log_tail()}"
        reply = json.loads(body)
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, promql: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = self.api("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_until(self, check: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
            if check():
                return
            time.sleep(0.25)
        raise TimeoutError(f"prometheus: {what} after {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    assert PROMETHEUS is not None
    server = PrometheusServer(PROMETHEUS, tmp_path / "prometheus")
    server.workdir.mkdir()
    yield server
    server.stop()


def alert_names() -> set[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_prometheus_scrapes_a_live_worker_and_evaluates_the_alert_rules(
    deployment: Deployment, shop: SyntheticShop, prometheus: PrometheusServer
) -> None:
    worker = deployment.start_worker()
    prometheus.start([worker.url.removeprefix("http://")])

    events = [event_from_dict(dataclasses.asdict(e)) for e in shop.events[:30]]
    with deployment.producer() as producer:
        for ev in events:
            producer.send(ev)
    deployment.read_json(deployment.topics.recommendations, lambda rs: len(rs) >= len(events))

    def scraped(promql: str, at_least: float) -> bool:
        value = prometheus.query(promql)
        return value is not None and value >= at_least

    prometheus.wait_until(lambda: scraped('up{job="recstream"}', 1), 20, "target never up")
    prometheus.wait_until(
        lambda: scraped("sum(recstream_recommendations_produced_total)", len(events)),
        20,
        "recommendations never scraped",
    )
    assert prometheus.query('up{job="recstream"}') == 1
    assert (prometheus.query("sum(recstream_events_consumed_total)") or 0) >= len(events)
    assert (prometheus.query("sum(recstream_recommendations_produced_total)") or 0) >= len(events)
    assert prometheus.query("max(recstream_ready)") == 1

    # The alert rules load, and every one evaluates without error against real series.
    def rules() -> list[dict[str, Any]]:
        groups = prometheus.api("/api/v1/rules?type=alert")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def evaluated() -> bool:
        current = rules()
        return bool(current) and all(r["health"] == "ok" for r in current)

    prometheus.wait_until(evaluated, 15, "alert rules not all evaluated and healthy")
    loaded = rules()
    assert {r["name"] for r in loaded} == alert_names()
    assert all(r["health"] == "ok" for r in loaded), [
        (r["name"], r.get("lastError")) for r in loaded
    ]
    firing = [r["name"] for r in loaded if r["state"] == "firing"]
    assert not firing, f"a healthy worker fires {firing}"
