"""Paired variances: both roles answered the same requests (shadow stages, the bake).

When each request of a stratum carries both roles' outcomes
(:class:`~mlflow_kpigate.kpis.PairedAggregate`), the variance of a difference is
``Var(θ̂_c − θ̂_b) = v_c + v_b − 2ρ√(v_c v_b)``, with ρ the correlation of the two roles'
estimates over the same requests. Every paired variance the gate uses has this form: the
roles' own variances are those of the independent estimators (Agresti–Caffo, F1's delta
method, DeLong), and the pairing enters through ρ (docs/statistics.md, "Paired comparison
in shadow"):

* **confusion rates and error rate** — each role's rate is a ratio R = Σa/Σd over the
  paired requests (a: the success indicator, d: the unit indicator: labelled positives for
  recall, the role's own predicted positives for precision …). By the delta method the
  influence of one request on R is ψ = (a − R·d)/Σd, so
  ``ρ = Σ ψ_b ψ_c / √(Σ ψ_b² Σ ψ_c²)`` over the 2×2×2 table (label × baseline predicted ×
  candidate predicted; the 2×2 error table for the error rate), each cell with ½ added
  (Agresti & Min 2005: keeps ρ defined and away from ±1 before any discordant pair).
  For a rate whose unit is the same for both roles (recall, FPR, accuracy, error rate) this
  is the phi coefficient of the two roles' hits, and v_c + v_b − 2ρ√(v_c v_b) is McNemar's
  (Tango's) ``[p₁₀ + p₀₁ − (p₁₀ − p₀₁)²]/n``; for precision and F1 (a different unit per
  role) it is the delta method on the joint table;
* **rollback tests (null variance)** — the same ρ with the arms' variances at the null
  proportions (pooled p̄ at Δ = 0, Farrington–Manning's restricted pair at Δ = −margin,
  both estimated from all strata as for split traffic): ``v₀ = v₀,c + v₀,b − 2ρ√(v₀,c v₀,b)``.
  At Δ = 0 with equal marginals this is 2p̄(1 − p̄)(1 − ρ)/n, the discordance q₁₀ + q₀₁
  expressed through the common proportion and the within-pair correlation: asymptotically
  Tango's restricted-MLE score variance (Tango 1998; Nam 1997), while the null proportion,
  like the split strata's, comes from all strata (a paired stratum that has seen no event
  keeps a variance that grows when later strata see some, instead of swamping them);
* **log-latency** — mean and variance of the per-request difference, s²_d/n;
* **AUC** — DeLong's covariance of correlated ROC curves
  (:meth:`~mlflow_kpigate.kpis.PairedAggregate.auc_covariance`).

Pure functions; the estimators (``estimate_*.py``) call them for strata with a paired part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlflow_kpigate.kpis import Confusion, PairedAggregate
from mlflow_kpigate.policy import KpiSpec

NAN = math.nan

#: Added to every cell of a joint table before estimating ρ (Agresti–Min).
CELL_PSEUDO = 0.5

# The 2×2×2 outcome table flattened: cell i is (label, baseline predicted, candidate
# predicted) = (i >> 2, (i >> 1) & 1, i & 1).
_CELLS = np.arange(8)
_LABEL = _CELLS >> 2
_PRED_B = (_CELLS >> 1) & 1
_PRED_C = _CELLS & 1


@dataclass(frozen=True)
class PairedCounts:
    """One rate over a stratum's paired requests: each role's (successes, trials) and ρ."""

    xb: float
    nb: float
    xc: float
    nc: float
    rho: float


def correlated_variance(vc: float, vb: float, rho: float) -> float:
    """``v_c + v_b − 2ρ√(v_c v_b)``: the variance of a difference of correlated estimates."""
    if not (vc >= 0 and vb >= 0):
        return NAN
    return max(vc + vb - 2.0 * rho * math.sqrt(vc * vb), 0.0)


def _indicators(metric: str, label: np.ndarray, pred: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(success, unit) indicator of a confusion rate for one role, per outcome cell."""
    one = np.ones_like(label)
    units = {"recall": label, "false_negative_rate": label,
             "false_positive_rate": 1 - label, "true_negative_rate": 1 - label,
             "precision": pred, "accuracy": one, "positive_rate": one}
    hits = {"recall": pred, "false_negative_rate": 1 - pred,
            "false_positive_rate": pred, "true_negative_rate": 1 - pred,
            "precision": label, "accuracy": (pred == label).astype(label.dtype),
            "positive_rate": pred}
    if metric not in units:
        raise ValueError(f"no paired form for the rate {metric!r}")
    return hits[metric] * units[metric], units[metric]


