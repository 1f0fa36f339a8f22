"""Alerts on rollbacks and on holds past a stage's maximum: Slack and PagerDuty.

Configured in the policy's ``alerts`` section; secrets (webhook URL, routing key) are read
from environment variables named there, never written in the policy file. Alerts go only
to https on the official Slack and PagerDuty hosts unless the policy opts in to others
(``alerts.allow_custom_hosts``; :mod:`mlflow_kpigate.policy.alert_urls`).
"""

from __future__ import annotations

import os
from typing import Any

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.notify.pagerduty import PagerDutyNotifier
from mlflow_kpigate.notify.slack import SlackNotifier
from mlflow_kpigate.policy import SLACK_HOSTS, Policy, alert_url_problem

SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}


class MultiNotifier:
    """Sends each alert at or above ``min_severity`` to every configured channel."""

    def __init__(self, channels: list[Any], min_severity: str = "warning") -> None:
        self.channels = channels
        self.min_severity = min_severity

    def alert(self, *, severity: str, summary: str, dedup_key: str,
              details: dict[str, Any]) -> None:
        """Deliver to every channel; raise the first failure after trying all."""
        if SEVERITY_ORDER.get(severity, 1) < SEVERITY_ORDER[self.min_severity]:
            return
        failures: list[Exception] = []
        for channel in self.channels:
            try:
                channel.alert(severity=severity, summary=summary, dedup_key=dedup_key,
                              details=details)
            except Exception as exc:  # one channel down must not silence the others
                failures.append(exc)
        if failures:
            raise failures[0]


def notifier_from_policy(policy: Policy) -> MultiNotifier | None:
    """The policy's alert channels, or None when it configures none.

    Raises ``UsageError`` when a named environment variable is not set, so a rollout never
    starts believing it will page someone when it cannot.
    """
    cfg = policy.alerts
    if cfg is None:
        return None
    channels: list[Any] = []
    if cfg.slack_webhook_env:
        url = os.environ.get(cfg.slack_webhook_env)
        if not url:
            raise UsageError(f"alerts.slack.webhook_url_env: environment variable "
                             f"{cfg.slack_webhook_env} is not set")
        problem = alert_url_problem(url, SLACK_HOSTS, cfg.allow_custom_hosts)
        if problem:  # the message names the variable, never its value (a secret)
            raise UsageError(f"alerts.slack.webhook_url_env: the URL in "
                             f"{cfg.slack_webhook_env}: {problem}")
        channels.append(SlackNotifier(url))
    if cfg.pagerduty_key_env:
        key = os.environ.get(cfg.pagerduty_key_env)
        if not key:
            raise UsageError(f"alerts.pagerduty.routing_key_env: environment variable "
                             f"{cfg.pagerduty_key_env} is not set")
        channels.append(PagerDutyNotifier(key, cfg.pagerduty_url))
    return MultiNotifier(channels, cfg.min_severity) if channels else None
