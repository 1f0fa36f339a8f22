"""Per-KPI-kind estimators: turn role aggregates into tested statistics with variances.

Each KPI kind yields a :class:`~.strata.Measurement`: human-facing values for both roles,
and one or more tested statistics, each an estimate with its variance, oriented so that
**positive means the candidate is better**. Comparisons are made within each stage
(stratum) and pooled across stages with inverse-variance weights (:mod:`.strata` says why).

This module dispatches on the KPI's kind; each kind's estimator and its variance estimate
(documented in docs/statistics.md) live in their own module:

* proportions and F1: :mod:`.estimate_proportions` (Agresti–Caffo; delta method);
* in strata where both roles answered the same requests and the sample carries their
  joint outcomes, paired variances (:mod:`.paired`) for proportions, F1, log-latency
  means and AUC; KPIs of values that depend on the served answer leave shadow strata out
  (:meth:`~.strata.Strata.for_kpi`);
* latency and logged-value means, business ratios: :mod:`.estimate_means` (Welch; delta
  method from the co-moments);
* AUC: :mod:`.estimate_auc` (DeLong per arm);
* quantiles: :mod:`.estimate_quantiles` (exceedance of the baseline's quantile);
* fairness: :mod:`.estimate_fairness` (log-rate ratios per segment pair);
* the candidate's own value against a hard or control limit: :mod:`.own_value`.
"""

from __future__ import annotations

import math

from mlflow_kpigate.gate.estimate_auc import measure_auc
from mlflow_kpigate.gate.estimate_fairness import fairness_index, measure_fairness, segment_rates
from mlflow_kpigate.gate.estimate_means import business_ratio, measure_business, measure_mean
from mlflow_kpigate.gate.estimate_proportions import counts, f1, measure_proportion, ratio
from mlflow_kpigate.gate.estimate_quantiles import measure_quantile
from mlflow_kpigate.gate.own_value import OwnValue, own_value
from mlflow_kpigate.gate.strata import (
    MIN_UNITS,
    NAN,
    Measurement,
    Strata,
    Test,
    no_measurement,
)
from mlflow_kpigate.kpis import RoleAggregate
from mlflow_kpigate.policy import LATENCY, KpiKind, KpiSpec

# Re-exported: the names callers have imported from this module.
__all__ = [
    "MIN_UNITS",
    "Measurement",
    "OwnValue",
    "Strata",
    "Test",
    "fairness_index",
    "kpi_value",
    "measure",
    "own_value",
    "segment_rates",
]

_MEASURES = {
    KpiKind.PROPORTION: measure_proportion,
    KpiKind.MEAN: measure_mean,
    KpiKind.QUANTILE: measure_quantile,
    KpiKind.AUC: measure_auc,
    KpiKind.FAIRNESS: measure_fairness,
    KpiKind.BUSINESS: measure_business,
}


def measure(kpi: KpiSpec, samples: Strata, m_rollback: float,
            m_promote: float) -> Measurement:
    """Measure ``kpi`` over the strata ``samples``.

    ``m_rollback`` and ``m_promote`` multiply the KPI's margin for the two thresholds
    (0 and 1 for a critical KPI; 1 and the stage's ``promote_margin_scale`` otherwise).
    """
    samples = samples.for_kpi(kpi)
    if not samples:
        return no_measurement(kpi, "no samples yet")
    return _MEASURES[kpi.kind](kpi, samples, m_rollback, m_promote)


def kpi_value(kpi: KpiSpec, agg: RoleAggregate) -> float:
    """The KPI's plain value for one role's aggregate, in KPI units (NaN if undefined).

    Proportions as rates, latency means as geometric means and quantiles in seconds, AUC,
    the fairness index (min/max across segments), business ratios.
    """
    kind = kpi.kind
    if kind is KpiKind.PROPORTION:
        if kpi.metric == "f1":
            return f1(agg)[0]
        return ratio(*counts(kpi, agg))
    if kind is KpiKind.MEAN:
        if kpi.source == LATENCY:
            return math.exp(agg.latency.mean_log()) if agg.latency.n else NAN
        v = agg.values
        return v.mean(kpi.source or "") if v is not None and v.n else NAN
    if kind is KpiKind.QUANTILE:
        return agg.latency.quantile(kpi.q or 0.95) if agg.latency.n else NAN
    if kind is KpiKind.AUC:
        return agg.scores.auc()
    if kind is KpiKind.FAIRNESS:
        return fairness_index(segment_rates(kpi, agg))
    if kind is KpiKind.BUSINESS:
        return business_ratio(kpi, agg)[0]
    raise ValueError(f"unknown KPI kind {kind}")
