"""Strata, tested statistics and measurements: the shapes every KPI kind's estimator shares.

Each KPI kind yields a :class:`Measurement`: human-facing values for both roles, and one
or more tested statistics (:class:`Test`), each an estimate with its variance, oriented so
that **positive means the candidate is better**. Comparisons are made within each stage
(stratum, :class:`Strata`), where baseline and candidate are served concurrently, and
pooled across stages with inverse-variance weights (:func:`pool`), so that a change of
traffic share or time of day between stages cannot masquerade as a KPI difference, and the
pooled score keeps independent increments (the condition under which the confidence
sequences are valid).

**Shadow strata.** In a shadow stage (and in the bake, the final stage) both roles answer
the same requests. Where the sample carries their joint outcomes (``StageSample.paired``)
the estimators use paired variances (:mod:`.paired`); without it (a source that cannot
pair) the two roles are compared as independent samples, which over-states the variance of
positively correlated outcomes. KPIs computed from values that describe the outcome of the
*served* answer (business values posted with labels, custom proportions of them, means of
logged values: :attr:`~mlflow_kpigate.policy.KpiSpec.depends_on_served_answer`) cannot
compare the roles there, since the shadow role's rows carry the served role's values:
:meth:`Strata.for_kpi` leaves shadow strata out for them, in every stage.

Also here: the helpers several kinds share (orientation, margins in KPI units, where the
rollback boundary is tuned, turning pooled tests into a measurement).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import PairedAggregate, RoleAggregate
from mlflow_kpigate.policy import Direction, KpiSpec, Margin, Policy

NAN = math.nan

#: Fewest units per role in a stage before a mean-type or AUC comparison uses that stage:
#: with a handful of values the plug-in variance is too unstable for the asymptotic
#: confidence sequence (a Gaussian simulation crossed 15% of the time with 2 values in the
#: first look, under 4% with 10 or more). Proportions use Agresti–Caffo instead.
MIN_UNITS = 30

#: Default ``detect`` (the harmful effect the rollback check is tuned to find), as a
#: multiple of the margin on the tested scale. Tuning the rollback mixture at 1.75× the
#: margin cut the recall −5 exposure by 12% against tuning it at the margin (measured on
#: the benchmark stream; docs/statistics.md).
DETECT_FACTOR = 1.75
#: The rollback mixture is tuned at the distance between the rollback threshold and
#: −detect, but never below this fraction of the margin: a guardrail whose detect is
#: barely past its margin would otherwise tune the boundary for samples no stage reaches.
DETECT_FLOOR = 0.25


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
    scale: float  # the margin on the tested scale: sets the promotion mixture's τ
    missing: str | None = None  # why there is no usable estimate yet
    # False when the margin is built into the tested statistic (quantiles), so that a
    # positive bound shows non-inferiority rather than superiority.
    better_means_superior: bool = True
    # Distance between the rollback threshold and −detect on the tested scale: sets the
    # rollback mixture's τ. NaN: the same as ``scale``.
    rollback_scale: float = NAN
    # The promotion guard: a KPI may promote only if the point estimate of these tests
    # (the promotion tests when empty) exceeds ``guard_threshold`` (−margin, unscaled).
    # NaN: no guard (no margin).
    guard_threshold: float = NAN
    guard_tests: tuple[Test, ...] = ()

    @property
    def rollback_tau_scale(self) -> float:
        """Where the rollback boundary is tuned (``rollback_scale``, else ``scale``)."""
        ok = math.isfinite(self.rollback_scale) and self.rollback_scale > 0
        return self.rollback_scale if ok else self.scale

    @property
    def guard_estimate(self) -> float:
        """The smallest point estimate the promotion guard looks at (NaN if none usable)."""
        tests = [t for t in (self.guard_tests or self.promote_tests) if t.usable]
        return min((t.delta for t in tests), default=NAN)


def shadow_stages(policy: Policy) -> frozenset[int]:
    """Stage indexes whose strata have both roles answer every request: shadow stages and
    the final stage (sampled only while baking, when the previous version scores a copy)."""
    return frozenset(i for i, st in enumerate(policy.stages) if st.shadow or st.is_final)


class Strata:
    """The strata of one evaluation, with each role's data merged across them (cached).

    ``shadow`` names the stage indexes in which both roles answered the same requests
    (:func:`shadow_stages`); strata that carry a paired part count as shadow strata too.
    """

    def __init__(self, samples: Sequence[StageSample],
                 shadow: frozenset[int] = frozenset()) -> None:
        self.samples = tuple(samples)
        self.shadow = frozenset(shadow) | {s.stage_index for s in self.samples
                                           if s.paired is not None}
        self._merged: dict[str, RoleAggregate] = {}

    def paired(self, sample: StageSample) -> PairedAggregate | None:
        """The stratum's joint outcomes, when it has them (shadow strata of a pairing
        source); None means: compare the roles as independent samples."""
        return sample.paired

    def for_kpi(self, kpi: KpiSpec) -> Strata:
        """The strata that can measure ``kpi``: without the shadow strata for a KPI whose
        values depend on the served answer (see the module docstring), else these."""
        if not kpi.depends_on_served_answer or not any(
                s.stage_index in self.shadow for s in self.samples):
            return self
        return Strata([s for s in self.samples if s.stage_index not in self.shadow],
                      self.shadow)

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


def rollback_distance(margin: float, detect: float, m_rollback: float) -> float:
    """Distance between the rollback threshold (−m_rollback·margin) and −detect, floored.

    Both on the tested scale; ``detect`` NaN means the default :data:`DETECT_FACTOR` ×
    margin. Critical KPIs (m_rollback = 0) get ``detect`` itself, guardrails
    ``detect − margin``; never less than :data:`DETECT_FLOOR` × margin. NaN without a
    margin.
    """
    if not (math.isfinite(margin) and margin > 0):
        return NAN
    if not (math.isfinite(detect) and detect > 0):
        detect = DETECT_FACTOR * margin
    return max(detect - m_rollback * margin, DETECT_FLOOR * margin)


def not_measurable_reason(kpi: KpiSpec, *, bake: bool) -> str:
    """Why a KPI of served-answer values is left out of a shadow stage's (or the bake's)
    decision."""
    later = ("the bake neither watches nor waits for it" if bake else
             "excluded from this stage's decision; the split stages measure it")
    return (f"{kpi.name}: not measurable in shadow (its values describe the outcome of the "
            f"served answer, and both roles' rows carry the served one's); {later}")


def no_measurement(kpi: KpiSpec, why: str) -> Measurement:
    """A measurement without a usable estimate, saying ``why``."""
    return Measurement("", NAN, NAN, 0, (), (), NAN, NAN, NAN, why)


def pooled_measurement(kpi: KpiSpec, statistic: str, bv: float, cv: float, samples: int,
                       test: Test, margin: float, m_rollback: float,
                       m_promote: float, *, rollback_test: Test | None = None,
                       detect: float = NAN) -> Measurement:
    """The measurement of pooled tests against ``margin`` scaled for both thresholds.

    ``test`` is the promotion test (unrestricted variance); ``rollback_test`` the rollback
    test when its variance is computed under the null (default: ``test``). ``margin`` and
    ``detect`` are on the tested scale.
    """
    roll = rollback_test if rollback_test is not None else test
    missing = None if test.usable and roll.usable else "not enough samples in both roles yet"
    if math.isfinite(margin) and margin > 0:
        scale = margin
        roll_thr, prom_thr = -m_rollback * margin, -m_promote * margin
        guard = -margin
    else:
        # No margin (success/info KPIs, or relative margin without a baseline estimate):
        # test against zero, with the mixture scaled to a tenth of the value.
        scale = 0.1 * abs(bv) if math.isfinite(bv) and bv != 0 else 0.01
        roll_thr, prom_thr = 0.0, 0.0
        guard = NAN
    return Measurement(statistic, bv, cv, samples, (roll,), (test,), roll_thr, prom_thr,
                       scale, missing, rollback_scale=rollback_distance(margin, detect,
                                                                        m_rollback),
                       guard_threshold=guard)
