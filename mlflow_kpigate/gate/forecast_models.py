"""Per-KPI models for the time-to-decision forecast: how fast each KPI's evidence grows.

A decisive KPI's tested statistic has, at the gate's current look, a variance v; its
information is I = 1/v. The information grows with the KPI's units (labelled negatives
for a false-positive-rate index, requests for latency …) in both roles. For a difference
of two independent arms with per-unit variance σ² that is

    I = Σ_strata h(n_c, n_b) / σ²,       h(n_c, n_b) = n_c · n_b / (n_c + n_b)

(the "effective units" of a stratum: n_c(1 − s) units at candidate share s when the
baseline has the rest; n/2 in shadow, where both arms score every request). KPIs whose
estimator merges the strata before estimating (fairness) use h of the role totals. The
model takes κ = I / H from the current look (H the effective units now), so whatever the
KPI's estimator, family of tests and variance structure, the forecast information at a
later time is κ · H(later) with H from the units then (:mod:`.forecast`).

Which test: for promotion the usable promotion test with the largest variance (for an
equal candidate, whose estimates sit near 0, the widest interval clears last); for
rollback the widest rollback test, at the KPI's rollback α split over its usable tests
(Bonferroni within the family, as the gate does).

Before a KPI has a usable estimate (no labels yet, or before the rollout starts) the model
comes from the registry baseline's planning figures (:mod:`.planning`): κ = 1/σ²_unit and
the units per request the plan assumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.engine import alpha_per_weight
from mlflow_kpigate.gate.estimate_fairness import segment_rates
from mlflow_kpigate.gate.estimate_proportions import counts
from mlflow_kpigate.gate.estimators import measure
from mlflow_kpigate.gate.forecast_traffic import Traffic
from mlflow_kpigate.gate.planning import UNIT_NAMES, PlanUnit, describe, unit_for
from mlflow_kpigate.gate.strata import Strata, rollback_distance
from mlflow_kpigate.kpis import RoleAggregate
from mlflow_kpigate.policy import LATENCY, KpiKind, KpiSpec, Policy, Role


@dataclass(frozen=True)
class KpiModel:
    """How one decisive KPI's information grows with its units (module docstring)."""

    kpi: str
    unit: str  # e.g. "labelled negative"
    labelled: bool  # its units count only after the label lag
    merged: bool  # effective units from the role totals (the estimator merges strata)
    info_promote: float  # κ of the binding promotion test, per effective unit
    info_rollback: float  # κ of the binding rollback test, per effective unit
    per_request: tuple[float, float]  # (candidate, baseline) units per request, matured
    units: tuple[tuple[int, float, float], ...]  # (stage, candidate, baseline) units so far
    scale: float  # the margin on the tested scale (tunes the promotion mixture)
    alpha_promote: float
    detect_distance: float  # rollback threshold to −detect (tunes the rollback mixture)
    alpha_rollback: float  # per rollback test of the KPI's family
    source: str  # "measured" or "registry"
    # For an equal candidate the smallest of a family of estimates sits below 0: a fairness
    # index's worst segment pair is the range of the candidate's log-rates less the
    # baseline's, E ≈ d₂(S)/√2 · (sd_b − sd_c) per unit of the pair's sd (d₂ the expected
    # range of S normals). 0 for a single test.
    family_spread: float = 0.0
    # Where the candidate stands now (its real estimates, not the baseline's mirror): the
    # smallest promotion estimate and the promotion guard's estimate, and the effective
    # units they rest on. An equal candidate's later data pull them towards its expected
    # value with weight H_now / H (NaN: no estimate, forecast from the expected value).
    estimate: float = math.nan
    guard_estimate: float = math.nan
    h_now: float = 0.0
    # The margin is in the statistic (quantiles: tested against 0, an equal candidate's
    # expected estimate is the stage's scale × the margin).
    margin_in_statistic: bool = False


#: d₂(S): the expected range of S independent standard normals (control-chart constants).
_D2 = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847, 9: 2.970,
       10: 3.078}


def fairness_spread(segments: int) -> float:
    """d₂(S)/√2: the worst pair's expected shortfall per unit of a pair's sd, S segments."""
    if segments < 2:
        return 0.0
    d2 = _D2.get(segments) or math.sqrt(2 * math.log(segments)) * 1.1 + 0.3
    return d2 / math.sqrt(2.0)


