"""The alert rules, unit-tested with Prometheus's own ``promtool``.

Each alert in ``docker/prometheus/alerts.yml`` has ``docker/prometheus/tests/<Alert>.test.yml``:
input series that fire it (labels and annotations checked) and series that must not.
``make test`` installs promtool (Debian's ``prometheus`` package) when it runs as root
with apt; elsewhere the promtool tests skip, saying why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "docker" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
TESTS_DIR = PROM_DIR / "tests"


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def promtool_test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.test.yml"))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(
            "promtool not installed: `make test` installs it (apt-get install prometheus) "
            "when run as root with apt; otherwise install Debian's `prometheus` package"
        )
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def rule_tests(path: Path) -> list[dict[str, Any]]:
    """The ``alert_rule_test`` entries of one promtool test file."""
    doc = yaml.safe_load(path.read_text())
    return [case for test in doc.get("tests", []) for case in test.get("alert_rule_test", [])]


def test_promtool_checks_the_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    files = [str(p.relative_to(ROOT)) for p in promtool_test_files()]
    assert files
    result = run_promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


@pytest.mark.parametrize("alert", alert_names())
def test_every_alert_has_a_promtool_test_that_fires_it_and_one_that_does_not(alert: str) -> None:
    path = TESTS_DIR / f"{alert}.test.yml"
    assert path.is_file(), f"{alert} has no promtool test: add {path.relative_to(ROOT)}"
    doc = yaml.safe_load(path.read_text())
    assert "../alerts.yml" in doc.get("rule_files", []), f"{path.name} must load ../alerts.yml"
    cases = [case for case in rule_tests(path) if case.get("alertname") == alert]
    assert any(case.get("exp_alerts") for case in cases), f"{path.name} never fires {alert}"
    assert any(not case.get("exp_alerts") for case in cases), (
        f"{path.name} has no case where {alert} must not fire"
    )
    for case in cases:
        for expected in case.get("exp_alerts") or []:
            assert expected.get("exp_labels", {}).get("severity"), f"{path.name}: check labels"
            assert expected.get("exp_annotations", {}).get("summary"), (
                f"{path.name}: check annotations"
            )


def test_every_promtool_test_file_names_an_existing_alert() -> None:
    known = set(alert_names())
    for path in promtool_test_files():
        named = {case.get("alertname") for case in rule_tests(path)}
        assert path.name.removesuffix(".test.yml") in known, f"{path.name}: no such alert"
        assert named <= known, f"{path.name} tests unknown alerts {named - known}"
