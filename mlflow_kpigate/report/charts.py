"""The report's PNG charts, drawn with matplotlib.

* :func:`kpi_chart`: the KPI per evaluation: baseline and candidate values (top), and Δ
  with its interval band against the baseline (Δ = 0), the rollback and promotion
  thresholds and the stage boundaries (bottom) — the case study's Figure 1.
* :func:`control_chart`: the candidate's KPI against the registry baseline's μ ± kσ band
  — the case study's Figure 2.
* :func:`traffic_chart`: the candidate's traffic share over time.

matplotlib is imported only when a chart is drawn (it is slow to import, and nothing else
in a deployment needs it), and charts use its Agg canvas directly (no pyplot, no global
backend switch), so drawing is safe in any process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_kpigate.core.baseline import BaselineKpi
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import KpiSpec
from mlflow_kpigate.report.formats import finite, fmt_time, seconds_kpi
from mlflow_kpigate.report.kpi_table import evidence_of

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def chart_text(text: object) -> str:
    """Text for a matplotlib label: ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _new_figure(rows: int = 1, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    return fig, [row[0] for row in axes]


def _nan(value: float | None) -> float:
    return float(value) if finite(value) else math.nan


def _stage_marks(ax: Axes, decisions: Sequence[Decision], label: bool) -> None:
    """Dashed lines between evaluations of different stages; stage names on top."""
    starts = [i for i, d in enumerate(decisions)
              if i == 0 or d.stage_index != decisions[i - 1].stage_index]
    for i in starts:
        x = i + 0.5  # evaluations are numbered from 1
        if i > 0:
            ax.axvline(x, color="#888888", linestyle="--", linewidth=0.8)
        if label:
            ax.annotate(chart_text(decisions[i].stage_name), (x, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color="#555555")


def kpi_chart(path: Path, kpi: KpiSpec, decisions: Sequence[Decision]) -> None:
    """Write ``kpi``'s values and Δ per evaluation to ``path``."""
    scale = 1000.0 if seconds_kpi(kpi) else 1.0
    xs = list(range(1, len(decisions) + 1))
    evs = [evidence_of(d, kpi.name) for d in decisions]

    def series(attr: str, factor: float = 1.0) -> list[float]:
        return [_nan(getattr(e, attr)) * factor if e is not None else math.nan for e in evs]

    fig, (top, bottom) = _new_figure(2, 6.0)
    unit = " (ms)" if scale != 1.0 else ""
    top.plot(xs, series("baseline_value", scale), "o-", color="#1f77b4",
             label="baseline", markersize=4)
    top.plot(xs, series("candidate_value", scale), "s-", color="#ff7f0e",
             label="candidate", markersize=4)
    top.set_ylabel(chart_text(kpi.name) + unit)
    top.legend(loc="best", fontsize=8)
    top.set_title(chart_text(f"{kpi.name}: baseline vs candidate per evaluation"))
    lower, upper, delta = series("lower"), series("upper"), series("delta")
    bottom.fill_between(xs, lower, upper, color="#ff7f0e", alpha=0.25, step=None,
                        label="anytime-valid bounds [lower, upper]")
    bottom.plot(xs, delta, "s-", color="#ff7f0e", markersize=4,
                label="Δ (candidate vs baseline, + is better)")
    bottom.axhline(0.0, color="#1f77b4", linewidth=1.0, label="baseline (Δ = 0)")
    bottom.plot(xs, series("rollback_threshold"), color="#d62728", linestyle="--",
                drawstyle="steps-mid", linewidth=1.0, label="rollback if upper below")
    bottom.plot(xs, series("promote_threshold"), color="#2ca02c", linestyle=":",
                drawstyle="steps-mid", linewidth=1.2, label="promotable if lower above")
    statistic = next((e.statistic for e in reversed(evs) if e is not None and e.statistic), "")
    bottom.set_ylabel("Δ")
    bottom.set_xlabel("evaluation" + (f"  —  Δ: {chart_text(statistic)}" if statistic else ""),
                      fontsize=8)
    bottom.legend(loc="best", fontsize=7)
    for ax in (top, bottom):
        _stage_marks(ax, decisions, label=ax is top)
        ax.set_xlim(0.5, len(decisions) + 0.5)
        ax.grid(True, alpha=0.3)
    fig.savefig(path, format="png")


def control_chart(path: Path, kpi: KpiSpec, decisions: Sequence[Decision],
                  base: BaselineKpi, k: float, enforced: bool) -> None:
    """Write the candidate's ``kpi`` against the registry's μ ± ``k``σ to ``path``.

    ``enforced`` says whether the policy gates on the band; the legend says when not.
    """
    scale = 1000.0 if seconds_kpi(kpi) else 1.0
    xs = list(range(1, len(decisions) + 1))
    evs = [evidence_of(d, kpi.name) for d in decisions]
    cand = [_nan(e.candidate_value) * scale if e is not None else math.nan for e in evs]
    live = [_nan(e.baseline_value) * scale if e is not None else math.nan for e in evs]
    mu, sd = base.mean * scale, float(base.std or 0.0) * scale
    fig, (ax,) = _new_figure(1, 4.0)
    ax.axhspan(mu - k * sd, mu + k * sd, color="#1f77b4", alpha=0.12,
               label=f"registry μ ± {k:g}σ" + ("" if enforced else " (not enforced by the policy)"))
    ax.axhline(mu, color="#1f77b4", linewidth=1.0, label=f"registry μ (n={base.n})")
    for limit in (mu - k * sd, mu + k * sd):
        ax.axhline(limit, color="#d62728", linestyle="--", linewidth=0.8)
    ax.plot(xs, live, "o:", color="#1f77b4", markersize=3, alpha=0.7,
            label="baseline (live)")
    ax.plot(xs, cand, "s-", color="#ff7f0e", markersize=4, label="candidate")
    _stage_marks(ax, decisions, label=True)
    ax.set_xlim(0.5, len(decisions) + 0.5)
    ax.set_xlabel("evaluation")
    ax.set_ylabel(chart_text(kpi.name) + (" (ms)" if scale != 1.0 else ""))
    ax.set_title(chart_text(f"{kpi.name}: candidate against the registry baseline"))
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.savefig(path, format="png")


def traffic_chart(path: Path, weights: Sequence[tuple[float, float]],
                  timestamps: Sequence[float], state: RolloutState) -> None:
    """Write the candidate's traffic share over time to ``path``.

    ``weights`` holds (epoch seconds, candidate percent) changes; the last one is held
    until the last of ``timestamps``.
    """
    points = sorted((float(t), float(p)) for t, p in weights if finite(t) and finite(p))
    if not points:
        start = timestamps[0] if timestamps else state.created_at
        points = [(float(start), float(state.weights.candidate_percent))]
    times = [t for t, _ in points] + [float(t) for t in timestamps if finite(t)]
    t0, t_end = min(times), max(times)
    span = max(t_end - t0, 1.0)
    unit, div = ("hours", 3600.0) if span > 3 * 3600 else ("minutes", 60.0)
    xs = [(t - t0) / div for t, _ in points]
    ys = [p for _, p in points]
    if t_end > points[-1][0]:  # hold the last weight until the last evaluation
        xs.append((t_end - t0) / div)
        ys.append(ys[-1])
    fig, (ax,) = _new_figure(1, 3.2)
    ax.step(xs, ys, where="post", color="#ff7f0e", linewidth=1.5)
    ax.fill_between(xs, ys, step="post", color="#ff7f0e", alpha=0.2)
    ax.set_ylim(0, 105)
    ax.set_xlabel(f"{unit} since {fmt_time(t0)}")
    ax.set_ylabel("candidate traffic (%)")
    ax.set_title(chart_text(f"{state.name}: candidate traffic share"))
    ax.grid(True, alpha=0.3)
    fig.savefig(path, format="png")
