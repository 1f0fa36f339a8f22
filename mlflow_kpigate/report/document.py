"""The report's sections, as a block list (:mod:`.blocks`) rendered to markdown and HTML.

The outcome and its reason first; then, per stage, the KPI table of the stage's last
evaluation and the stage's checks; the time-to-decision forecasts against the stages'
actual lengths (:mod:`.forecast`); the bake after promotion, if there was one; the
traffic timeline; a per-KPI summary; every
decision; the charts (written beforehand by :mod:`.build`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow_kpigate.core.bake import bake_view, fmt_e, outcome_words
from mlflow_kpigate.core.baseline import BaselineKpi, RegistryBaseline
from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.state import ROLLED_BACK_AFTER_PROMOTION, Phase, RolloutState
from mlflow_kpigate.policy import KpiSpec, Policy
from mlflow_kpigate.report.blocks import Block, Heading, Image, Para, Table
from mlflow_kpigate.report.forecast import forecast_blocks
from mlflow_kpigate.report.formats import (
    DASH,
    finite,
    fmt_delta,
    fmt_span,
    fmt_time,
    fmt_value,
)
from mlflow_kpigate.report.kpi_table import (
    Column,
    evidence_of,
    kpi_rows,
    table_cells,
    verdict_words,
)

_OUTCOMES = {
    Phase.BAKING: "PROMOTED, BAKING",
    Phase.PROMOTED: "PROMOTED",
    Phase.ROLLED_BACK: "ROLLED BACK",
    Phase.ABORTED: "ABORTED",
    Phase.HOLDING: "HOLDING",
    Phase.CANARY: "IN PROGRESS",
    Phase.SHADOW: "IN PROGRESS",
    Phase.PENDING: "PENDING",
}
#: The stage tables' KPI columns.
_KPI_COLUMNS: tuple[Column, ...] = (
    ("KPI", lambda r: r.kpi),
    ("role", lambda r: r.role),
    ("baseline", lambda r: r.baseline),
    ("candidate", lambda r: r.candidate),
    ("Δ (candidate − baseline)", lambda r: r.difference),
    ("bounds [lower, upper], + = better", lambda r: r.interval),
    ("margin", lambda r: r.margin),
    ("samples seen / needed", lambda r: r.samples),
    ("verdict", lambda r: verdict_words(r.verdict)),
)


def registry_kpi(registry: RegistryBaseline | None, kpi: KpiSpec) -> BaselineKpi | None:
    """The registry baseline's entry for ``kpi`` (by name, else by its registry metric)."""
    if registry is None:
        return None
    return registry.get(kpi.name) or (registry.get(kpi.registry_metric)
                                      if kpi.registry_metric else None)


def _fmt_registry(base: BaselineKpi | None, kpi: KpiSpec | None) -> str:
    if base is None or not finite(base.mean):
        return DASH
    spread = f" ± {fmt_value(base.std, kpi)}" if finite(base.std) else ""
    return f"{fmt_value(base.mean, kpi)}{spread} (n={base.n})"


def _stage_groups(decisions: Sequence[Decision]) -> list[list[int]]:
    groups: list[list[int]] = []
    for i, d in enumerate(decisions):
        if groups and decisions[groups[-1][0]].stage_index == d.stage_index:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _bare(reason: str) -> str:
    """``reason`` without the action the gate starts it with (``rollback: …``): the report
    names the action beside it, and "rollback: rollback: …" says it twice."""
    for action in Action:
        if reason.startswith(f"{action.value}: "):
            return reason[len(action.value) + 2:]
    return reason


def _bake(state: RolloutState, decisions: Sequence[Decision], timestamps: Sequence[float]
          ) -> list[Block]:
    """The bake (after promotion): how long it ran, how it ended, each change detector."""
    if state.bake_started_at is None:
        return []
    baked = [(t, d) for t, d in zip(timestamps, decisions, strict=True)
             if bake_view(d) is not None]
    view = bake_view(baked[-1][1]) if baked else None
    if state.phase is Phase.BAKING:
        how = "still baking" + (f": {view.line()}" if view else "")
    elif state.phase is Phase.PROMOTED:
        how = (f"baked {fmt_span(view.elapsed_s)} with no regression detected" if view
               and baked[-1][1].action is Action.PROMOTE else f"ended early: {state.reason}")
    else:
        how = f"{outcome_words(state)}: {_bare(state.reason)}"
    blocks: list[Block] = [Heading("Bake (after promotion)", 2), Para(
        f"The candidate served everything from {fmt_time(state.bake_started_at)} while the "
        f"previous version scored a shadow copy of every request; {how}.")]
    if view is not None and view.detectors:
        blocks.append(Table(["KPI", "detector statistic", "threshold", "increments"], [
            [d.kpi if d.label in ("", d.kpi) else f"{d.kpi} [{d.label}]",
             fmt_e(d.log_statistic), fmt_e(d.log_threshold), str(d.steps)]
            for d in view.detectors]))
    return blocks


