"""Checks of an embedded rollout's controller ``/metrics``, for tests that already run one.

:func:`check_controller_metrics` reads the address from the rollout's ``metrics.json``,
scrapes it, has ``promtool check metrics`` lint it and checks the series the dashboard and
the alert rules select on. :func:`check_rules_on` feeds those very series to
``promtool test rules``: the rules of examples/prometheus/rules.yml see the rollout, and
when its controller's series go away unfinished, ``KpigateControllerDown``'s expression
names it.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import requests
import yaml
from _k8s_validation import PROMETHEUS, metric_names, promtool, rules
from processes import wait_for
from prometheus_client.parser import text_string_to_metric_families

from mlflow_kpigate.deploy.local_layout import metrics_endpoint

TOOL_LIMIT_S = 60  # a ceiling for a wedged tool, not a performance threshold


def check_controller_metrics(directory: Path, name: str, stage: int) -> str:
    """The controller's exposition, after checking it (see the module doc)."""
    url = wait_for(lambda: metrics_endpoint(directory), "the controller's metrics.json")
    assert url.startswith("http://127.0.0.1:"), url
    text = wait_for(lambda: requests.get(url, timeout=10).text, f"{url} to answer")
    lint = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=TOOL_LIMIT_S, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert not lint.stdout.strip(), lint.stdout  # no lint problem either
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    mine = (("deployment", name), ("namespace", "local"))
    assert samples[("kpigate_rollout_stage", mine)] == stage
    assert samples[("kpigate_rollout_phase", (*mine, ("phase", "canary")))] == 1
    assert samples[("kpigate_readiness_waiting_seconds", mine)] == 0  # no readiness wait
    assert samples[("kpigate_rollout_paused", mine)] == 0
    assert all(dict(labels).get("namespace") == "local" for _, labels in samples)
    return text


def _input_series(text: str) -> list[dict[str, str]]:
    """Every series the rules read, as scraped, for 10 minutes; then gone (stale)."""
    used = set().union(*(metric_names(r["expr"]) for r in rules()))
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in used:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                value = {math.inf: "Inf", -math.inf: "-Inf"}.get(s.value, repr(s.value))
                out.append({"series": f"{s.name}{{{labels}}}",
                            "values": " ".join([value] * 11 + ["stale"])})
    return out


def check_rules_on(text: str, name: str, tmp: Path) -> None:
    """``promtool test rules`` on the scraped series (see the module doc)."""
    by_alert = {r["alert"]: r["expr"] for r in rules()}
    me = [{"labels": f'{{deployment="{name}", namespace="local"}}', "value": 1}]
    cases: list[dict[str, Any]] = [
        {"expr": by_alert["KpigateControllerDown"], "eval_time": "5m", "exp_samples": []},
        {"expr": by_alert["KpigateControllerDown"], "eval_time": "20m", "exp_samples": me},
    ]
    for quiet in ("KpigateReadinessWaitingTooLong", "KpigateHolding",
                  "KpigateMetricsUnavailable", "KpigateRollback"):
        cases.append({"expr": by_alert[quiet], "eval_time": "8m", "exp_samples": []})
    suite = {"rule_files": [str(PROMETHEUS / "rules.yml")], "evaluation_interval": "1m",
             "tests": [{"name": f"local rollout {name}", "interval": "1m",
                        "input_series": _input_series(text), "promql_expr_test": cases}]}
    path = tmp / "local_rules_test.yml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=TOOL_LIMIT_S, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
