"""Text tables shared by the commands that show gate decisions."""

from __future__ import annotations

import math

from mlflow_kpigate.gate import Decision


def evidence_table(decision: Decision) -> list[str]:
    """One row per KPI: values, delta, anytime-valid bounds, thresholds, samples, verdict."""
    rows = [("KPI", "role", "baseline", "candidate", "delta", "bounds [promote, rollback]",
             "threshold", "samples", "verdict")]
    for e in decision.evidence:
        bounds = "" if math.isnan(e.lower) else f"[{e.lower:+.4f}, {e.upper:+.4f}]"
        thr = "" if math.isnan(e.promote_threshold) else (
            f"{e.promote_threshold:+.4f} / {e.rollback_threshold:+.4f}")
        need = f"/{e.samples_needed:,}" if e.samples_needed else ""
        rows.append((e.kpi, e.role, _num(e.baseline_value), _num(e.candidate_value),
                     "" if math.isnan(e.delta) else f"{e.delta:+.4f}", bounds, thr,
                     f"{e.samples:,}{need}", e.verdict.value))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.4g}"
