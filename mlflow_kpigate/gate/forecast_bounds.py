"""When a KPI's anytime-valid bound would cross, for the time-to-decision forecast.

* :func:`info_to_detect`: the information I*_r = 1/v* at which a candidate at −detect is
  rolled back: the rollback radius r(v*) equals the distance d from the threshold to
  −detect (τ² tuned to d, the KPI's α_rollback share split over its tests: as the gate);
* :func:`equal_clears`: whether an equal candidate's promotion bound clears the stage's
  threshold −s·m (and its estimate the promotion guard's −m) with the information that
  effective units H give. The expected estimate then is

      E[δ̂] = w · δ̂_now + (1 − w) · μ,     w = H_now / H

  the candidate's current estimate carried along with the weight of the evidence it rests
  on, the later evidence at an equal candidate's expected value μ (0; for a quantile KPI
  the stage's scale × the margin, which its statistic contains). For a fairness index
  the smallest of the pair estimates also sits below 0 by the expected range of the new
  evidence's noise (``KpiModel.family_spread``). With no estimate yet (w = 0, one test)
  this is r(v) ≤ s·m, the gate's own ``samples_needed`` condition.

Radii come from the gate's one-sided boundary (:mod:`.boundaries`) through a table per α
(:func:`_unit_radius`), since the forecast asks for thousands of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius, variance_for_radius
from mlflow_kpigate.gate.forecast_models import KpiModel, total_effective
from mlflow_kpigate.policy import Stage

INF = math.inf
#: ln(v / m²) over which the radius table is kept (outside it the boundary is solved).
_LOG_V = np.linspace(-30.0, 8.0, 1521)


@lru_cache(maxsize=64)
def _table(alpha: float) -> np.ndarray:
    """r(v) with τ² tuned to radius 1, on the grid ``_LOG_V`` (scale 1)."""
    tau2 = tau2_for_radius(1.0, alpha)
    return np.array([one_sided_radius(math.exp(x), tau2, alpha) for x in _LOG_V])


def _unit_radius(v: float, alpha: float) -> float:
    """The one-sided radius at variance ``v`` with τ² tuned to radius 1 (interpolated in
    ln v; exact outside the table)."""
    x = math.log(v)
    if not _LOG_V[0] < x < _LOG_V[-1]:
        return one_sided_radius(v, tau2_for_radius(1.0, alpha), alpha)
    return float(np.interp(x, _LOG_V, _table(round(alpha, 12))))


def radius(v: float, scale: float, alpha: float) -> float:
    """The gate's one-sided radius at variance ``v`` with τ² tuned to ``scale``.

    Scaling v and τ² together scales the radius by the same square root.
    """
    if not (v > 0 and math.isfinite(v)):
        return INF
    return scale * _unit_radius(v / (scale * scale), alpha)


@lru_cache(maxsize=1024)
def _vstar(multiple: float, alpha: float) -> float:
    """Variance at which the one-sided radius is ``multiple`` with τ² tuned to radius 1."""
    return variance_for_radius(multiple, tau2_for_radius(1.0, alpha), alpha)


def info_to_promote(model: KpiModel, stage: Stage) -> float:
    """I*: the information at which an equal candidate's bound clears −(s · m) (from 0)."""
    v = model.scale ** 2 * _vstar(round(stage.promote_margin_scale, 9),
                                  round(model.alpha_promote, 12))
    return 1.0 / v if v > 0 else INF


def info_to_detect(model: KpiModel) -> float:
    """I*_r: the information at which a candidate at −detect is rolled back."""
    d = model.detect_distance
    if not (math.isfinite(d) and d > 0):
        return INF
    v = d * d * _vstar(1.0, round(model.alpha_rollback, 12))
    return 1.0 / v if v > 0 else INF


def equal_clears(model: KpiModel, stage: Stage, units: Sequence[tuple[float, float]],
                 need: float) -> bool:
    """Whether an equal candidate's promotion bound and guard would clear with ``units``
    ((candidate, baseline) per stratum; ``need`` is :func:`info_to_promote`)."""
    h = total_effective(units, model.merged)
    info = model.info_promote * h
    conditional = math.isfinite(model.estimate) and model.h_now > 0
    if not conditional and model.family_spread <= 0:
        return info >= need  # the closed form: r(v) ≤ s·m
    if not (info > 0 and h > 0):
        return False
    v = 1.0 / info
    m = model.scale
    s = stage.promote_margin_scale
    threshold, guard, mu, mu_guard = (0.0, 0.0, s * m, m) if model.margin_in_statistic \
        else (-s * m, -m, 0.0, 0.0)
    w = min(model.h_now / h, 1.0) if conditional else 0.0
    shortfall = 0.0
    if model.family_spread > 0:
        nc, nb = sum(c for c, _ in units), sum(b for _, b in units)
        if nc > 0 and nb > 0:
            # The worst pair's expected estimate from the new evidence (module docstring):
            # below 0 by the spread times the candidate's excess sd over the baseline's.
            excess = (nc ** -0.5 - nb ** -0.5) / math.sqrt(1.0 / nc + 1.0 / nb)
            shortfall = model.family_spread * excess * math.sqrt((1.0 - w) * v)
    est = w * model.estimate + (1.0 - w) * mu - shortfall if conditional \
        else mu - shortfall
    est_guard = w * model.guard_estimate + (1.0 - w) * mu_guard - shortfall \
        if conditional and math.isfinite(model.guard_estimate) else mu_guard - shortfall
    return (est - radius(v, m, model.alpha_promote) >= threshold
            and est_guard > guard)
