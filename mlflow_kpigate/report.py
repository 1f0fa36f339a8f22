"""The rollout report: ``report.md``, a self-contained ``report.html`` and PNG charts.

:func:`build_report` turns a rollout's state, its decisions (one per evaluation, with the
time each was made) and its traffic history into:

* ``report.md`` and ``report.html``: the outcome and its reason first; then, per stage, a
  table of every KPI at the stage's last evaluation (baseline, candidate, Δ, the
  anytime-valid interval, margin, samples seen/needed, verdict) and the stage's checks;
  the traffic timeline; a per-KPI summary; every decision; the charts. The HTML file
  embeds the charts (base64 PNG) so it can be mailed or attached on its own.
* ``kpi_<name>.png``: the KPI per evaluation: baseline and candidate values (top), and Δ
  with its interval band against the baseline (Δ = 0), the rollback and promotion
  thresholds and the stage boundaries (bottom) — the case study's Figure 1.
* ``control_<name>.png``: the candidate's KPI against the registry baseline's μ ± kσ
  band — the case study's Figure 2; only for KPIs whose μ and σ are known. ``k`` is
  ``control_k``, else the policy's ``control_limits.k``, else 2 (the case study's value;
  the chart then says the gate did not enforce it).
* ``traffic.png``: the candidate's traffic share over time.

Text from models, tags, policies and reasons is data, never markup: it is escaped for
markdown (pipes, backticks, emphasis, brackets, HTML) and for HTML. Missing or non-finite
numbers render as ``—``. Charts use matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so building a report is safe in any process.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_kpigate.core.baseline import BaselineKpi, RegistryBaseline
from mlflow_kpigate.core.decision import Decision, Evidence
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.policy import KpiKind, KpiSpec, Policy

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DASH = "—"
#: The σ multiple drawn when neither ``control_k`` nor the policy gives one (case study).
DEFAULT_CONTROL_K = 2.0

_OUTCOMES = {
    Phase.PROMOTED: "PROMOTED",
    Phase.ROLLED_BACK: "ROLLED BACK",
    Phase.ABORTED: "ABORTED",
    Phase.HOLDING: "HOLDING",
    Phase.CANARY: "IN PROGRESS",
    Phase.SHADOW: "IN PROGRESS",
    Phase.PENDING: "PENDING",
}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_FILE_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`build_report` wrote."""

    directory: Path
    markdown: Path
    html: Path
    kpi_charts: Mapping[str, Path] = field(default_factory=dict)
    control_charts: Mapping[str, Path] = field(default_factory=dict)
    traffic_chart: Path | None = None

    @property
    def charts(self) -> tuple[Path, ...]:
        """Every PNG chart."""
        extra = (self.traffic_chart,) if self.traffic_chart else ()
        return (*self.kpi_charts.values(), *self.control_charts.values(), *extra)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file written."""
        return (self.markdown, self.html, *self.charts)


# --------------------------------------------------------------------------------------
# Escaping and formatting
# --------------------------------------------------------------------------------------

def md_escape(text: object) -> str:
    """``text`` as inert markdown: one line, HTML entities, markdown specials escaped."""
    flat = " ".join(str(text).split())
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", flat)


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _seconds_kpi(kpi: KpiSpec | None) -> bool:
    return kpi is not None and (kpi.kind is KpiKind.QUANTILE
                                or (kpi.kind is KpiKind.MEAN and kpi.log))


def fmt_value(value: float | None, kpi: KpiSpec | None = None) -> str:
    """A KPI value in its units (latency in ms), ``—`` when missing."""
    if not _finite(value):
        return DASH
    assert value is not None
    if _seconds_kpi(kpi):
        return f"{value * 1000:.1f} ms"
    return f"{value:.4g}"


def fmt_delta(value: float | None) -> str:
    """A signed difference on the tested scale, ``—`` when missing."""
    return f"{value:+.4g}" if _finite(value) else DASH


def fmt_interval(lower: float | None, upper: float | None) -> str:
    """``[lower, upper]``; ``—`` when neither bound is known."""
    if not _finite(lower) and not _finite(upper):
        return DASH
    return f"[{fmt_delta(lower)}, {fmt_delta(upper)}]"


def _fmt_time(ts: float | None) -> str:
    if not _finite(ts):
        return DASH
    assert ts is not None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_samples(seen: float, needed: float | None) -> str:
    left = f"{int(seen):,}" if _finite(seen) else DASH
    right = f"{int(needed):,}" if _finite(needed) else DASH
    return f"{left} / {right}"


def _fmt_registry(base: BaselineKpi | None, kpi: KpiSpec | None) -> str:
    if base is None or not _finite(base.mean):
        return DASH
    spread = f" ± {fmt_value(base.std, kpi)}" if _finite(base.std) else ""
    return f"{fmt_value(base.mean, kpi)}{spread} (n={base.n})"


def _fmt_span(seconds: float) -> str:
    """Elapsed time such as ``15m10s`` (``0s`` under a second)."""
    return format_duration(seconds) if seconds >= 1 else "0s"


def _verdict(ev: Evidence) -> str:
    return ev.verdict.value.replace("_", " ")


def _chart_text(text: object) -> str:
    """Text for a matplotlib label: ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _registry_kpi(registry: RegistryBaseline | None, kpi: KpiSpec) -> BaselineKpi | None:
    if registry is None:
        return None
    return registry.get(kpi.name) or (registry.get(kpi.registry_metric)
                                      if kpi.registry_metric else None)