def document(state: RolloutState, decisions: Sequence[Decision], timestamps: Sequence[float],
             weights_history: Sequence[tuple[float, float]], policy: Policy,
             registry: RegistryBaseline | None, k: float, kpi_charts: Mapping[str, Path],
             control_charts: Mapping[str, Path], traffic: Path,
             timeline: Path | None = None) -> list[Block]:
    """The report's blocks; ``k`` is the σ multiple the control charts drew."""
    last = decisions[-1] if decisions else None
    reason = state.reason or (last.reason if last else "no evaluation yet")
    outcome = _OUTCOMES.get(state.phase, state.phase.value.upper())
    if state.status == ROLLED_BACK_AFTER_PROMOTION:
        outcome = "ROLLED BACK AFTER PROMOTION"
    blocks: list[Block] = [
        Heading(f"kpigate rollout report: {state.name}", 1),
        Para(reason, label=f"Outcome: {outcome}."),
    ]
    if last is not None:
        blocks.append(Para(
            f"{last.action.value} at stage {last.stage_name} (evaluation {len(decisions)}, "
            f"{fmt_time(timestamps[-1])}): {_bare(last.reason)}", label="Last decision:"))
    run = state.rollout_run_id or DASH
    blocks.append(Table(["", ""], [
        ["model", state.model_name],
        ["candidate", f"{state.candidate_uri} (version {state.candidate_version})"],
        ["baseline", f"{state.baseline_uri} (version {state.baseline_version})"],
        ["phase", state.phase.value],
        ["traffic now", state.weights.describe()],
        ["policy", f"{policy.name or DASH} ({state.policy_file})"],
        ["evaluations", str(len(decisions))],
        ["started", fmt_time(state.created_at)],
        ["last evaluation", fmt_time(timestamps[-1]) if timestamps else DASH],
        ["rollout run", run],
        ["tracking URI", state.tracking_uri],
        ["registry baseline", (registry.source or "given") if registry else "none"],
    ]))

    blocks.append(Heading("Stages", 2))
    if not decisions:
        blocks.append(Para("No evaluation has been made yet."))
    for group in _stage_groups(decisions):
        d = decisions[group[-1]]
        first, end = group[0] + 1, group[-1] + 1
        span = f"evaluation {first}" if first == end else f"evaluations {first}–{end}"
        dwell = timestamps[group[-1]] - timestamps[group[0]]
        blocks.append(Heading(f"Stage {d.stage_index}: {d.stage_name} ({span}, "
                              f"{fmt_span(dwell)} between first and last)",
                              3))
        blocks.append(Para(f"{d.action.value}: {_bare(d.reason)}", label="Last decision:"))
        blocks.append(Table(*table_cells(kpi_rows(d, policy), _KPI_COLUMNS)))
        for ev in d.evidence:
            if ev.kind == "quantile" and ev.statistic:
                # The bounds of a quantile KPI are exceedance shares, not milliseconds.
                blocks.append(Para(f"{ev.kpi}'s bounds are on {ev.statistic}: the share of "
                                   "requests slower than the baseline's quantile, baseline "
                                   "minus candidate (positive = the candidate is slow less "
                                   "often).", label="Note:"))
        if d.checks:
            blocks.append(Table(["stage requirement", "seen", "needed", "met"], [
                [c.name, f"{c.seen:,.0f}" if finite(c.seen) else DASH,
                 f"{c.needed:,.0f}" if finite(c.needed) else DASH, "yes" if c.met else "no"]
                for c in d.checks]))

    blocks += forecast_blocks(decisions, timestamps, not state.phase.terminal
                              and state.phase is not Phase.BAKING)
    blocks += _bake(state, decisions, timestamps)

    blocks.append(Heading("Traffic timeline", 2))
    t0 = min([*timestamps, *(t for t, _ in weights_history)], default=state.created_at)
    if weights_history:
        blocks.append(Table(["time", "since start", "candidate traffic"], [
            [fmt_time(t), fmt_span(t - t0), f"{p:g}%"]
            for t, p in sorted(weights_history)]))
    else:
        blocks.append(Para("No traffic change was recorded."))

    blocks.append(Heading("KPI summary", 2))
    rows: list[list[str]] = []
    for kpi in policy.kpis:
        evs = [e for e in (evidence_of(d, kpi.name) for d in decisions) if e is not None]
        final = evs[-1] if evs else None
        uppers = [e.upper for e in evs if finite(e.upper)]
        rows.append([
            kpi.name, kpi.kind.value, kpi.role.value, f"{kpi.direction.value} is better",
            str(kpi.margin) if kpi.margin else DASH, fmt_value(kpi.limit, kpi),
            _fmt_registry(registry_kpi(registry, kpi), kpi),
            fmt_value(final.baseline_value, kpi) if final else DASH,
            fmt_value(final.candidate_value, kpi) if final else DASH,
            fmt_delta(final.delta) if final else DASH,
            fmt_delta(min(uppers)) if uppers else DASH,
            verdict_words(final.verdict) if final else DASH,
        ])
    blocks.append(Table(["KPI", "kind", "role", "direction", "margin", "limit",
                         "registry μ ± σ (n)", "last baseline", "last candidate",
                         "last delta", "lowest upper bound", "final verdict"], rows))

    blocks.append(Heading("Decisions", 2))
    blocks.append(Table(["#", "time", "stage", "action", "reason"], [
        [str(i + 1), fmt_time(timestamps[i]), d.stage_name, d.action.value, _bare(d.reason)]
        for i, d in enumerate(decisions)]))

    blocks.append(Heading("Charts", 2))
    if timeline is not None:
        blocks.append(Para("The decision timeline: the candidate's traffic with each "
                           "decision (top), and each KPI's interval of Δ against its margins "
                           "over time (below)."))
        blocks.append(Image(timeline, "decision timeline"))
    blocks.append(Para("Each KPI per evaluation: baseline and candidate (top); Δ with its "
                       "anytime-valid bounds against the baseline at Δ = 0, the rollback and "
                       "promotion thresholds, and the stage boundaries (bottom)."))
    for name, path in kpi_charts.items():
        blocks.append(Image(path, f"{name} per evaluation"))
    if control_charts:
        blocks.append(Para(f"The candidate against the registry baseline's μ ± {k:g}σ "
                           "(control chart)."))
        for name, path in control_charts.items():
            blocks.append(Image(path, f"{name} control chart"))
    blocks.append(Image(traffic, "candidate traffic over time"))
    return blocks