def effective_units(n_c: float, n_b: float) -> float:
    """h(n_c, n_b) = n_c n_b / (n_c + n_b): a difference's information per 1/σ²."""
    return n_c * n_b / (n_c + n_b) if n_c > 0 and n_b > 0 else 0.0


def total_effective(units: Sequence[tuple[float, float]], merged: bool) -> float:
    """H over strata (or of the totals, for an estimator that merges them)."""
    if merged:
        return effective_units(sum(c for c, _ in units), sum(b for _, b in units))
    return sum(effective_units(c, b) for c, b in units)


def kpi_units(kpi: KpiSpec, agg: RoleAggregate) -> float:
    """The KPI's units in one role's aggregate (what "samples" counts in the evidence)."""
    if kpi.kind is KpiKind.PROPORTION:
        if kpi.metric == "f1":
            c = agg.confusion
            return float(c.tp + c.fp + c.fn)
        return counts(kpi, agg)[1]
    if kpi.kind is KpiKind.QUANTILE or (kpi.kind is KpiKind.MEAN and kpi.source == LATENCY):
        return float(agg.latency.n)
    if kpi.kind is KpiKind.FAIRNESS:
        return sum(n for _, n in segment_rates(kpi, agg).values())
    if kpi.kind in (KpiKind.MEAN, KpiKind.BUSINESS):
        return float(agg.values.n) if agg.values is not None else 0.0
    return float(agg.labelled)  # AUC


def unit_name(kpi: KpiSpec) -> str:
    """What one unit of ``kpi`` is, for people (``labelled negative``)."""
    if kpi.kind is KpiKind.PROPORTION:
        return UNIT_NAMES.get(kpi.metric or "", "unit")
    if kpi.kind is KpiKind.FAIRNESS:
        return UNIT_NAMES.get(kpi.metric or "", "labelled prediction")
    if not kpi.needs_labels:
        return "request"
    return "labelled prediction"


def _alphas(policy: Policy, registry: RegistryBaseline | None) -> float:
    """The rollback α per unit of ``alpha_weight`` for the pooled checks (as the gate)."""
    return alpha_per_weight(policy, registry) * (1.0 - policy.evaluation.window_share)


def kpi_models(policy: Policy, stage_index: int, samples: Sequence[StageSample],
               registry: RegistryBaseline | None, traffic: Traffic
               ) -> tuple[list[KpiModel], list[str]]:
    """A model per decisive KPI, and a note for each KPI that has none (and why)."""
    strata = Strata([s for s in samples if s.stage_index <= stage_index])
    stage = policy.stages[stage_index]
    unit_alpha = _alphas(policy, registry)
    models: list[KpiModel] = []
    notes: list[str] = []
    for kpi in (k for k in policy.kpis if k.decides):
        alpha_r = unit_alpha * kpi.alpha_weight
        model = _measured(policy, kpi, strata, stage.promote_margin_scale, alpha_r, traffic)
        if model is None:
            planned = _planned(policy, kpi, registry, alpha_r, traffic)
            if isinstance(planned, str):
                notes.append(f"{kpi.name}: no estimate yet and {planned}")
                continue
            model = planned
        models.append(model)
    return models, notes


def _variances(kpi: KpiSpec, strata: Strata, m_r: float, m_promote: float
               ) -> tuple[list[float], list[float], int] | None:
    """(promotion variances, rollback variances, promotion tests) of a usable estimate."""
    meas = measure(kpi, strata, m_r, m_promote)
    prom = [t.variance for t in meas.promote_tests if t.usable]
    roll = [t.variance for t in meas.rollback_tests if t.usable]
    if meas.missing is not None or not prom or not roll:
        return None
    return prom, roll, len(meas.promote_tests)


