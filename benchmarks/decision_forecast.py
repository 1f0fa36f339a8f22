"""The forecast time to decision beside the simulated one, for decision_efficiency.py.

For the kpigate rules (``kpigate``, ``kpigate_shadow``) each scenario cell gets two
forecasts, so the issue's target ("the forecast within ±30% of the simulated time to
decision") is measured rather than assumed:

* ``forecast_hours`` — what ``mlflow deployments create -C expected_rps=…`` prints before
  the rollout (:func:`mlflow_kpigate.gate.forecast.plan_forecast`: the registry baseline's
  figures, the stream's request rate and label delay): for a candidate equal to the
  baseline while the rollout runs, the full rollout; for a candidate whose only change is
  a lower recall, its rollback in the first stage, forecast with the recall KPI's
  ``detect`` set to that shift. Other scenarios: null;
* ``forecast_hours_mean`` (equal candidates only; :mod:`mlflow_kpigate.simulate.figures`)
  — the full rollout the controller forecast from measured traffic once the first stage
  had run its ``min_dwell``, averaged over the runs.

Both are compared with ``time_to_decision_hours_mean``, the mean over the runs that
decided within the horizon: when some runs still hold at the horizon (``hold_rate``) that
mean is cut short, so the table shows the hold rate beside the ratios.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.gate.forecast import plan_forecast
from mlflow_kpigate.policy import KpiKind, Margin, Policy
from mlflow_kpigate.simulate import StreamSpec

#: The rules that forecast (the gate on the policy, with or without a shadow stage).
FORECASTING = ("kpigate", "kpigate_shadow")


def equal_while_rolling_out(stream: StreamSpec) -> bool:
    """The candidate's truth is the baseline's until the rollout ends."""
    drifts = stream.candidate_recall_drift != 0 and not stream.drift_after_promotion
    return stream.candidate == stream.baseline and not drifts


def recall_shift(stream: StreamSpec) -> float | None:
    """How much lower the candidate's recall is, when that is its only change."""
    c, b = stream.candidate, stream.baseline
    shift = b.recall - c.recall
    if shift <= 0 or stream.candidate_recall_drift or replace(c, recall=b.recall) != b:
        return None
    return shift


def created_hours(policy: Policy, stream: StreamSpec, registry: RegistryBaseline
                  ) -> float | None:
    """``forecast_hours`` of one (scenario, policy); see the module docstring."""
    rate = stream.requests_per_interval / policy.evaluation.interval
    if equal_while_rolling_out(stream):
        fc = plan_forecast(policy, registry, rate, stream.label_delay_s, "benchmark")
        return fc.full_rollout_s / 3600 if fc.stages and not fc.notes else None
    shift = recall_shift(stream)
    recall = next((k for k in policy.kpis if k.decides and k.kind is KpiKind.PROPORTION
                   and k.metric == "recall"), None)
    if shift is None or recall is None:
        return None
    shifted = replace(recall, detect=Margin(shift, False))
    kpis = tuple(shifted if k is recall else k for k in policy.kpis)
    fc = plan_forecast(replace(policy, kpis=kpis), registry, rate, stream.label_delay_s,
                       "benchmark")
    first = fc.stages[0].kpi(recall.name) if fc.stages else None
    if first is None or not math.isfinite(first.at_margin_s):
        return None
    return first.at_margin_s / 3600


def _ratio(forecast: float | None, simulated: float | None) -> str:
    if not forecast or not simulated:
        return "—"
    return f"{forecast / simulated:.2f}"


def _hours(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


HEADERS = ["scenario", "rule", "simulated (h, mean)", "still holding",
           "create-time forecast (h)", "forecast ÷ simulated",
           "controller's forecast (h, mean)", "÷ simulated"]


def rows(result: dict[str, Any], names: list[str]) -> list[list[str]]:
    """One row per scenario × forecasting rule that has a forecast."""
    out = []
    for name in names:
        for rule in FORECASTING:
            cell = result["scenarios"][name].get(rule)
            if cell is None or (cell.get("forecast_hours") is None
                                and cell.get("forecast_hours_mean") is None):
                continue
            sim = cell["time_to_decision_hours_mean"]
            out.append([name, rule, _hours(sim), f"{cell['hold_rate'] * 100:.1f}%",
                        _hours(cell["forecast_hours"]), _ratio(cell["forecast_hours"], sim),
                        _hours(cell["forecast_hours_mean"]),
                        _ratio(cell["forecast_hours_mean"], sim)])
    return out


def markdown(result: dict[str, Any], names: list[str]) -> list[str]:
    """The README's table (empty when no cell has a forecast)."""
    body = rows(result, names)
    if not body:
        return []
    return ["**Time to decision against the forecast** (equal candidates: the full "
            "rollout; recall-only regressions: the rollback. Simulated: mean over the runs "
            "that decided within the horizon)", "",
            "| " + " | ".join(HEADERS) + " |", "|---|---" + "|---:" * (len(HEADERS) - 2) + "|",
            *("| " + " | ".join(r) + " |" for r in body), ""]


def print_table(result: dict[str, Any]) -> None:
    """The same table for the console."""
    body = rows(result, list(result["scenarios"]))
    if not body:
        return
    print("\ntime to decision against the forecast (create-time: registry figures at the "
          "stream's rate; controller's: measured, after the first stage's min_dwell)")
    widths = [max(len(r[i]) for r in [HEADERS, *body]) for i in range(len(HEADERS))]
    for r in [HEADERS, *body]:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))
