"""PagerDuty Events API v2 alerts, de-duplicated by incident key."""

from __future__ import annotations

from typing import Any

from mlflow_kpigate.notify.http import post_json

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
# PagerDuty's severities; kpigate's "critical" / "warning" / "info" map directly.
_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


class PagerDutyNotifier:
    """Triggers PagerDuty events; the same ``dedup_key`` updates one incident, not many."""

    def __init__(self, routing_key: str, url: str = DEFAULT_URL, source: str = "kpigate") -> None:
        self.routing_key = routing_key
        self.url = url
        self.source = source

    def alert(self, *, severity: str, summary: str, dedup_key: str,
              details: dict[str, Any]) -> None:
        """Trigger (or re-trigger) the incident ``dedup_key``."""
        post_json(self.url, {
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key[:255],
            "payload": {
                "summary": summary[:1024],
                "source": self.source,
                "severity": _SEVERITY.get(severity, "warning"),
                "component": str(details.get("deployment", "")),
                "group": str(details.get("model", "")),
                "class": "kpigate-rollout",
                "custom_details": details,
            },
        })
