"""Alert rules and the dashboard only use metrics the worker really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from streams.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"
RULE = ROOT / "k8s" / "base" / "prometheusrule.yaml"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "recstream.json"


def exported_series() -> set[str]:
    names = set()
    for metric in Metrics().registry.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
    # Histograms/counters/infos show all their series once observed; add the suffixes.
    for base in list(names):
        names.update(
            {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_total", f"{base}_info"}
        )
    return names | {"up"}


def metric_names(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {w for w in words if w.startswith("recstream_") or w == "up"}


def test_alerts_reference_real_metrics_and_are_complete() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    known = exported_series()
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {
        "RecstreamNoRecommendations",
        "RecstreamDeadLetterRateHigh",
        "RecstreamLatencyOverSLO",
        "RecstreamRestoreStuck",
        "RecstreamHitRateDrop",
    }
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_the_checker_catches_an_unknown_metric() -> None:
    assert metric_names("rate(recstream_nope_total[5m]) > 0") - exported_series() == {
        "recstream_nope_total"
    }


def test_kubernetes_rule_matches_the_compose_rules() -> None:
    rule = yaml.safe_load(RULE.read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_dashboard_covers_the_operating_questions() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for needed in (
        "recstream_events_consumed_total",  # throughput
        "recstream_event_to_recommendation_seconds_bucket",  # latency percentiles
        "recstream_events_invalid_total",  # DLQ rate
        "recstream_inference_batch_size",  # batch size
        "recstream_model_info",  # model version
        "recstream_consumer_lag_records",  # lag
        "recstream_recommendation_hits_total",  # online feedback: hits
        "recstream_recommendations_total",  # ... per list
    ):
        assert needed in exprs, needed
