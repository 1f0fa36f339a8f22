"""Slack incoming-webhook alerts."""

from __future__ import annotations

from typing import Any

from mlflow_kpigate.notify.http import post_json

_ICON = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


class SlackNotifier:
    """Posts one message per alert to a Slack incoming webhook."""

    def __init__(self, webhook_url: str) -> None:
        self.url = webhook_url

    def alert(self, *, severity: str, summary: str, dedup_key: str,
              details: dict[str, Any]) -> None:
        """Send the alert (Slack has no de-duplication; the controller sends each key once)."""
        lines = [f"{_ICON.get(severity, '')} *{severity.upper()}* {summary}".strip()]
        for key in ("deployment", "model", "candidate_version", "baseline_version", "phase",
                    "weights"):
            if details.get(key) is not None:
                lines.append(f"• {key}: {details[key]}")
        lines.append(f"• incident: `{dedup_key}`")
        post_json(self.url, {"text": "\n".join(lines)})
