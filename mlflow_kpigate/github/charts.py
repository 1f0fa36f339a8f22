"""Mermaid charts for the pull-request comment: the candidate's traffic share, and the
deciding KPI's Δ with its anytime-valid bounds.

GitHub renders Mermaid ``xychart-beta`` blocks in comments, and its API cannot upload
images, so the comment draws its charts as text. Long rollouts are sampled evenly to
:data:`MAX_CHART_POINTS` points.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from mlflow_kpigate.github.record import RolloutRecord

#: Most points drawn in a Mermaid chart; longer rollouts are sampled evenly.
MAX_CHART_POINTS = 60


def _sample(n: int) -> list[int]:
    if n <= MAX_CHART_POINTS:
        return list(range(n))
    step = (n - 1) / (MAX_CHART_POINTS - 1)
    return sorted({round(i * step) for i in range(MAX_CHART_POINTS)})


def _labels(numbers: Iterable[int]) -> str:
    return ", ".join(f'"{n}"' for n in numbers)


def _num(value: float) -> str:
    return f"{value + 0.0:.4g}"  # + 0.0 turns -0.0 into 0


def _deciding_kpi(record: RolloutRecord) -> str | None:
    """The KPI the final decision names in its reason, else the first deciding one."""
    if not record.evaluations:
        return None
    last = record.evaluations[-1].decision
    evidence = [e for e in last.evidence if e.role in ("critical", "guardrail")]
    for ev in evidence:
        if re.search(rf"(?<![\w.]){re.escape(ev.kpi)}(?![\w.])", last.reason):
            return ev.kpi
    return evidence[0].kpi if evidence else None


def charts(record: RolloutRecord) -> list[str]:
    """Mermaid ``xychart-beta`` blocks: candidate traffic, and the deciding KPI's Δ."""
    evals = record.evaluations
    if not evals:
        return []
    out = ["#### Charts", ""]
    idx = _sample(len(evals))
    share = []
    last = 0.0
    for ev in evals:
        if ev.traffic_percent is not None and math.isfinite(ev.traffic_percent):
            last = ev.traffic_percent
        share.append(last)
    out += ["```mermaid", "xychart-beta",
            '    title "Candidate traffic share after each evaluation"',
            f'    x-axis "evaluation" [{_labels(i + 1 for i in idx)}]',
            '    y-axis "candidate traffic (%)" 0 --> 100',
            f"    line [{', '.join(_num(share[i]) for i in idx)}]", "```", ""]
    name = _deciding_kpi(record)
    points = []
    for i, ev in enumerate(evals):
        try:
            e = ev.decision.evidence_for(name) if name else None
        except KeyError:
            e = None
        values = (e.delta, e.lower, e.upper, e.rollback_threshold) if e else ()
        if values and all(math.isfinite(v) for v in values):
            points.append((i, values))
    if name and len(points) >= 2:
        points = [points[j] for j in _sample(len(points))]
        series = list(zip(*(v for _, v in points), strict=True))
        # Mermaid titles are quoted strings: keep a KPI name to plain characters.
        title = re.sub(r"[^A-Za-z0-9_. %-]", "_", name)[:60]
        out += ["```mermaid", "xychart-beta",
                f'    title "{title}: Δ (candidate − baseline, + is better) and its bounds"',
                f'    x-axis "evaluation" [{_labels(i + 1 for i, _ in points)}]',
                *(f"    line [{', '.join(_num(v) for v in s)}]" for s in series),
                "```", "",
                "Lines, in drawing order: Δ, promotion bound (lower), rollback bound (upper), "
                "rollback threshold. Rollback when the upper bound falls below the threshold.",
                ""]
    return out
