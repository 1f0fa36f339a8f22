"""The per-KPI evidence table of a decision: one model for every place that shows it.

:func:`kpi_rows` turns a :class:`~mlflow_kpigate.core.decision.Decision` into one
:class:`KpiRow` of formatted cells per KPI. The report (markdown and HTML), the
pull-request comment and the console (``kpigate status``, ``kpigate simulate``) render
those rows; each only chooses its columns (:data:`Column`), its :class:`NumberStyle` and
its escaping, so a KPI's numbers are formatted in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlflow_kpigate.core.decision import Decision, Evidence, Verdict
from mlflow_kpigate.policy import KpiSpec, Policy
from mlflow_kpigate.report.formats import (
    DOCUMENT,
    NumberStyle,
    fmt_delta,
    fmt_difference,
    fmt_interval,
    fmt_margin,
    fmt_samples,
    fmt_thresholds,
    fmt_value,
)


@dataclass(frozen=True)
class KpiRow:
    """One KPI's evidence at one evaluation, as text (``verdict`` left for the renderer
    to label: words, an icon, or the code)."""

    kpi: str
    role: str
    baseline: str
    candidate: str
    #: candidate − baseline in the KPI's units: positive = the candidate's value is larger.
    difference: str
    #: Δ on the tested scale, positive = candidate better (what the bounds are about).
    delta: str
    #: The anytime-valid ``[lower, upper]`` on the tested scale: the promotion and the
    #: rollback bound, positive = candidate better.
    interval: str
    #: ``promote / rollback`` thresholds of the bounds.
    thresholds: str
    margin: str
    #: Samples seen / samples needed for an equal candidate to pass.
    samples: str
    verdict: Verdict


#: A table column: its header and the cell it shows of a row.
Column = tuple[str, Callable[[KpiRow], str]]


def evidence_of(decision: Decision, kpi: str) -> Evidence | None:
    """``kpi``'s evidence in ``decision``, None when the decision has none."""
    try:
        return decision.evidence_for(kpi)
    except KeyError:
        return None


def policy_kpi(policy: Policy | None, name: str) -> KpiSpec | None:
    """The policy's KPI ``name``, None without a policy or such a KPI."""
    if policy is None:
        return None
    try:
        return policy.kpi(name)
    except KeyError:
        return None


def verdict_words(verdict: Verdict) -> str:
    """The verdict in words: ``non inferior``."""
    return verdict.value.replace("_", " ")


def verdict_badge(verdict: Verdict) -> str:
    """The verdict in words after an icon: ❌ when it calls for a rollback, ✅ when it
    allows promotion, none otherwise."""
    icon = "❌ " if verdict.blocks_rollout else (
        "✅ " if verdict in (Verdict.NON_INFERIOR, Verdict.BETTER) else "")
    return icon + verdict_words(verdict)


def kpi_row(ev: Evidence, kpi: KpiSpec | None = None, style: NumberStyle = DOCUMENT) -> KpiRow:
    """``ev`` as cells; ``kpi`` (its policy entry) gives values their units."""
    return KpiRow(
        kpi=ev.kpi,
        role=ev.role,
        baseline=fmt_value(ev.baseline_value, kpi, style),
        candidate=fmt_value(ev.candidate_value, kpi, style),
        difference=fmt_difference(ev.candidate_value, ev.baseline_value, kpi, style),
        delta=fmt_delta(ev.delta, style),
        interval=fmt_interval(ev.lower, ev.upper, style),
        thresholds=fmt_thresholds(ev.promote_threshold, ev.rollback_threshold, style),
        margin=fmt_margin(ev.margin, ev.baseline_value, kpi, style),
        samples=fmt_samples(ev.samples, ev.samples_needed, style),
        verdict=ev.verdict,
    )


def kpi_rows(decision: Decision, policy: Policy | None = None,
             style: NumberStyle = DOCUMENT) -> tuple[KpiRow, ...]:
    """One row per KPI of ``decision``, in its order; without ``policy``, values have no
    units (latency in seconds)."""
    return tuple(kpi_row(ev, policy_kpi(policy, ev.kpi), style) for ev in decision.evidence)


def table_cells(rows: Sequence[KpiRow], columns: Sequence[Column]
                ) -> tuple[list[str], list[list[str]]]:
    """The headers and the cells of ``rows`` in ``columns``."""
    return ([header for header, _ in columns],
            [[cell(row) for _, cell in columns] for row in rows])
