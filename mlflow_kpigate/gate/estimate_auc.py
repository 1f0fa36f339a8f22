"""AUC KPIs: the difference of binned-score AUCs, DeLong variances (split strata: per arm).

The rollback test keeps DeLong's unrestricted variance: AUC_c = AUC_b (or = AUC_b −
margin) does not determine the variance, which depends on the whole score distributions,
so there is no restricted estimate short of a model for them.

A stratum contributes only when each role has a third of :data:`~.strata.MIN_UNITS`
positives and as many negatives (DeLong's variance needs both classes). A role whose
labelled predictions carry no score at all returns labels: the KPI says so.

In a stratum with a paired part (both roles scored the same labelled requests) the
difference is taken over those requests with DeLong's variance of correlated AUCs,
``V_c + V_b − 2·Cov`` (DeLong, DeLong & Clarke-Pearson 1988; :mod:`.paired`).
"""

from __future__ import annotations

from mlflow_kpigate.gate.paired import paired_auc
from mlflow_kpigate.gate.strata import (
    MIN_UNITS,
    Measurement,
    Strata,
    no_measurement,
    orientation,
    pool,
    pooled_measurement,
    resolve_margin,
)
from mlflow_kpigate.policy import KpiSpec


def measure_auc(kpi: KpiSpec, samples: Strata,
                m_rollback: float, m_promote: float) -> Measurement:
    """AUC difference, within strata, pooled."""
    sign = orientation(kpi)
    b_all, c_all = samples.merged("baseline"), samples.merged("candidate")
    for role, agg in (("candidate", c_all), ("baseline", b_all)):
        if agg.labelled > 0 and agg.scores.n_pos + agg.scores.n_neg == 0:
            # Labelled predictions without a single score: the model answers with labels,
            # and waiting will never produce an AUC.
            return no_measurement(kpi, f"the {role} returns labels, not scores: AUC needs "
                                       "scores (log the model with "
                                       "pyfunc_predict_fn='predict_proba')")
    parts = []
    for s in samples:
        paired = samples.paired(s)
        if paired is not None:
            diff, var, scarce = paired_auc(paired)
            if scarce >= MIN_UNITS // 3:
                parts.append((sign * diff, var))
            continue
        sb, sc = s.baseline.scores, s.candidate.scores
        if min(sb.n_pos, sb.n_neg, sc.n_pos, sc.n_neg) < MIN_UNITS // 3:
            continue
        parts.append((sign * (sc.auc() - sb.auc()), sb.auc_variance() + sc.auc_variance()))
    bv, cv = b_all.scores.auc(), c_all.scores.auc()
    margin = resolve_margin(kpi.margin, bv)
    return pooled_measurement(kpi, "AUC difference (candidate − baseline)", bv, cv,
                              c_all.scores.n_pos + c_all.scores.n_neg, pool(parts), margin,
                              m_rollback, m_promote, detect=resolve_margin(kpi.detect, bv))
