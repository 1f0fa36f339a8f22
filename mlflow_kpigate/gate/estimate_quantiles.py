"""Quantile KPIs (latency), tested through exceedance of the baseline's quantile.

quantile q: exceedance. The baseline's q-quantile t (pooled) sets a threshold; the test
is ``P_b(X > t) − P_c(X > t·(1+m))`` (two independent binomials, Agresti–Caffo). Under the
null that the candidate's latency is the baseline's scaled by (1+m) the two are equal for
any t, so the margin lives in the threshold and the test is against 0. The rollback test
therefore uses the pooled binomial variance of the two exceedances (they are equal under
its null; the common exceedance estimated from all strata), on counts adjusted towards
the pooled exceedance; the promotion test keeps the unpooled Agresti–Caffo variance. Thresholds are
snapped to the histogram's bucket edges in the conservative direction for each bound.
Documented in docs/statistics.md.
"""

from __future__ import annotations

import math

from mlflow_kpigate.gate.estimate_proportions import agresti_caffo
from mlflow_kpigate.gate.null_variance import adjust_toward_pooled, stratified_null_variances
from mlflow_kpigate.gate.strata import (
    NAN,
    Measurement,
    Strata,
    no_measurement,
    pool,
    rollback_distance,
)
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

    t_roll, t_prom, t_guard = scaled(m_rollback), scaled(m_promote), scaled(1.0)
    roll_counts, prom_parts, guard_parts = [], [], []
    for s in samples:
        hb, hc = s.baseline.latency, s.candidate.latency
        if hb.n == 0 or hc.n == 0:
            continue
        # Conservative snapping: for the rollback bound count more baseline and fewer
        # candidate exceedances; for the promotion bound the reverse.
        roll_counts.append(adjust_toward_pooled(hc.count_above(t_roll, "up")[0], hc.n,
                                                hb.count_above(t, "down")[0], hb.n))
        eb, vb = exceedance(hb, t, "up")
        ec, vc = exceedance(hc, t_prom, "down")
        prom_parts.append((eb - ec, vb + vc))
        if t_guard != t_prom:
            # The promotion guard's point estimate is at the unscaled margin.
            ec, vc = exceedance(hc, t_guard, "down")
            guard_parts.append((eb - ec, vb + vc))
    # The margin in exceedance points: how much the baseline's own exceedance drops when the
    # threshold moves by one margin (sets the mixture's scale); ``detect`` converts alike.
    h_all = b_all.latency

    def drop(mult: float, by: Margin) -> float:
        moved = t * (1 + mult * by.value) if by.relative else t + mult * by.value
        return (h_all.count_above(t, "down")[0] - h_all.count_above(moved, "up")[0]) / h_all.n

    scale = drop(1.0, margin)
    if not (math.isfinite(scale) and scale > 0):
        scale = (1 - q) / 2
    detect = drop(1.0, kpi.detect) if kpi.detect is not None else NAN
    shown = f"+{margin}" if margin.value else ""
    statistic = (f"exceedance: P_baseline(latency > p{q * 100:g}) − "
                 f"P_candidate(latency > p{q * 100:g}{shown})")
    # Equal exceedances under the rollback null: pooled variance, the common exceedance
    # estimated from all strata.
    roll = pool([(ab / nb - ac / nc, v0) for (ac, nc, ab, nb), v0 in zip(
        roll_counts, stratified_null_variances(roll_counts, 0.0), strict=True)])
    prom = pool(prom_parts)
    missing = None if roll.usable and prom.usable else "not enough latency samples"
    guard = (pool(guard_parts),) if guard_parts else ()
    return Measurement(statistic, bv, cv, c_all.latency.n, (roll,), (prom,), 0.0, 0.0,
                       scale, missing, better_means_superior=not margin.value,
                       rollback_scale=rollback_distance(scale, detect, m_rollback),
                       # The margin is in the statistic: the guard needs δ̂ > 0 at t(1 + m).
                       guard_threshold=0.0 if margin.value else NAN, guard_tests=guard)
