"""Quantile KPIs (latency), tested through exceedance of the baseline's quantile.

quantile q: exceedance. The baseline's q-quantile t (pooled) sets a threshold; the test
is ``P_b(X > t) − P_c(X > t·(1+m))`` (two independent binomials, Agresti–Caffo). Under the
null that the candidate's latency is the baseline's scaled by (1+m) the two are equal for
any t, so the margin lives in the threshold and the test is against 0. Thresholds are
snapped to the histogram's bucket edges in the conservative direction for each bound.
Documented in docs/statistics.md.
"""

from __future__ import annotations

import math

from mlflow_kpigate.gate.estimate_proportions import agresti_caffo
from mlflow_kpigate.gate.strata import NAN, Measurement, Strata, no_measurement, pool
from mlflow_kpigate.kpis import LatencyHistogram
from mlflow_kpigate.policy import KpiSpec, Margin


def exceedance(h: LatencyHistogram, threshold: float, snap: str) -> tuple[float, float]:
    """Agresti–Caffo share of latencies above ``threshold`` (snapped ``up``/``down``)."""
    count, _ = h.count_above(threshold, snap)
    return agresti_caffo(count, h.n)


def measure_quantile(kpi: KpiSpec, samples: Strata,
                     m_rollback: float, m_promote: float) -> Measurement:
    """Exceedance difference at the baseline's pooled quantile, within strata, pooled."""
    q = kpi.q or 0.95
    b_all, c_all = samples.merged("baseline"), samples.merged("candidate")
    if b_all.latency.n == 0:
        return no_measurement(kpi, "no baseline latency yet")
    t = b_all.latency.quantile(q)
    bv = t
    cv = c_all.latency.quantile(q) if c_all.latency.n else NAN
    margin = kpi.margin or Margin(0.0, relative=True)

    def scaled(mult: float) -> float:
        return t * (1 + mult * margin.value) if margin.relative else t + mult * margin.value

    t_roll, t_prom = scaled(m_rollback), scaled(m_promote)
    roll_parts, prom_parts = [], []
    for s in samples:
        hb, hc = s.baseline.latency, s.candidate.latency
        if hb.n == 0 or hc.n == 0:
            continue
        # Conservative snapping: for the rollback bound count more baseline and fewer
        # candidate exceedances; for the promotion bound the reverse.
        eb, vb = exceedance(hb, t, "down")
        ec, vc = exceedance(hc, t_roll, "up")
        roll_parts.append((eb - ec, vb + vc))
        eb, vb = exceedance(hb, t, "up")
        ec, vc = exceedance(hc, t_prom, "down")
        prom_parts.append((eb - ec, vb + vc))
    # The margin in exceedance points: how much the baseline's own exceedance drops when the
    # threshold moves by one margin (sets the mixture's scale).
    if b_all.latency.n:
        e_t = b_all.latency.count_above(t, "down")[0] / b_all.latency.n
        e_m = b_all.latency.count_above(scaled(1.0), "up")[0] / b_all.latency.n
        scale = e_t - e_m
    else:
        scale = NAN
    if not (math.isfinite(scale) and scale > 0):
        scale = (1 - q) / 2
    shown = f"+{margin}" if margin.value else ""
    statistic = (f"exceedance: P_baseline(latency > p{q * 100:g}) − "
                 f"P_candidate(latency > p{q * 100:g}{shown})")
    roll = pool(roll_parts)
    prom = pool(prom_parts)
    missing = None if roll.usable and prom.usable else "not enough latency samples"
    return Measurement(statistic, bv, cv, c_all.latency.n, (roll,), (prom,), 0.0, 0.0,
                       scale, missing, better_means_superior=not margin.value)
