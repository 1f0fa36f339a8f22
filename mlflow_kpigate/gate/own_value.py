"""The candidate's own KPI value tested against a fixed threshold, not against the baseline.

Used for hard limits (``limit`` in the policy) and registry control limits (μ ∓ kσ of the
baseline's earlier values). The candidate's data are merged across strata (there is no
baseline arm to compare with inside a stratum); each kind uses the estimate and variance of
its comparison with the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations

from mlflow_kpigate.gate.estimate_fairness import log_rate, segment_rates
from mlflow_kpigate.gate.estimate_means import business_ratio
from mlflow_kpigate.gate.estimate_proportions import agresti_caffo, counts, f1
from mlflow_kpigate.gate.estimate_quantiles import exceedance
from mlflow_kpigate.gate.strata import MIN_UNITS, Test, orientation
from mlflow_kpigate.kpis import RoleAggregate
from mlflow_kpigate.policy import LATENCY, KpiKind, KpiSpec


@dataclass(frozen=True)
class OwnValue:
    """Tests of the candidate's own KPI value against a fixed threshold (better-positive)."""

    tests_rollback: tuple[Test, ...]
    tests_promote: tuple[Test, ...]
    scale: float


def own_value(kpi: KpiSpec, candidate: RoleAggregate, threshold: float, scale: float
              ) -> OwnValue | None:
    """Test the candidate's pooled value against ``threshold`` (KPI units).

    ``scale`` is the distance from the threshold at which the decision matters (sets τ).
    Returns ``None`` when the data cannot support an estimate yet.
    """
    sign = orientation(kpi)
    kind = kpi.kind
    if kind is KpiKind.PROPORTION:
        n: float
        if kpi.metric == "f1":
            r, var, n = f1(candidate)
        else:
            x, n = counts(kpi, candidate)
            if n == 0:
                return None
            r, var = agresti_caffo(x, n)
        t = Test("", sign * (r - threshold), var)
        return OwnValue((t,), (t,), scale) if t.usable else None
    if kind is KpiKind.MEAN:
        if kpi.source == LATENCY:
            h = candidate.latency
            if h.n < MIN_UNITS or threshold <= 0:
                return None
            t = Test("", sign * (h.mean_log() - math.log(threshold)), h.var_log() / h.n)
            return OwnValue((t,), (t,), math.log1p(scale / threshold))
        v = candidate.values
        name = kpi.source or ""
        if v is None or v.n < MIN_UNITS:
            return None
        t = Test("", sign * (v.mean(name) - threshold), v.cov(name, name) / v.n)
        return OwnValue((t,), (t,), scale) if t.usable else None
    if kind is KpiKind.QUANTILE:
        h = candidate.latency
        if h.n == 0:
            return None
        q = kpi.q or 0.95
        er, vr = exceedance(h, threshold, "up")
        ep, vp = exceedance(h, threshold, "down")
        # Better-positive: the exceedance of the limit is below 1 − q ⇔ quantile below limit.
        return OwnValue((Test("", (1 - q) - er, vr),), (Test("", (1 - q) - ep, vp),),
                        (1 - q) / 2)
    if kind is KpiKind.AUC:
        s = candidate.scores
        if min(s.n_pos, s.n_neg) < MIN_UNITS // 3:
            return None
        t = Test("", sign * (s.auc() - threshold), s.auc_variance())
        return OwnValue((t,), (t,), scale) if t.usable else None
    if kind is KpiKind.FAIRNESS:
        rates = segment_rates(kpi, candidate)
        if len(rates) < 2 or threshold <= 0:
            return None
        logs = {s: log_rate(*r) for s, r in rates.items()}
        tests = tuple(
            Test(f"{kpi.segment_by}={a} vs {b}", logs[a][0] - logs[b][0] - math.log(threshold),
                 logs[a][1] + logs[b][1])
            for a, b in permutations(sorted(logs), 2)
        )
        return OwnValue(tests, tests, math.log1p(scale / threshold))
    if kind is KpiKind.BUSINESS:
        r, var, _ = business_ratio(kpi, candidate)
        t = Test("", sign * (r - threshold), var)
        return OwnValue((t,), (t,), scale) if t.usable else None
    raise ValueError(f"unknown KPI kind {kind}")
