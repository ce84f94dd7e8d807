"""JSON Schemas for the custom resources in k8s/ (kubernetes-validate has core kinds only).

Written from the CRDs' openAPIV3Schema (KEDA 2.x keda.sh/v1alpha1, Prometheus Operator
monitoring.coreos.com/v1), limited to the fields recstream uses and closed with
``additionalProperties: false`` there, so a misspelt field fails as it would against
the installed CRD.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CRD_SCHEMAS"]

_STR = {"type": "string"}
_INT = {"type": "integer"}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STR, "namespace": _STR, "labels": {"type": "object"}},
}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required or [],
        "additionalProperties": False,
    }


def _resource(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": _META, "spec": spec},
        ["apiVersion", "kind", "metadata", "spec"],
    )


_POLICY = _obj(
    {"type": {"enum": ["Pods", "Percent"]}, "value": _INT, "periodSeconds": _INT},
    ["type", "value", "periodSeconds"],
)
_RULES = _obj(
    {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": _POLICY},
    }
)
_SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    _obj(
        {
            "scaleTargetRef": _obj(
                {"apiVersion": _STR, "kind": _STR, "name": {"type": "string", "minLength": 1}},
                ["name"],
            ),
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "advanced": _obj(
                {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": _obj(
                        {"name": _STR, "behavior": _obj({"scaleUp": _RULES, "scaleDown": _RULES})}
                    ),
                }
            ),
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "type": _STR,
                        "name": _STR,
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "metadata": {"type": "object", "additionalProperties": _STR},
                        "authenticationRef": _obj(
                            {
                                "name": _STR,
                                "kind": {
                                    "enum": [
                                        "TriggerAuthentication",
                                        "ClusterTriggerAuthentication",
                                    ]
                                },
                            },
                            ["name"],
                        ),
                    },
                    ["type", "metadata"],
                ),
            },
        },
        ["scaleTargetRef", "triggers"],
    ),
)
_TRIGGER_AUTH = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    _obj(
        {
            "secretTargetRef": {
                "type": "array",
                "items": _obj(
                    {"parameter": _STR, "name": _STR, "key": _STR}, ["parameter", "name", "key"]
                ),
            }
        }
    ),
)
_SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _obj(
        {
            "jobLabel": _STR,
            "selector": _obj(
                {
                    "matchLabels": {"type": "object", "additionalProperties": _STR},
                    "matchExpressions": {"type": "array"},
                }
            ),
            "namespaceSelector": _obj(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}
            ),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "port": _STR,
                        "targetPort": {"type": ["string", "integer"]},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h))+)$"},
                        "scrapeTimeout": {
                            "type": "string",
                            "pattern": "^(0|([0-9]+(ms|s|m|h))+)$",
                        },
                        "honorLabels": {"type": "boolean"},
                    }
                ),
            },
        },
        ["selector", "endpoints"],
    ),
)

_PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _obj(
        {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "name": _STR,
                        "interval": {"type": "string"},
                        "rules": {
                            "type": "array",
                            "minItems": 1,
                            "items": _obj(
                                {
                                    "alert": _STR,
                                    "record": _STR,
                                    "expr": _STR,
                                    "for": {
                                        "type": "string",
                                        "pattern": "^(0|([0-9]+(ms|s|m|h))+)$",
                                    },
                                    "labels": {"type": "object", "additionalProperties": _STR},
                                    "annotations": {"type": "object", "additionalProperties": _STR},
                                },
                                ["expr"],
                            ),
                        },
                    },
                    ["name", "rules"],
                ),
            }
        },
        ["groups"],
    ),
)

CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): _PROMETHEUS_RULE,
    ("keda.sh/v1alpha1", "ScaledObject"): _SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _TRIGGER_AUTH,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _SERVICE_MONITOR,
}
