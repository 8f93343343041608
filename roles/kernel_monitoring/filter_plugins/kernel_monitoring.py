"""Filters for the kernel_monitoring role: turn what the endpoints answered into report evidence."""

from __future__ import annotations

from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

# Only the kernel's own series go into the evidence; process_* and python_* are noise there.
_PREFIX = "quantum_kernel_"


def kernel_monitoring_samples(text: str) -> dict[str, float]:
    """Exposition text -> {'name{label="v",...}': value} for the kernel's series.

    A damaged or empty text gives what parsed before the damage (never an exception): the
    report shows what was readable and the endpoint's status says the rest.
    """
    samples: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text or ""):
            for s in family.samples:
                if not s.name.startswith(_PREFIX) or s.name.endswith(("_bucket", "_created")):
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    except ValueError:
        pass
    return samples


def kernel_monitoring_endpoint(pair: list[Any]) -> dict[str, Any]:
    """(loop item of a /metrics scrape, its HTTP status) -> one row of the endpoint table."""
    item, status = pair
    return {
        "name": item["name"],
        "url": f"http://{item['listen']}/metrics",
        "answers": status == 200,
        "status": status,
    }


def kernel_monitoring_alerts(rules_text: str) -> list[dict[str, str]]:
    """The rendered rules file -> [{alert, severity, for, expr, runbook}] in file order."""
    doc = yaml.safe_load(rules_text) or {}
    out = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" not in rule:
                continue
            out.append(
                {
                    "alert": rule["alert"],
                    "severity": str(rule.get("labels", {}).get("severity", "")),
                    "for": str(rule.get("for", "0s")),
                    "expr": " ".join(str(rule["expr"]).split()),
                    "runbook": str(rule.get("annotations", {}).get("runbook", "")),
                }
            )
    return out


def kernel_monitoring_target(target: dict[str, Any]) -> dict[str, str]:
    """One of Prometheus's activeTargets -> job, address, health, last error."""
    labels = target.get("labels", {})
    return {
        "job": str(labels.get("job", "")),
        "instance": str(labels.get("instance", "")),
        "health": str(target.get("health", "")),
        "error": str(target.get("lastError", "")),
    }


def kernel_monitoring_alert_state(alert: dict[str, Any]) -> dict[str, str]:
    """One of Prometheus's /api/v1/alerts entries -> name, state, since."""
    return {
        "alert": str(alert.get("labels", {}).get("alertname", "")),
        "state": str(alert.get("state", "")),
        "since": str(alert.get("activeAt", "")),
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "kernel_monitoring_samples": kernel_monitoring_samples,
            "kernel_monitoring_endpoint": kernel_monitoring_endpoint,
            "kernel_monitoring_alerts": kernel_monitoring_alerts,
            "kernel_monitoring_target": kernel_monitoring_target,
            "kernel_monitoring_alert_state": kernel_monitoring_alert_state,
        }
