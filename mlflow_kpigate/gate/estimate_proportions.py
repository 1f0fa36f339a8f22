"""Proportion KPIs (precision, recall, rates, accuracy, custom counters) and F1.

Variance estimates (documented in docs/statistics.md):

* proportions: the promotion test uses Agresti–Caffo (+1 success, +2 trials per arm)
  proportions with their plug-in binomial variance; the rollback test uses counts with
  two pseudo-trials per arm at the pooled proportion and its variance computed under its
  null, the null proportions estimated from all strata: pooled p̄ for a critical KPI
  (Δ = 0), Farrington–Manning restricted maximum likelihood at Δ = −margin for a
  guardrail (:mod:`.null_variance`). The unit is the
  metric's denominator (labelled positives for recall, predicted positives for precision,
  requests for error rate);
* F1: ratio estimator 2TP / (2TP + FP + FN), delta-method variance, for both tests (F1 is
  not a binomial proportion: its null variance has no closed form).

In a stratum with a paired part (both roles on the same requests) the counts are those of
the paired requests and every variance above becomes ``v_c + v_b − 2ρ√(v_c v_b)`` with the
delta-method correlation ρ of the two roles' rates on the joint table (:mod:`.paired`);
the null proportions still come from all strata. Custom proportions count business
values and are not measurable in shadow (:meth:`~.strata.Strata.for_kpi`).
"""

from __future__ import annotations

import math

from mlflow_kpigate.gate.null_variance import adjust_toward_pooled, stratified_null_arm_variances
from mlflow_kpigate.gate.paired import (
    correlated_variance,
    f1_correlation,
    paired_confusions,
    paired_counts,
)
from mlflow_kpigate.gate.strata import (
    NAN,
    Measurement,
    Strata,
    no_measurement,
    orientation,
    pool,
    pooled_measurement,
    resolve_margin,
)
from mlflow_kpigate.kpis import Confusion, RoleAggregate
from mlflow_kpigate.policy import KpiSpec


def agresti_caffo(x: float, n: float) -> tuple[float, float]:
    """Agresti–Caffo adjusted proportion and its variance."""
    p = (x + 1.0) / (n + 2.0)
    return p, p * (1.0 - p) / (n + 2.0)


def ratio(x: float, n: float) -> float:
    """``x / n``, NaN without trials."""
    return x / n if n > 0 else NAN


def counts(kpi: KpiSpec, agg: RoleAggregate) -> tuple[float, float]:
    """(successes, trials) of a proportion KPI for one role."""
    if kpi.metric == "error_rate":
        return float(agg.errors), float(agg.requests)
    if kpi.metric == "custom":
        if agg.values is None or agg.values.n == 0:
            return 0.0, 0.0
        return agg.values.total(kpi.numerator or ""), agg.values.total(kpi.denominator or "")
    x, n = agg.confusion.rate(kpi.metric or "")
    return float(x), float(n)


def f1(agg: RoleAggregate | Confusion) -> tuple[float, float, int]:
    """F1, its delta-method variance, and the number of units (TP+FP+FN)."""
    c = agg.confusion if isinstance(agg, RoleAggregate) else agg
    den = 2 * c.tp + c.fp + c.fn
    if den == 0:
        return NAN, NAN, 0
    r = 2 * c.tp / den
    # Per labelled prediction: a = 2·tp, d = 2·tp + fp + fn; Var(R) ≈ Σ(a − R d)² / (Σd)².
    ss = c.tp * (2 - 2 * r) ** 2 + (c.fp + c.fn) * r * r
    var = ss / (den * den)
    # Continuity floor so that an all-correct arm still has a usable variance.
    var = max(var, 0.25 / (den * den))
    return r, var, c.tp + c.fp + c.fn


def measure_proportion(kpi: KpiSpec, samples: Strata,
                       m_rollback: float, m_promote: float) -> Measurement:
    """Difference of the proportion (or F1), within strata, pooled."""
    sign = orientation(kpi)
    b_all, c_all = samples.merged("baseline"), samples.merged("candidate")
    if kpi.metric == "f1":
        bv, _, _ = f1(b_all)
        cv, _, cn = f1(c_all)
        parts = []
        for s in samples:
            paired = samples.paired(s)
            if paired is None:
                rb, vb, _ = f1(s.baseline)
                rc, vc, _ = f1(s.candidate)
                parts.append((sign * (rc - rb), vb + vc))
                continue
            conf_b, conf_c = paired_confusions(paired)
            rb, vb, _ = f1(conf_b)
            rc, vc, _ = f1(conf_c)
            parts.append((sign * (rc - rb), correlated_variance(vc, vb, f1_correlation(paired))))
        margin = resolve_margin(kpi.margin, bv)
        return pooled_measurement(kpi, "F1 difference (candidate − baseline)", bv, cv, cn,
                                  pool(parts), margin, m_rollback, m_promote,
                                  detect=resolve_margin(kpi.detect, bv))
    xb, nb = counts(kpi, b_all)
    xc, nc = counts(kpi, c_all)
    if kpi.metric == "custom" and (xb > nb or xc > nc):
        return no_measurement(kpi, "custom proportion: numerator exceeds denominator; it "
                                   "must count a subset of the denominator's events")
    bv, cv = ratio(xb, nb), ratio(xc, nc)
    margin = resolve_margin(kpi.margin, bv)
    # H0 of the rollback test on the raw scale: p_c − p_b = −sign · m_rollback · margin
    # (a lower-is-better rate is *higher* by the margin at the null boundary). Without a
    # margin the rollback threshold is 0.
    null_diff = -sign * m_rollback * margin if m_rollback and math.isfinite(margin) else 0.0
    parts, adjusted, unrestricted, rhos = [], [], [], []
    for s in samples:
        paired = samples.paired(s)
        pair = paired_counts(kpi, paired) if paired is not None else None
        if pair is not None:
            # Both roles on the same requests: their counts, correlated by ρ.
            sxb, snb, sxc, snc, rho = pair.xb, pair.nb, pair.xc, pair.nc, pair.rho
        else:
            sxb, snb = counts(kpi, s.baseline)
            sxc, snc = counts(kpi, s.candidate)
            rho = 0.0
        if snb == 0 or snc == 0:
            continue
        pb, vb = agresti_caffo(sxb, snb)
        pc, vc = agresti_caffo(sxc, snc)
        vu = correlated_variance(vc, vb, rho)
        parts.append((sign * (pc - pb), vu))
        adjusted.append(adjust_toward_pooled(sxc, snc, sxb, snb))
        unrestricted.append(vu)
        rhos.append(rho)
    # Variances at the null boundary, with the null proportions estimated from all strata
    # (NaN only when no pair of proportions differs by the margin: then the unrestricted
    # variance stands in); a paired stratum's arms are correlated by its ρ.
    null_parts = []
    for (ac, nc_, ab, nb_), (v0c, v0b), vu, rho in zip(
            adjusted, stratified_null_arm_variances(adjusted, null_diff), unrestricted, rhos,
            strict=True):
        v0 = correlated_variance(v0c, v0b, rho)
        null_parts.append((sign * (ac / nc_ - ab / nb_), v0 if v0 > 0 else vu))
    statistic = f"{kpi.metric} difference (candidate − baseline)"
    test = pool(parts)
    # The rollback statistic pools the strata with its own (null) inverse variances.
    roll = pool(null_parts)
    return pooled_measurement(kpi, statistic, bv, cv, int(nc), test, margin, m_rollback,
                              m_promote, rollback_test=roll, detect=resolve_margin(kpi.detect, bv))
