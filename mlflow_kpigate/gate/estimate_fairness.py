"""Fairness KPIs: the index min/max of a rate across the segments of one field.

For every ordered pair of segments (A, B) the statistic ``ln(r_c,A / r_c,B) − ln FI_b``
compares the candidate's pair ratio with the baseline's index; log-rate variances by the
delta method (≈ 1/x − 1/n with +½ continuity); the pairs are a family (Bonferroni within
the KPI's share of α). With three or more segments the rollback family also compares each
segment with the pooled rest, both ways: a pooled rate lies between the smallest and the
largest segment rate, so such a ratio is never below the index and its test is as valid
as a pair's, while it rests on far more events than a pair with a small segment (the
harm "one segment's rate moved" is caught sooner). Promotion needs every pair (the index
itself). Documented in docs/statistics.md.

The rollback tests keep the delta-method variances: a restricted estimate would constrain
four binomials (and the baseline's argmin/argmax segments) through a ratio, with no closed
form; and for a false-positive-rate index, a candidate whose segment rate rose (the harm
the KPI is for) has *more* events there, so its unrestricted variance is already below
the null one.
"""

from __future__ import annotations

import math
from itertools import permutations

from mlflow_kpigate.gate.strata import (
    NAN,
    Measurement,
    Strata,
    Test,
    no_measurement,
    rollback_distance,
)
from mlflow_kpigate.kpis import RoleAggregate
from mlflow_kpigate.policy import KpiSpec


def log_rate(x: float, n: float) -> tuple[float, float]:
    """Log of a rate with a ½ continuity correction, and its delta-method variance."""
    xs, ns = x + 0.5, n + 1.0
    return math.log(xs / ns), max(1.0 / xs - 1.0 / ns, 1e-12)


def segment_rates(kpi: KpiSpec, agg: RoleAggregate) -> dict[str, tuple[float, float]]:
    """(successes, trials) of the fairness KPI's rate in every segment with trials."""
    field = kpi.segment_by or ""
    out: dict[str, tuple[float, float]] = {}
    for value, conf in agg.segments.get(field, {}).items():
        x, n = conf.rate(kpi.metric or "")
        if n > 0:
            out[value] = (float(x), float(n))
    return out


def fairness_index(rates: dict[str, tuple[float, float]]) -> float:
    """min/max of the per-segment rates (1 = equal); NaN with fewer than two segments."""
    values = [x / n for x, n in rates.values() if n > 0]
    if len(values) < 2 or max(values) == 0:
        return NAN
    return min(values) / max(values)


def fairness_tests(field: str, b_rates: dict[str, tuple[float, float]],
                   c_rates: dict[str, tuple[float, float]]
                   ) -> tuple[tuple[Test, ...], tuple[Test, ...]]:
    """(pair tests, pooled-rest tests) on the segments both roles saw (two or more).

    Each estimates a log-ratio of two candidate rates, each ratio at least the candidate's
    index, minus ln FI_b; the baseline's index is set by its lowest- and highest-rate
    segments, whose log-rate variances every test carries.
    """
    common = sorted(set(b_rates) & set(c_rates))
    b_logs = {s: log_rate(*b_rates[s]) for s in common}
    lo_seg = min(common, key=lambda s: b_logs[s][0])
    hi_seg = max(common, key=lambda s: b_logs[s][0])
    ln_fi_b = b_logs[lo_seg][0] - b_logs[hi_seg][0]
    var_fi_b = b_logs[lo_seg][1] + b_logs[hi_seg][1]
    c_logs = {s: log_rate(*c_rates[s]) for s in common}
    pairs = tuple(Test(f"{field}={a} vs {b}", c_logs[a][0] - c_logs[b][0] - ln_fi_b,
                       c_logs[a][1] + c_logs[b][1] + var_fi_b)
                  for a, b in permutations(common, 2))
    pooled: list[Test] = []
    if len(common) > 2:  # with two segments the rest is the other one: the pairs again
        for s in common:
            rest = log_rate(sum(c_rates[o][0] for o in common if o != s),
                            sum(c_rates[o][1] for o in common if o != s))
            var = c_logs[s][1] + rest[1] + var_fi_b
            pooled += [Test(f"{field}={s} vs the rest", c_logs[s][0] - rest[0] - ln_fi_b, var),
                       Test(f"{field}=the rest vs {s}", rest[0] - c_logs[s][0] - ln_fi_b, var)]
    return pairs, tuple(pooled)


def measure_fairness(kpi: KpiSpec, samples: Strata,
                     m_rollback: float, m_promote: float) -> Measurement:
    """Tests of the candidate's segment ratios against the baseline's index (data merged)."""
    b_rates = segment_rates(kpi, samples.merged("baseline"))
    c_rates = segment_rates(kpi, samples.merged("candidate"))
    common = sorted(set(b_rates) & set(c_rates))
    bv, cv = fairness_index(b_rates), fairness_index(c_rates)
    if len(common) < 2:
        return no_measurement(kpi, f"needs two or more '{kpi.segment_by}' segments seen by "
                                   "both roles")
    pairs, pooled = fairness_tests(kpi.segment_by or "", b_rates, c_rates)
    # The index may drop by at most m of the baseline's (higher is better): FI_c ≥ (1−m)·FI_b.
    margin = -math.log1p(-kpi.margin.value) if kpi.margin else NAN
    detect = -math.log1p(-kpi.detect.value) if kpi.detect else NAN
    samples_c = int(sum(n for _, n in c_rates.values()))
    return Measurement(
        statistic=(f"ln({kpi.metric} ratio between two {kpi.segment_by} segments (or one "
                   "and the rest), candidate) − ln(baseline fairness index)"),
        baseline_value=bv,
        candidate_value=cv,
        samples=samples_c,
        rollback_tests=pairs + pooled,
        promote_tests=pairs,
        rollback_threshold=-m_rollback * margin if math.isfinite(margin) else 0.0,
        promote_threshold=-m_promote * margin if math.isfinite(margin) else NAN,
        scale=margin if math.isfinite(margin) else math.log(1.25),
        rollback_scale=rollback_distance(margin, detect, m_rollback),
        guard_threshold=-margin,
    )