def ratio_correlation(weight: np.ndarray, a_b: np.ndarray, d_b: np.ndarray,
                      a_c: np.ndarray, d_c: np.ndarray) -> float:
    """Delta-method correlation of Σa_b/Σd_b and Σa_c/Σd_c over weighted joint cells.

    0 (no evidence of pairing) when either ratio is undefined or has no spread.
    """
    w = weight.astype(np.float64)
    db, dc = float(w @ d_b), float(w @ d_c)
    if db <= 0 or dc <= 0:
        return 0.0
    psi_b = a_b - (float(w @ a_b) / db) * d_b
    psi_c = a_c - (float(w @ a_c) / dc) * d_c
    ss_b, ss_c = float(w @ (psi_b * psi_b)), float(w @ (psi_c * psi_c))
    if ss_b <= 0 or ss_c <= 0:
        return 0.0
    rho = float(w @ (psi_b * psi_c)) / math.sqrt(ss_b * ss_c)
    return min(max(rho, -1.0), 1.0)


def paired_counts(kpi: KpiSpec, paired: PairedAggregate) -> PairedCounts | None:
    """The KPI's rate over the paired requests, or None when it has no paired form
    (custom proportions count business values, which are not measurable in shadow)."""
    metric = kpi.metric or ""
    if metric == "error_rate":
        table = paired.errors.reshape(-1).astype(np.float64)  # (b error, c error)
        err_b = np.array([0.0, 0.0, 1.0, 1.0])
        err_c = np.array([0.0, 1.0, 0.0, 1.0])
        unit = np.ones(4)
        rho = ratio_correlation(table + CELL_PSEUDO, err_b, unit, err_c, unit)
        n = float(table.sum())
        return PairedCounts(float(table @ err_b), n, float(table @ err_c), n, rho)
    if metric == "custom" or metric == "f1":
        return None
    table = paired.outcomes.reshape(-1).astype(np.float64)
    a_b, d_b = _indicators(metric, _LABEL, _PRED_B)
    a_c, d_c = _indicators(metric, _LABEL, _PRED_C)
    rho = ratio_correlation(table + CELL_PSEUDO, a_b, d_b, a_c, d_c)
    return PairedCounts(float(table @ a_b), float(table @ d_b), float(table @ a_c),
                        float(table @ d_c), rho)


def paired_confusions(paired: PairedAggregate) -> tuple[Confusion, Confusion]:
    """Each role's confusion matrix over the paired labelled requests."""
    t = paired.outcomes
    out = []
    for axis in (2, 1):  # sum over the other role's prediction
        m = t.sum(axis=axis)  # [label, own predicted]
        out.append(Confusion(tp=int(m[1, 1]), fp=int(m[0, 1]), tn=int(m[0, 0]),
                             fn=int(m[1, 0])))
    return out[0], out[1]


def f1_correlation(paired: PairedAggregate) -> float:
    """Delta-method correlation of the two roles' F1 = 2TP/(2TP + FP + FN) on the table."""
    table = paired.outcomes.reshape(-1).astype(np.float64) + CELL_PSEUDO

    def parts(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tp = _LABEL * pred
        wrong = (pred != _LABEL).astype(np.int64)
        return 2 * tp, 2 * tp + wrong

    a_b, d_b = parts(_PRED_B)
    a_c, d_c = parts(_PRED_C)
    return ratio_correlation(table, a_b, d_b, a_c, d_c)


def paired_log_latency(paired: PairedAggregate) -> tuple[float, float, int]:
    """Mean candidate − baseline log-latency over the paired requests, its variance s²/n,
    and the number of pairs (NaN without two pairs)."""
    m = paired.log_latency
    if m.n < 2:
        return NAN, NAN, m.n
    return m.mean, m.variance() / m.n, m.n


def paired_auc(paired: PairedAggregate) -> tuple[float, float, float]:
    """AUC_c − AUC_b over the paired scored requests and its DeLong variance
    ``V_c + V_b − 2·Cov`` (NaN without two positives and two negatives), and the number
    of the scarcer class."""
    hb, hc = paired.baseline_scores, paired.candidate_scores
    scarce = min(hb.n_pos, hb.n_neg)
    vb, vc = hb.auc_variance(), hc.auc_variance()
    cov = paired.auc_covariance()
    if not all(math.isfinite(x) for x in (vb, vc, cov)):
        return NAN, NAN, scarce
    var = max(vb + vc - 2.0 * cov, 0.0)
    return hc.auc() - hb.auc(), var, scarce
