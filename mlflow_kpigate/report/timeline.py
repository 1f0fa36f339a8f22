"""The decision timeline: one chart of how the rollout was decided, over wall-clock time.

Top panel: the candidate's traffic share (a step line, as the router served it) with the
stage names and one marker per evaluation — promote ▲ (green), hold ● (grey), rollback ▼
(red). Below it, one panel per KPI (critical and guardrail first, at most
:data:`MAX_KPI_PANELS`): the anytime-valid interval [lower, upper] of Δ at each
evaluation as a bar, Δ as a point, and the two margins the gate held it against (rollback
if the upper bound falls below the red line; the KPI allows promotion once the lower
bound is above the green one). Δ is on the tested scale, positive = the candidate is
better, as in the per-KPI charts of :mod:`.charts`, whose drawing helpers this reuses.

It is written with the report (``timeline.png``) and also logged as the rollout run's
image (its "decision_timeline" chart in the MLflow UI).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.report.charts import _nan, _new_figure, chart_text
from mlflow_kpigate.report.formats import finite, fmt_time
from mlflow_kpigate.report.kpi_table import evidence_of

#: At most this many KPI panels (the rest are in the report's per-KPI charts).
MAX_KPI_PANELS = 6
_ROLE_ORDER = {"critical": 0, "guardrail": 1, "success": 2, "info": 3}
_MARKS = {Action.PROMOTE: ("^", "#2ca02c", "promote"), Action.HOLD: ("o", "#7f7f7f", "hold"),
          Action.ROLLBACK: ("v", "#d62728", "rollback")}


def _kpis(policy: Policy, decisions: Sequence[Decision]) -> list[str]:
    seen = [k for k in policy.kpis if any(evidence_of(d, k.name) is not None for d in decisions)]
    seen.sort(key=lambda k: _ROLE_ORDER.get(k.role.value, 9))
    return [k.name for k in seen[:MAX_KPI_PANELS]]


def timeline_chart(path: Path, state: RolloutState, decisions: Sequence[Decision],
                   timestamps: Sequence[float], weights: Sequence[tuple[float, float]],
                   policy: Policy) -> None:
    """Write the decision timeline of a rollout to ``path`` (see the module docstring).

    ``timestamps`` holds each decision's time (epoch seconds); ``weights`` the (epoch
    seconds, candidate percent) of every traffic change.
    """
    points = sorted((float(t), float(p)) for t, p in weights if finite(t) and finite(p))
    times = [float(t) for t in timestamps if finite(t)]
    if not points:
        points = [(times[0] if times else state.created_at,
                   float(state.weights.candidate_percent))]
    t0 = min([t for t, _ in points] + times)
    span = max(max([t for t, _ in points] + times) - t0, 1.0)
    unit, div = ("hours", 3600.0) if span > 3 * 3600 else ("minutes", 60.0)

    def x(t: float) -> float:
        return (t - t0) / div

    names = _kpis(policy, decisions)
    fig, axes = _new_figure(1 + len(names), 2.6 + 1.9 * len(names))
    top = axes[0]
    xs = [x(t) for t, _ in points]
    ys = [p for _, p in points]
    end = max([*times, points[-1][0]])
    if end > points[-1][0]:  # the last weight holds until the last evaluation
        xs.append(x(end))
        ys.append(ys[-1])
    top.step(xs, ys, where="post", color="#ff7f0e", linewidth=1.5, label="candidate traffic")
    top.fill_between(xs, ys, step="post", color="#ff7f0e", alpha=0.15)

    def traffic_at(t: float) -> float:
        share = points[0][1]
        for when, percent in points:
            if when <= t:
                share = percent
        return share

    shown: set[Action] = set()
    for t, d in zip(timestamps, decisions, strict=True):
        marker, color, label = _MARKS[d.action]
        top.plot([x(t)], [traffic_at(t)], marker, color=color, markersize=7,
                 label=None if d.action in shown else label, zorder=3)
        shown.add(d.action)
    for i, d in enumerate(decisions):
        if i == 0 or d.stage_index != decisions[i - 1].stage_index:
            for ax in axes:
                ax.axvline(x(timestamps[i]), color="#888888", linestyle="--", linewidth=0.7)
            top.annotate(chart_text(d.stage_name), (x(timestamps[i]), 1.0),
                         xycoords=("data", "axes fraction"), xytext=(3, -12),
                         textcoords="offset points", fontsize=8, color="#555555")
    top.set_ylim(0, 110)
    top.set_ylabel("candidate traffic (%)")
    top.set_title(chart_text(f"{state.name}: {state.model_name} v{state.candidate_version} vs "
                             f"v{state.baseline_version} — {state.status}"))
    top.legend(loc="lower right", fontsize=7, ncol=3)

    for ax, name in zip(axes[1:], names, strict=True):
        pairs = [(x(t), e) for t, d in zip(timestamps, decisions, strict=True)
                 if (e := evidence_of(d, name)) is not None]
        ex = [p for p, _ in pairs]
        lower = [_nan(e.lower) for _, e in pairs]
        upper = [_nan(e.upper) for _, e in pairs]
        delta = [_nan(e.delta) for _, e in pairs]
        ax.vlines(ex, lower, upper, color="#ff7f0e", linewidth=3, alpha=0.5,
                  label="interval [lower, upper]")
        ax.plot(ex, delta, "s", color="#ff7f0e", markersize=3, label="Δ (+ = candidate better)")
        ax.plot(ex, [_nan(e.rollback_threshold) for _, e in pairs], color="#d62728",
                linestyle="--", drawstyle="steps-post", linewidth=1.0,
                label="rollback if upper below")
        ax.plot(ex, [_nan(e.promote_threshold) for _, e in pairs], color="#2ca02c",
                linestyle=":", drawstyle="steps-post", linewidth=1.2,
                label="promotable if lower above")
        ax.axhline(0.0, color="#1f77b4", linewidth=0.8)
        # The first intervals are very wide; past 3× the largest Δ or margin they are cut,
        # so the margins stay readable.
        scale = [abs(v) for e in pairs for v in (e[1].delta, e[1].rollback_threshold,
                                                  e[1].promote_threshold) if finite(v)]
        spread = [abs(v) for v in lower + upper if math.isfinite(v)]
        if scale and spread and max(spread) > 3 * max(scale) > 0:
            ax.set_ylim(-3 * max(scale), 3 * max(scale))
        role = pairs[-1][1].role if pairs else ""
        ax.set_ylabel(chart_text(f"{name}\n({role}) Δ"), fontsize=8)
        if any(math.isfinite(v) for v in lower + upper):
            ax.legend(loc="upper left", fontsize=6, ncol=4)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(f"{unit} since {fmt_time(t0)}")
    fig.savefig(path, format="png")