# --------------------------------------------------------------------------------------
# A tiny document model rendered twice (markdown, HTML), so both escape the same data
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Heading:
    text: str
    level: int


@dataclass(frozen=True)
class _Para:
    text: str
    label: str | None = None


@dataclass(frozen=True)
class _Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class _Image:
    path: Path
    alt: str


_Block = _Heading | _Para | _Table | _Image


def _to_markdown(blocks: Sequence[_Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"{'#' * block.level} {md_escape(block.text)}")
        elif isinstance(block, _Para):
            label = f"**{md_escape(block.label)}** " if block.label else ""
            out.append(label + md_escape(block.text))
        elif isinstance(block, _Table):
            out.append("| " + " | ".join(md_escape(h) for h in block.headers) + " |")
            out.append("|" + "|".join("---" for _ in block.headers) + "|")
            out.extend("| " + " | ".join(md_escape(c) for c in row) + " |"
                       for row in block.rows)
        else:
            out.append(f"![{md_escape(block.alt)}]({block.path.name})")
        out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #1f2328; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
"""


def _to_html(blocks: Sequence[_Block], title: str) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">",
           f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, _Para):
            label = f"<strong>{esc(block.label)}</strong> " if block.label else ""
            out.append(f"<p>{label}{esc(block.text)}</p>")
        elif isinstance(block, _Table):
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.headers)
                       + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                       for row in block.rows)
            out.append("</table>")
        else:
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            out.append(f"<img alt=\"{esc(block.alt)}\" src=\"data:image/png;base64,{data}\">")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Charts
# --------------------------------------------------------------------------------------

def _new_figure(rows: int = 1, height: float = 4.0) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    return fig, [row[0] for row in axes]


def _nan(value: float | None) -> float:
    return float(value) if _finite(value) else math.nan  # type: ignore[arg-type]


def _stage_marks(ax: Axes, decisions: Sequence[Decision], label: bool) -> None:
    """Dashed lines between evaluations of different stages; stage names on top."""
    starts = [i for i, d in enumerate(decisions)
              if i == 0 or d.stage_index != decisions[i - 1].stage_index]
    for i in starts:
        x = i + 0.5  # evaluations are numbered from 1
        if i > 0:
            ax.axvline(x, color="#888888", linestyle="--", linewidth=0.8)
        if label:
            ax.annotate(_chart_text(decisions[i].stage_name), (x, 1.0),
                        xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color="#555555")


def _kpi_chart(path: Path, kpi: KpiSpec, decisions: Sequence[Decision]) -> None:
    scale = 1000.0 if _seconds_kpi(kpi) else 1.0
    xs = list(range(1, len(decisions) + 1))
    evs = [_evidence(d, kpi.name) for d in decisions]

    def series(attr: str, factor: float = 1.0) -> list[float]:
        return [_nan(getattr(e, attr)) * factor if e is not None else math.nan for e in evs]

    fig, (top, bottom) = _new_figure(2, 6.0)
    unit = " (ms)" if scale != 1.0 else ""
    top.plot(xs, series("baseline_value", scale), "o-", color="#1f77b4",
             label="baseline", markersize=4)
    top.plot(xs, series("candidate_value", scale), "s-", color="#ff7f0e",
             label="candidate", markersize=4)
    top.set_ylabel(_chart_text(kpi.name) + unit)
    top.legend(loc="best", fontsize=8)
    top.set_title(_chart_text(f"{kpi.name}: baseline vs candidate per evaluation"))
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
    bottom.set_xlabel("evaluation" + (f"  —  Δ: {_chart_text(statistic)}" if statistic else ""),
                      fontsize=8)
    bottom.legend(loc="best", fontsize=7)
    for ax in (top, bottom):
        _stage_marks(ax, decisions, label=ax is top)
        ax.set_xlim(0.5, len(decisions) + 0.5)
        ax.grid(True, alpha=0.3)
    fig.savefig(path, format="png")


def _control_chart(path: Path, kpi: KpiSpec, decisions: Sequence[Decision],
                   base: BaselineKpi, k: float, enforced: bool) -> None:
    scale = 1000.0 if _seconds_kpi(kpi) else 1.0
    xs = list(range(1, len(decisions) + 1))
    evs = [_evidence(d, kpi.name) for d in decisions]
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
    ax.set_ylabel(_chart_text(kpi.name) + (" (ms)" if scale != 1.0 else ""))
    ax.set_title(_chart_text(f"{kpi.name}: candidate against the registry baseline"))
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.savefig(path, format="png")


def _traffic_chart(path: Path, weights: Sequence[tuple[float, float]],
                   timestamps: Sequence[float], state: RolloutState) -> None:
    points = sorted((float(t), float(p)) for t, p in weights if _finite(t) and _finite(p))
    if not points:
        start = timestamps[0] if timestamps else state.created_at
        points = [(float(start), float(state.weights.candidate_percent))]
    times = [t for t, _ in points] + [float(t) for t in timestamps if _finite(t)]
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
    ax.set_xlabel(f"{unit} since {_fmt_time(t0)}")
    ax.set_ylabel("candidate traffic (%)")
    ax.set_title(_chart_text(f"{state.name}: candidate traffic share"))
    ax.grid(True, alpha=0.3)
    fig.savefig(path, format="png")


def _evidence(decision: Decision, kpi: str) -> Evidence | None:
    try:
        return decision.evidence_for(kpi)
    except KeyError:
        return None


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------

def _kpi_row(ev: Evidence, kpi: KpiSpec | None) -> list[str]:
    return [ev.kpi, ev.role, fmt_value(ev.baseline_value, kpi), fmt_value(ev.candidate_value, kpi),
            fmt_delta(ev.delta), fmt_interval(ev.lower, ev.upper), ev.margin or DASH,
            _fmt_samples(ev.samples, ev.samples_needed), _verdict(ev)]


def _stage_groups(decisions: Sequence[Decision]) -> list[list[int]]:
    groups: list[list[int]] = []
    for i, d in enumerate(decisions):
        if groups and decisions[groups[-1][0]].stage_index == d.stage_index:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _policy_kpi(policy: Policy, name: str) -> KpiSpec | None:
    try:
        return policy.kpi(name)
    except KeyError:
        return None


def build_report(out_dir: Path, *, state: RolloutState, decisions: Sequence[Decision],
                 timestamps: Sequence[float], weights_history: Sequence[tuple[float, float]],
                 policy: Policy, registry_baseline: RegistryBaseline | None,
                 control_k: float | None) -> ReportFiles:
    """Write the report files into ``out_dir`` (created if missing); return their paths.

    ``timestamps`` holds the time (epoch seconds) of each decision; ``weights_history``
    the (epoch seconds, candidate percent) of every traffic change.
    """
    if len(timestamps) != len(decisions):
        raise ValueError(f"timestamps has {len(timestamps)} entries for {len(decisions)} "
                         "decisions; give one time per decision")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enforced = policy.control_limits.k is not None
    k = control_k if control_k is not None else (policy.control_limits.k or DEFAULT_CONTROL_K)

    # Charts first: the documents embed or link them.
    kpi_charts: dict[str, Path] = {}
    control_charts: dict[str, Path] = {}
    for kpi in policy.kpis:
        if not any(_evidence(d, kpi.name) is not None for d in decisions):
            continue
        safe = _FILE_SAFE.sub("_", kpi.name)
        path = out / f"kpi_{safe}.png"
        _kpi_chart(path, kpi, decisions)
        kpi_charts[kpi.name] = path
        base = _registry_kpi(registry_baseline, kpi)
        if base is not None and _finite(base.mean) and base.has_spread:
            path = out / f"control_{safe}.png"
            _control_chart(path, kpi, decisions, base, k, enforced)
            control_charts[kpi.name] = path
    traffic = out / "traffic.png"
    _traffic_chart(traffic, weights_history, timestamps, state)

    blocks = _document(state, decisions, timestamps, weights_history, policy,
                       registry_baseline, k, kpi_charts, control_charts, traffic)
    title = f"kpigate rollout report: {state.name}"
    markdown = out / "report.md"
    markdown.write_text(_to_markdown(blocks), encoding="utf-8")
    page = out / "report.html"
    page.write_text(_to_html(blocks, title), encoding="utf-8")
    return ReportFiles(out, markdown, page, kpi_charts, control_charts, traffic)


def _document(state: RolloutState, decisions: Sequence[Decision], timestamps: Sequence[float],
              weights_history: Sequence[tuple[float, float]], policy: Policy,
              registry: RegistryBaseline | None, k: float, kpi_charts: Mapping[str, Path],
              control_charts: Mapping[str, Path], traffic: Path) -> list[_Block]:
    last = decisions[-1] if decisions else None
    reason = state.reason or (last.reason if last else "no evaluation yet")
    outcome = _OUTCOMES.get(state.phase, state.phase.value.upper())
    blocks: list[_Block] = [
        _Heading(f"kpigate rollout report: {state.name}", 1),
        _Para(reason, label=f"Outcome: {outcome}."),
    ]
    if last is not None:
        blocks.append(_Para(
            f"{last.action.value} at stage {last.stage_name} (evaluation {len(decisions)}, "
            f"{_fmt_time(timestamps[-1])}): {last.reason}", label="Last decision:"))
    run = state.rollout_run_id or DASH
    blocks.append(_Table(["", ""], [
        ["model", state.model_name],
        ["candidate", f"{state.candidate_uri} (version {state.candidate_version})"],
        ["baseline", f"{state.baseline_uri} (version {state.baseline_version})"],
        ["phase", state.phase.value],
        ["traffic now", state.weights.describe()],
        ["policy", f"{policy.name or DASH} ({state.policy_file})"],
        ["evaluations", str(len(decisions))],
        ["started", _fmt_time(state.created_at)],
        ["last evaluation", _fmt_time(timestamps[-1]) if timestamps else DASH],
        ["rollout run", run],
        ["tracking URI", state.tracking_uri],
        ["registry baseline", (registry.source or "given") if registry else "none"],
    ]))

    blocks.append(_Heading("Stages", 2))
    if not decisions:
        blocks.append(_Para("No evaluation has been made yet."))
    for group in _stage_groups(decisions):
        d = decisions[group[-1]]
        first, end = group[0] + 1, group[-1] + 1
        span = f"evaluation {first}" if first == end else f"evaluations {first}–{end}"
        dwell = timestamps[group[-1]] - timestamps[group[0]]
        blocks.append(_Heading(f"Stage {d.stage_index}: {d.stage_name} ({span}, "
                               f"{_fmt_span(dwell)} between first and last)",
                               3))
        blocks.append(_Para(f"{d.action.value}: {d.reason}", label="Last decision:"))
        blocks.append(_Table(
            ["KPI", "role", "baseline", "candidate", "delta", "interval [lower, upper]",
             "margin", "samples seen / needed", "verdict"],
            [_kpi_row(ev, _policy_kpi(policy, ev.kpi)) for ev in d.evidence]))
        if d.checks:
            blocks.append(_Table(["stage requirement", "seen", "needed", "met"], [
                [c.name, f"{c.seen:,.0f}" if _finite(c.seen) else DASH,
                 f"{c.needed:,.0f}" if _finite(c.needed) else DASH, "yes" if c.met else "no"]
                for c in d.checks]))

    blocks.append(_Heading("Traffic timeline", 2))
    t0 = min([*timestamps, *(t for t, _ in weights_history)], default=state.created_at)
    if weights_history:
        blocks.append(_Table(["time", "since start", "candidate traffic"], [
            [_fmt_time(t), _fmt_span(t - t0), f"{p:g}%"]
            for t, p in sorted(weights_history)]))
    else:
        blocks.append(_Para("No traffic change was recorded."))

    blocks.append(_Heading("KPI summary", 2))
    rows: list[list[str]] = []
    for kpi in policy.kpis:
        evs = [e for e in (_evidence(d, kpi.name) for d in decisions) if e is not None]
        final = evs[-1] if evs else None
        uppers = [e.upper for e in evs if _finite(e.upper)]
        rows.append([
            kpi.name, kpi.kind.value, kpi.role.value, f"{kpi.direction.value} is better",
            str(kpi.margin) if kpi.margin else DASH, fmt_value(kpi.limit, kpi),
            _fmt_registry(_registry_kpi(registry, kpi), kpi),
            fmt_value(final.baseline_value, kpi) if final else DASH,
            fmt_value(final.candidate_value, kpi) if final else DASH,
            fmt_delta(final.delta) if final else DASH,
            fmt_delta(min(uppers)) if uppers else DASH,
            _verdict(final) if final else DASH,
        ])
    blocks.append(_Table(["KPI", "kind", "role", "direction", "margin", "limit",
                          "registry μ ± σ (n)", "last baseline", "last candidate",
                          "last delta", "lowest upper bound", "final verdict"], rows))

    blocks.append(_Heading("Decisions", 2))
    blocks.append(_Table(["#", "time", "stage", "action", "reason"], [
        [str(i + 1), _fmt_time(timestamps[i]), d.stage_name, d.action.value, d.reason]
        for i, d in enumerate(decisions)]))

    blocks.append(_Heading("Charts", 2))
    blocks.append(_Para("Each KPI per evaluation: baseline and candidate (top); Δ with its "
                        "anytime-valid bounds against the baseline at Δ = 0, the rollback and "
                        "promotion thresholds, and the stage boundaries (bottom)."))
    for name, path in kpi_charts.items():
        blocks.append(_Image(path, f"{name} per evaluation"))
    if control_charts:
        blocks.append(_Para(f"The candidate against the registry baseline's μ ± {k:g}σ "
                            "(control chart)."))
        for name, path in control_charts.items():
            blocks.append(_Image(path, f"{name} control chart"))
    blocks.append(_Image(traffic, "candidate traffic over time"))
    return blocks
