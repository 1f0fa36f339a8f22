"""The per-KPI evidence table of a decision."""

from __future__ import annotations

from mlflow_kpigate.core.decision import Decision, Evidence
from mlflow_kpigate.policy import KpiSpec, Policy
from mlflow_kpigate.report.formats import DASH, finite, fmt_delta, fmt_interval, fmt_value


def evidence_of(decision: Decision, kpi: str) -> Evidence | None:
    """``kpi``'s evidence in ``decision``, None when the decision has none."""
    try:
        return decision.evidence_for(kpi)
    except KeyError:
        return None


def policy_kpi(policy: Policy, name: str) -> KpiSpec | None:
    """The policy's KPI ``name``, None when the policy has no such KPI."""
    try:
        return policy.kpi(name)
    except KeyError:
        return None


def verdict_words(ev: Evidence) -> str:
    """The verdict in words: ``non inferior``."""
    return ev.verdict.value.replace("_", " ")


def _fmt_samples(seen: float, needed: float | None) -> str:
    left = f"{int(seen):,}" if finite(seen) else DASH
    right = f"{int(needed):,}" if finite(needed) else DASH
    return f"{left} / {right}"


def kpi_row(ev: Evidence, kpi: KpiSpec | None) -> list[str]:
    """The report's cells of one KPI."""
    return [ev.kpi, ev.role, fmt_value(ev.baseline_value, kpi), fmt_value(ev.candidate_value, kpi),
            fmt_delta(ev.delta), fmt_interval(ev.lower, ev.upper), ev.margin or DASH,
            _fmt_samples(ev.samples, ev.samples_needed), verdict_words(ev)]
