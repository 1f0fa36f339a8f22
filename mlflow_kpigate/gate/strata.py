"""Strata, tested statistics and measurements: the shapes every KPI kind's estimator shares.

Each KPI kind yields a :class:`Measurement`: human-facing values for both roles, and one
or more tested statistics (:class:`Test`), each an estimate with its variance, oriented so
that **positive means the candidate is better**. Comparisons are made within each stage
(stratum, :class:`Strata`), where baseline and candidate are served concurrently, and
pooled across stages with inverse-variance weights (:func:`pool`), so that a change of
traffic share or time of day between stages cannot masquerade as a KPI difference, and the
pooled score keeps independent increments (the condition under which the confidence
sequences are valid).

Also here: the helpers several kinds share (orientation, margins in KPI units, turning one
pooled test into a measurement).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import RoleAggregate
from mlflow_kpigate.policy import Direction, KpiSpec, Margin

NAN = math.nan

#: Fewest units per role in a stage before a mean-type or AUC comparison uses that stage:
#: with a handful of values the plug-in variance is too unstable for the asymptotic
#: confidence sequence (a Gaussian simulation crossed 15% of the time with 2 values in the
#: first look, under 4% with 10 or more). Proportions use Agresti–Caffo instead.
MIN_UNITS = 30


@dataclass(frozen=True)
class Test:
    """One tested statistic, pooled over strata: estimate and variance (better-positive)."""

    label: str
    delta: float
    variance: float

    @property
    def usable(self) -> bool:
        """Finite estimate with a finite positive variance."""
        return math.isfinite(self.delta) and math.isfinite(self.variance) and self.variance > 0


@dataclass(frozen=True)
class Measurement:
    """What one KPI's data say, ready for the confidence sequences."""

    statistic: str
    baseline_value: float
    candidate_value: float
    samples: int
    rollback_tests: tuple[Test, ...]
    promote_tests: tuple[Test, ...]
    rollback_threshold: float
    promote_threshold: float
    scale: float  # the margin on the tested scale: sets the mixture's τ
    missing: str | None = None  # why there is no usable estimate yet
    # False when the margin is built into the tested statistic (quantiles), so that a
    # positive bound shows non-inferiority rather than superiority.
    better_means_superior: bool = True


class Strata:
    """The strata of one evaluation, with each role's data merged across them (cached)."""

    def __init__(self, samples: Sequence[StageSample]) -> None:
        self.samples = tuple(samples)
        self._merged: dict[str, RoleAggregate] = {}

    def __iter__(self) -> Iterator[StageSample]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def merged(self, role: str) -> RoleAggregate:
        """All of ``role``'s data (``baseline`` or ``candidate``) across strata."""
        if role not in self._merged:
            agg: RoleAggregate | None = None
            for sample in self.samples:
                part = getattr(sample, role)
                if agg is None:
                    agg = part.copy()
                else:
                    agg.merge(part)
            if agg is None:
                raise ValueError("no samples")
            self._merged[role] = agg
        return self._merged[role]


def pool(parts: Sequence[tuple[float, float]], label: str = "") -> Test:
    """Inverse-variance pooling of per-stratum (estimate, variance) pairs."""
    num = 0.0
    info = 0.0
    for delta, var in parts:
        if math.isfinite(delta) and math.isfinite(var) and var > 0:
            num += delta / var
            info += 1.0 / var
    if info == 0:
        return Test(label, NAN, NAN)
    return Test(label, num / info, 1.0 / info)


def orientation(kpi: KpiSpec) -> float:
    """+1 for a higher-is-better KPI, −1 otherwise: multiplies differences to better-positive."""
    return 1.0 if kpi.direction is Direction.HIGHER else -1.0


def resolve_margin(margin: Margin | None, reference: float) -> float:
    """A margin in KPI units (relative margins scale the baseline's value)."""
    if margin is None:
        return NAN
    if margin.relative:
        return margin.value * abs(reference) if math.isfinite(reference) else NAN
    return margin.value


def no_measurement(kpi: KpiSpec, why: str) -> Measurement:
    """A measurement without a usable estimate, saying ``why``."""
    return Measurement("", NAN, NAN, 0, (), (), NAN, NAN, NAN, why)


def pooled_measurement(kpi: KpiSpec, statistic: str, bv: float, cv: float, samples: int,
                       test: Test, margin: float, m_rollback: float,
                       m_promote: float) -> Measurement:
    """The measurement of one pooled ``test`` against ``margin`` scaled for both thresholds."""
    missing = None if test.usable else "not enough samples in both roles yet"
    if math.isfinite(margin) and margin > 0:
        scale = margin
        roll_thr, prom_thr = -m_rollback * margin, -m_promote * margin
    else:
        # No margin (success/info KPIs, or relative margin without a baseline estimate):
        # test against zero, with the mixture scaled to a tenth of the value.
        scale = 0.1 * abs(bv) if math.isfinite(bv) and bv != 0 else 0.01
        roll_thr, prom_thr = 0.0, 0.0
    return Measurement(statistic, bv, cv, samples, (test,), (test,), roll_thr, prom_thr,
                       scale, missing)
