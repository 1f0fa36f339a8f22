"""The time-to-decision forecast in the report and the pull-request comment.

Per stage it sets the forecast made early in the stage (at its first evaluation whose
forecast covers every decisive KPI) and at its last evaluation against how long the stage
actually took; for a rollout still running it adds the latest forecast of every remaining
stage. The forecasts are the ones the controller recorded with each decision
(``meta["forecast"]``, :mod:`mlflow_kpigate.core.forecast`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.forecast import HEADERS, Forecast, StageEta, fmt_eta, forecast_view
from mlflow_kpigate.report.blocks import Block, Heading, Para, Table


@dataclass(frozen=True)
class StageRecord:
    """One stage's forecasts and what happened."""

    stage: str
    early: StageEta | None  # the forecast early in the stage (time relative to early_at)
    early_into_s: float  # how far into the stage the early forecast was made
    last: StageEta | None
    actual_s: float | None  # the stage's length when it was decided (None: not decided)
    outcome: str  # promoted / rolled back / running


def stage_records(decisions: Sequence[Decision], timestamps: Sequence[float]
                  ) -> list[StageRecord]:
    """Per stage with forecasts: the early and the last forecast, and the actual length."""
    out: list[StageRecord] = []
    groups: list[list[int]] = []
    for i, d in enumerate(decisions):
        if groups and decisions[groups[-1][0]].stage_index == d.stage_index:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups:
        views = [(i, forecast_view(decisions[i])) for i in group]
        seen = [(i, f) for i, f in views if f is not None and f.current is not None]
        if not seen:
            continue
        early_i, early = next(((i, f) for i, f in seen if not f.notes), seen[0])
        early_eta, last_eta = early.current, seen[-1][1].current
        if early_eta is None or last_eta is None:  # filtered above; for the type checker
            continue
        start = timestamps[early_i] + early_eta.start_s
        final = decisions[group[-1]]
        decided = final.action in (Action.PROMOTE, Action.ROLLBACK)
        outcome = {Action.PROMOTE: "promoted", Action.ROLLBACK: "rolled back"}.get(
            final.action, "running")
        out.append(StageRecord(
            early_eta.stage, early_eta, -early_eta.start_s, last_eta,
            timestamps[group[-1]] - start if decided else None, outcome))
    return out


def record_rows(records: Sequence[StageRecord]) -> list[list[str]]:
    """Table rows: stage, early forecast, last forecast, actual, what bound."""
    rows = []
    for r in records:
        early = (f"{fmt_eta(r.early.duration_s)} (made {fmt_eta(r.early_into_s)} in)"
                 if r.early is not None else "—")
        last = fmt_eta(r.last.duration_s) if r.last is not None else "—"
        actual = f"{fmt_eta(r.actual_s)}, {r.outcome}" if r.actual_s is not None \
            else r.outcome
        binds = r.last.binds if r.last is not None and r.last.binds else "—"
        rows.append([r.stage, early, last, actual, binds])
    return rows


RECORD_HEADERS = ["stage", "forecast early in the stage", "forecast at its last evaluation",
                  "actual", "binds"]


def latest(decisions: Sequence[Decision]) -> Forecast | None:
    """The most recent forecast among ``decisions``."""
    for d in reversed(decisions):
        fc = forecast_view(d)
        if fc is not None:
            return fc
    return None


def forecast_blocks(decisions: Sequence[Decision], timestamps: Sequence[float],
                    running: bool) -> list[Block]:
    """The report's section (empty when no decision carries a forecast)."""
    records = stage_records(decisions, timestamps)
    fc = latest(decisions) if running else None
    if not records and fc is None:
        return []
    blocks: list[Block] = [Heading("Time to decision (forecast)", 2), Para(
        "How long each stage would take for a candidate equal to the baseline, forecast "
        "from the measured request and label rates and the KPIs' current variances "
        "(docs/statistics.md, \"Time to decision\"), against how long it took.")]
    if records:
        blocks.append(Table(RECORD_HEADERS, record_rows(records)))
    if fc is not None:
        blocks.append(Para(fc.line(), label="Now:"))
        blocks.append(Para(fc.basis_line(), label="Traffic:"))
        blocks.append(Table(HEADERS, fc.rows()))
        for note in fc.notes:
            blocks.append(Para(note, label="Not counted:"))
        for warning in fc.warnings():
            blocks.append(Para(warning, label="Warning:"))
    return blocks
