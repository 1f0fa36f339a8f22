"""Validation of the small sections: evaluation, control limits, alerts and readiness."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow_kpigate.policy.alert_urls import PAGERDUTY_HOSTS, alert_url_problem
from mlflow_kpigate.policy.model import AlertsConfig, ControlLimits, Evaluation, Readiness
from mlflow_kpigate.policy.problems import (
    Problems,
    as_duration,
    as_enum,
    as_mapping,
    as_number,
    type_name,
)
from mlflow_kpigate.policy.vocabulary import ReadinessAction

_EVAL_KEYS = ("interval", "maturity", "alpha_rollback", "alpha_promote", "power",
              "window_share")


def validate_evaluation(p: Problems, raw: Any) -> Evaluation:
    """``evaluation``; an explicit empty value (``evaluation:``) means all defaults."""
    evaluation = Evaluation()
    ev = as_mapping(p, "evaluation", raw) if raw is not None else {}
    if ev is None:
        return evaluation
    p.unknown_keys("evaluation", ev, _EVAL_KEYS)
    interval = as_duration(p, "evaluation.interval", ev.get("interval", evaluation.interval))
    if interval is not None and interval <= 0:
        p.add("evaluation.interval", "must be > 0, e.g. 5m")
        interval = None
    maturity = as_duration(p, "evaluation.maturity", ev.get("maturity", evaluation.maturity))
    a_r = as_number(p, "evaluation.alpha_rollback", ev.get("alpha_rollback", 0.05),
                    lo=0, hi=0.5, lo_open=True)
    a_p = as_number(p, "evaluation.alpha_promote", ev.get("alpha_promote", 0.05),
                    lo=0, hi=0.5, lo_open=True)
    power = as_number(p, "evaluation.power", ev.get("power", 0.8), lo=0.5, hi=1, hi_open=True)
    # The recent-window check's share of alpha_rollback; the pooled checks keep the rest.
    share = as_number(p, "evaluation.window_share", ev.get("window_share", 0.0), lo=0, hi=1,
                      hi_open=True)
    if interval is not None and maturity is not None and a_r is not None \
            and a_p is not None and power is not None and share is not None:
        evaluation = Evaluation(interval, maturity, a_r, a_p, power, window_share=share)
    return evaluation


def validate_control_limits(p: Problems, raw: Any) -> ControlLimits:
    """``control_limits``: the registry guard's σ multiple ``k``."""
    control = ControlLimits()
    cl = as_mapping(p, "control_limits", raw)
    if cl is not None:
        p.unknown_keys("control_limits", cl, ("k",))
        kval = cl.get("k")
        if kval is not None:
            kk = as_number(p, "control_limits.k", kval, lo=0, lo_open=True)
            control = ControlLimits(kk)
    return control


def _env_name(p: Problems, path: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value or not all(
            c.isalnum() or c == "_" for c in value) or value[0].isdigit():
        p.add(path, "must be the NAME of an environment variable holding the secret "
              "(e.g. KPIGATE_SLACK_WEBHOOK), not the secret itself")
        return None
    return value


def _secret_env(p: Problems, path: str, section: Mapping[str, Any], key: str,
                what: str) -> str | None:
    """The environment-variable name under ``section[key]`` (required)."""
    if key not in section:
        p.add(path, f"needs '{key}' (the environment variable holding {what})")
        return None
    return _env_name(p, f"{path}.{key}", section[key])


def validate_alerts(p: Problems, raw: Any) -> AlertsConfig | None:
    """``alerts``: Slack and PagerDuty by the names of the variables holding secrets."""
    cfg = as_mapping(p, "alerts", raw)
    if cfg is None:
        return None
    p.unknown_keys("alerts", cfg, ("slack", "pagerduty", "min_severity", "allow_custom_hosts"))
    custom = cfg.get("allow_custom_hosts", False)
    if not isinstance(custom, bool):
        p.add("alerts.allow_custom_hosts", f"must be true or false, got {type_name(custom)}")
        custom = False
    slack_env = pd_env = None
    pd_url = AlertsConfig.pagerduty_url
    if "slack" in cfg:
        slack = as_mapping(p, "alerts.slack", cfg["slack"])
        if slack is not None:
            p.unknown_keys("alerts.slack", slack, ("webhook_url_env",))
            slack_env = _secret_env(p, "alerts.slack", slack, "webhook_url_env",
                                    "the incoming-webhook URL")
    if "pagerduty" in cfg:
        pd = as_mapping(p, "alerts.pagerduty", cfg["pagerduty"])
        if pd is not None:
            p.unknown_keys("alerts.pagerduty", pd, ("routing_key_env", "url"))
            pd_env = _secret_env(p, "alerts.pagerduty", pd, "routing_key_env",
                                 "the Events API v2 routing key")
            if "url" in pd:
                url = pd["url"]
                problem = (alert_url_problem(url, PAGERDUTY_HOSTS, custom)
                           if isinstance(url, str) else "must be an https:// URL")
                if problem:
                    p.add("alerts.pagerduty.url", problem)
                else:
                    pd_url = url.strip()
    severity = cfg.get("min_severity", "warning")
    if severity not in ("info", "warning", "critical"):
        p.add("alerts.min_severity", f"must be info, warning or critical; got {severity!r}")
        severity = "warning"
    return AlertsConfig(slack_env, pd_env, pd_url, severity, allow_custom_hosts=custom)


def validate_readiness(p: Problems, raw: Any) -> Readiness:
    """``readiness``: how long a stage's traffic may take to be ready, and then what."""
    cfg = as_mapping(p, "readiness", raw)
    if cfg is None:
        return Readiness()
    p.unknown_keys("readiness", cfg, ("timeout", "on_timeout"))
    timeout = as_duration(p, "readiness.timeout", cfg.get("timeout", Readiness.timeout))
    if timeout is not None and timeout <= 0:
        p.add("readiness.timeout", "must be > 0, e.g. 10m")
        timeout = None
    action = as_enum(p, "readiness.on_timeout", cfg.get("on_timeout", ReadinessAction.HOLD.value),
                     ReadinessAction)
    if timeout is None or action is None:
        return Readiness()
    return Readiness(timeout, action)

