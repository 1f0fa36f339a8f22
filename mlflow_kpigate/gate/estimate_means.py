"""Mean KPIs (latency, a logged value) and business ratios of logged values.

Variance estimates (documented in docs/statistics.md):

* latency mean: difference of mean log-latency (a ratio of geometric means), Welch variance;
* mean of a logged value: difference of means, Welch variance;
  both for the rollback test too: a pooled (equal-spread) variance would be the null
  variance only under a pure location shift, and with unequal arms (5% vs 95%) it
  under-states the variance of a candidate whose spread grew while its mean did not,
  which inflates false rollbacks (tests/test_null_variance.py measures it);
* business: ratio of logged values Σnum/Σden per arm, delta-method variance from the
  co-moments (``den = count`` gives a plain mean), for the rollback test too: its null
  fixes the ratio's difference, not the co-moments.

A stratum contributes only when both roles have :data:`~.strata.MIN_UNITS` values.

In a stratum with a paired part (both roles on the same requests) the latency mean is the
mean of the per-request differences of log-latency, with variance s²_d/n (paired t), when
at least :data:`~.strata.MIN_UNITS` requests have both latencies; logged values and
business ratios describe the served answer and are not measurable in shadow
(:meth:`~.strata.Strata.for_kpi` leaves those strata out).
"""

from __future__ import annotations

import math

from mlflow_kpigate.gate.paired import paired_log_latency
from mlflow_kpigate.gate.strata import (
    MIN_UNITS,
    NAN,
    Measurement,
    Strata,
    orientation,
    pool,
    pooled_measurement,
    resolve_margin,
)
from mlflow_kpigate.kpis import RoleAggregate
from mlflow_kpigate.policy import COUNT, LATENCY, KpiSpec


def measure_mean(kpi: KpiSpec, samples: Strata,
                 m_rollback: float, m_promote: float) -> Measurement:
    """Difference of means (of log-latency for latency), within strata, pooled."""
    sign = orientation(kpi)
    b_all, c_all = samples.merged("baseline"), samples.merged("candidate")
    parts = []
    if kpi.source == LATENCY:
        for s in samples:
            paired = samples.paired(s)
            if paired is not None:
                diff, var, pairs = paired_log_latency(paired)
                if pairs >= MIN_UNITS:
                    parts.append((sign * diff, var))
                continue
            hb, hc = s.baseline.latency, s.candidate.latency
            if hb.n < MIN_UNITS or hc.n < MIN_UNITS:
                continue
            parts.append((sign * (hc.mean_log() - hb.mean_log()),
                          hb.var_log() / hb.n + hc.var_log() / hc.n))
        bv = math.exp(b_all.latency.mean_log()) if b_all.latency.n else NAN
        cv = math.exp(c_all.latency.mean_log()) if c_all.latency.n else NAN
        margin = math.log1p(kpi.margin.value) if kpi.margin else NAN
        detect = math.log1p(kpi.detect.value) if kpi.detect else NAN
        statistic = "log ratio of geometric-mean latency (candidate / baseline)"
        samples_c = c_all.latency.n
    else:
        name = kpi.source or ""
        for s in samples:
            vb_, vc_ = s.baseline.values, s.candidate.values
            if vb_ is None or vc_ is None or vb_.n < MIN_UNITS or vc_.n < MIN_UNITS:
                continue
            parts.append((sign * (vc_.mean(name) - vb_.mean(name)),
                          vb_.cov(name, name) / vb_.n + vc_.cov(name, name) / vc_.n))
        bv = b_all.values.mean(name) if b_all.values and b_all.values.n else NAN
        cv = c_all.values.mean(name) if c_all.values and c_all.values.n else NAN
        margin = resolve_margin(kpi.margin, bv)
        detect = resolve_margin(kpi.detect, bv)
        statistic = f"mean {name} difference (candidate − baseline)"
        samples_c = c_all.values.n if c_all.values else 0
    return pooled_measurement(kpi, statistic, bv, cv, samples_c, pool(parts), margin,
                              m_rollback, m_promote, detect=detect)


def business_ratio(kpi: KpiSpec, agg: RoleAggregate) -> tuple[float, float, int]:
    """Σnum/Σden of one role, its delta-method variance, and the number of values."""
    v = agg.values
    if v is None or v.n < MIN_UNITS:
        return NAN, NAN, 0 if v is None else v.n
    num = kpi.numerator or ""
    if kpi.denominator == COUNT:
        return v.mean(num), v.cov(num, num) / v.n, v.n
    den = kpi.denominator or ""
    md = v.mean(den)
    if md == 0:
        return NAN, NAN, v.n
    r = v.mean(num) / md
    var = (v.cov(num, num) - 2 * r * v.cov(num, den) + r * r * v.cov(den, den)) / (v.n * md * md)
    return r, max(var, 0.0), v.n


def measure_business(kpi: KpiSpec, samples: Strata,
                     m_rollback: float, m_promote: float) -> Measurement:
    """Difference of the business ratio, within strata, pooled."""
    sign = orientation(kpi)
    bv, _, _ = business_ratio(kpi, samples.merged("baseline"))
    cv, _, cn = business_ratio(kpi, samples.merged("candidate"))
    parts = []
    for s in samples:
        rb, vb, _ = business_ratio(kpi, s.baseline)
        rc, vc, _ = business_ratio(kpi, s.candidate)
        parts.append((sign * (rc - rb), vb + vc))
    margin = resolve_margin(kpi.margin, bv)
    per = "per prediction" if kpi.denominator == COUNT else f"per {kpi.denominator}"
    statistic = f"{kpi.numerator} {per} difference (candidate − baseline)"
    return pooled_measurement(kpi, statistic, bv, cv, cn, pool(parts), margin, m_rollback,
                              m_promote, detect=resolve_margin(kpi.detect, bv))