def _measured(policy: Policy, kpi: KpiSpec, strata: Strata, m_promote: float, alpha_r: float,
              traffic: Traffic) -> KpiModel | None:
    """The model from the current look's data (None when there is no estimate yet).

    The forecast is for a candidate *equal to the baseline*, so its variance per unit is
    the baseline's: κ comes from the gate's estimator applied to the baseline against
    itself in every stratum (at 5% the baseline has 19 times the candidate's units, and a
    rare event's plug-in variance from a few candidate events would swing the forecast by
    days). If that gives no usable variance (a paired statistic of identical arms is 0),
    the candidate's own estimate stands in.
    """
    if not len(strata):
        return None
    m_r = 0.0 if kpi.role is Role.CRITICAL else 1.0
    real = measure(kpi, strata, m_r, m_promote)
    if real.missing is not None:
        return None
    merged = kpi.kind is KpiKind.FAIRNESS
    units = tuple((s.stage_index, kpi_units(kpi, s.candidate), kpi_units(kpi, s.baseline))
                  for s in strata)
    mirror = Strata([StageSample(s.stage_index, s.baseline, s.baseline) for s in strata])
    found = _variances(kpi, mirror, m_r, m_promote)
    h = total_effective([(b, b) for _, _, b in units], merged)
    if found is None or h <= 0:
        found = _variances(kpi, strata, m_r, m_promote)
        h = total_effective([(c, b) for _, c, b in units], merged)
    if found is None or h <= 0:
        return None
    prom, roll, n_tests = found
    agg = strata.merged("baseline")
    base = agg.labelled if kpi.needs_labels else agg.requests
    if base <= 0:
        return None
    # Units per request of an equal candidate: the baseline's.
    per = sum(b for _, _, b in units) / base * (
        traffic.labels_per_request if kpi.needs_labels else 1.0)
    # Ordered pairs of S segments: S(S − 1) tests.
    segments = round((1 + math.sqrt(1 + 4 * n_tests)) / 2) if merged else 0
    # A quantile's statistic moves with the stage's scale (the threshold t(1 + s·m)), so
    # its estimate now says nothing about a later stage's: forecast it unconditionally.
    quantile = kpi.kind is KpiKind.QUANTILE
    usable = [t.delta for t in real.promote_tests if t.usable]
    return KpiModel(kpi.name, unit_name(kpi), kpi.needs_labels, merged,
                    1.0 / max(prom) / h, 1.0 / max(roll) / h, (per, per), units,
                    real.scale, policy.evaluation.alpha_promote, real.rollback_tau_scale,
                    alpha_r / len(roll), "measured", fairness_spread(segments),
                    math.nan if quantile or not usable else min(usable),
                    math.nan if quantile else real.guard_estimate,
                    total_effective([(c, b) for _, c, b in units], merged), quantile)


def _planned(policy: Policy, kpi: KpiSpec, registry: RegistryBaseline | None,
             alpha_r: float, traffic: Traffic) -> KpiModel | str:
    """The model from the registry baseline's planning figures, or why there is none."""
    if registry is None:
        return "no registry baseline figures"
    unit = unit_for(kpi, registry)
    if not isinstance(unit, PlanUnit):
        return describe(unit)
    per = unit.per_request
    if kpi.needs_labels:
        # The plan counts the registry's label coverage; measured traffic knows better.
        per = per / registry.label_coverage * traffic.labels_per_request
    m_r = 0.0 if kpi.role is Role.CRITICAL else 1.0
    tests, segments = 1, 0
    if kpi.kind is KpiKind.FAIRNESS:
        base = registry.get(kpi.registry_metric or kpi.name) or registry.get(kpi.name)
        segments = base.segments if base is not None and base.segments else 2
        tests = segments * (segments - 1)  # every ordered pair of segments
    variance = unit.variance
    if unit.zero_rate:
        # A baseline rate of 0: the gate's Agresti–Caffo variance at the units the first
        # gated stage would have after its min dwell at this traffic (≥ its min samples).
        first = policy.gated_stages[0]
        share = 1.0 if first.shadow else first.traffic / 100.0
        n = max(first.min_samples.requests, traffic.request_rate * first.min_dwell) * share
        variance = unit.variance_at(n * per)
    info = 1.0 / variance if variance > 0 else math.inf
    fair = kpi.kind is KpiKind.FAIRNESS
    return KpiModel(kpi.name, unit_name(kpi), kpi.needs_labels, fair,
                    info, info, (per, per), (), unit.margin, policy.evaluation.alpha_promote,
                    rollback_distance(unit.margin, unit.detect, m_r), alpha_r / tests,
                    "registry", fairness_spread(segments) if fair else 0.0,
                    margin_in_statistic=kpi.kind is KpiKind.QUANTILE)
