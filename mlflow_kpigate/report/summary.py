"""The short markdown a rollout leaves in its model versions' descriptions in MLflow.

:func:`version_summary` is the candidate's section: the outcome and its reason, the
stages with the time of their first and last evaluation, the decisive KPIs (those whose
verdict blocked the rollout first, then the critical and guardrail ones; info KPIs only
when nothing else was measured) of the last decision — or of the last stage decision when
the rollout ended with a bake that found no regression, as bake checks carry no
intervals — and links to the rollout run and its
report. :func:`replaced_note` is the one-line section of a baseline that a promotion
replaced. A baseline that keeps serving after a rollback gets nothing: nothing about it
changed, and its tags and aliases say so already.

Everything here is made from recorded facts (the state, the decisions and their times),
never the current time, so the section written again after a controller restart is the
same. Data (names, reasons, KPI names) is escaped with :func:`.blocks.md_escape`, so it
cannot add links or the section's HTML-comment markers.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlflow_kpigate.core.bake import bake_view
from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.report.blocks import md_escape
from mlflow_kpigate.report.formats import fmt_time
from mlflow_kpigate.report.kpi_table import kpi_rows, verdict_badge

#: At most this many KPI rows in a description.
MAX_KPI_ROWS = 8
_ROLE_ORDER = {"critical": 0, "guardrail": 1, "success": 2, "info": 3}


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return out


def _stages(decisions: Sequence[Decision], timestamps: Sequence[float]) -> list[list[str]]:
    rows: list[list[str]] = []
    start = 0
    for i, d in enumerate(decisions):
        last = i + 1 == len(decisions) or decisions[i + 1].stage_index != d.stage_index
        if last:
            rows.append([d.stage_name, fmt_time(timestamps[start]), fmt_time(timestamps[i]),
                         str(i + 1 - start), d.action.value])
            start = i + 1
    return rows


def _decisive(decision: Decision, policy: Policy) -> list[list[str]]:
    rows = list(kpi_rows(decision, policy))
    roles = {ev.kpi: ev.role for ev in decision.evidence}
    measured = [r for r in rows if roles.get(r.kpi) != "info"] or rows
    measured.sort(key=lambda r: (not r.verdict.blocks_rollout,
                                 _ROLE_ORDER.get(roles.get(r.kpi, ""), 9)))
    return [[r.kpi, r.role, r.baseline, r.candidate, r.interval, r.margin,
             verdict_badge(r.verdict)] for r in measured[:MAX_KPI_ROWS]]


def _deciding(decisions: Sequence[Decision]) -> tuple[int, Decision]:
    """The decision whose KPI table the summary shows, and its index: the last one, unless
    it is a bake check (no intervals) that did not roll back — then the last stage
    decision before the bake, the one that promoted the candidate."""
    last = len(decisions) - 1
    if bake_view(decisions[last]) is None or decisions[last].action is Action.ROLLBACK:
        return last, decisions[last]
    for i in range(last, -1, -1):
        if bake_view(decisions[i]) is None:
            return i, decisions[i]
    return last, decisions[last]


def version_summary(state: RolloutState, decisions: Sequence[Decision],
                    timestamps: Sequence[float], policy: Policy, *, run_link: str | None,
                    report_link: str | None) -> str:
    """The candidate version's description section (markdown, without the markers)."""
    when = fmt_time(timestamps[-1]) if timestamps else fmt_time(state.created_at)
    lines = [f"#### kpigate rollout: {md_escape(state.status.replace('_', ' '))}", "",
             f"**v{md_escape(state.candidate_version)} {md_escape(state.status)}** against "
             f"v{md_escape(state.baseline_version)} at {when}: {md_escape(state.reason)}", "",
             f"Deployment {md_escape(state.name)}, policy "
             f"{md_escape(policy.name or '—')}, {len(decisions)} evaluations from "
             f"{fmt_time(timestamps[0] if timestamps else state.created_at)}.", ""]
    if decisions:
        lines += _table(["stage", "first evaluation", "last evaluation", "evaluations",
                         "last decision"], _stages(decisions, timestamps))
        lines.append("")
        index, deciding = _deciding(decisions)
        lines.append(f"KPIs at evaluation {index + 1} ({md_escape(deciding.stage_name)}, "
                     f"{deciding.action.value}):")
        lines.append("")
        lines += _table(["KPI", "role", "baseline", "candidate",
                         "bounds of Δ [lower, upper], + = better", "margin", "verdict"],
                        _decisive(deciding, policy))
        lines.append("")
    links = [f"[rollout run]({run_link})" if run_link else "",
             f"[report]({report_link})" if report_link else ""]
    if any(links):
        lines.append(" · ".join(link for link in links if link))
    return "\n".join(lines).strip()


def replaced_note(state: RolloutState, timestamps: Sequence[float], *,
                  run_link: str | None) -> str:
    """The replaced baseline's description section (markdown, without the markers)."""
    when = fmt_time(timestamps[-1]) if timestamps else fmt_time(state.created_at)
    run = f" ([rollout run]({run_link}))" if run_link else ""
    return (f"#### kpigate: replaced by v{md_escape(state.candidate_version)}\n\n"
            f"v{md_escape(state.candidate_version)} was promoted over this version at {when} "
            f"by deployment {md_escape(state.name)}{run}.")
