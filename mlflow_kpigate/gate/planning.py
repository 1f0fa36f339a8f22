"""Sample-size planning for ``kpigate plan``: how many requests each stage needs.

For each evaluated stage and each KPI the plan gives, from the registry baseline's figures:

* **to promote**: requests through the router in that stage (alone, without evidence pooled
  from earlier stages) after which an *equal* candidate's promotion bound clears
  −(stage scale × margin) with the policy's power;
* **to detect**: requests after which a candidate at −detect (the KPI's ``detect``, by
  default 1.75 × margin) is rolled back with that power, at the KPI's weighted share of
  ``alpha_rollback`` and with the rollback mixture tuned as the gate tunes it.

Both use the same anytime-valid boundaries as the gate, evaluated as if at a single look
(``radius(v) + z_power · sqrt(v) ≤ distance``), so they are planning figures: looking more
often can only make the decision arrive earlier. For proportions the plan also prints
Wald's SPRT expected sample number for the same detection with a *known* baseline, the
theoretical lower bound no two-sample sequential test can beat.

A baseline proportion of exactly 0 or 1 (an error rate no window ever saw) is planned as
the gate estimates it: with Agresti–Caffo's (x + 1)/(n + 2) in each arm at the stage's own
n, solved together with n (Wald's bound is left out: one event would prove a difference).

A figure a KPI needs and the baseline lacks is a :class:`MissingFigure`, named as it is
written in a baseline file (``prevalence``, ``kpis.latency_p95.unit_sd``);
:func:`missing_figures` lists each once, for the KPIs the policy decides on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scipy.optimize import brentq
from scipy.stats import norm

from mlflow_kpigate.core.baseline import BaselineKpi, RegistryBaseline
from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius
from mlflow_kpigate.gate.engine import alpha_per_weight
from mlflow_kpigate.gate.strata import DETECT_FACTOR, rollback_distance
from mlflow_kpigate.policy import KpiKind, KpiSpec, Margin, Policy, Role, Stage


@dataclass(frozen=True)
class PlanRow:
    """Planning figures for one (stage, KPI)."""

    stage: str
    kpi: str
    unit: str
    promote_requests: int | None
    detect_requests: int | None
    wald_requests: int | None
    note: str = ""


@dataclass(frozen=True)
class PlanUnit:
    """Variance of one unit on the tested scale, units per request, and the margin there."""

    variance: float
    per_request: float
    margin: float
    name: str
    p0: float | None = None  # for Wald's SPRT on proportions
    detect: float = math.nan  # ``detect`` on the tested scale (NaN: DETECT_FACTOR × margin)
    # A proportion of exactly 0 or 1: the variance is Agresti–Caffo's at the arm's units.
    zero_rate: bool = False

    def variance_at(self, units: float) -> float:
        """The per-unit variance with ``units`` in an arm (constant unless ``zero_rate``)."""
        if not self.zero_rate:
            return self.variance
        p = 1.0 / (max(units, 0.0) + 2.0)
        return p * (1.0 - p)


@dataclass(frozen=True)
class MissingFigure:
    """A baseline figure a KPI needs for planning: as written in a baseline file."""

    figure: str  # ``prevalence``, ``kpis.latency_p95.unit_sd`` …
    what: str  # what it describes, for people
    kpi: str  # the KPI that needs it

    def __str__(self) -> str:
        return f"needs '{self.figure}' ({self.what})"


Missing = tuple[MissingFigure, ...]


UNIT_NAMES = {
    "recall": "labelled positive",
    "false_negative_rate": "labelled positive",
    "f1": "labelled positive",
    "false_positive_rate": "labelled negative",
    "true_negative_rate": "labelled negative",
    "precision": "predicted positive",
    "accuracy": "labelled request",
    "error_rate": "request",
}


def wald_asn(p0: float, p1: float, alpha: float, beta: float) -> float:
    """Wald's SPRT expected sample number under H1 for Bernoulli p0 vs p1 (known p0).

    E₁[N] = [(1−β) ln((1−β)/α) + β ln(β/(1−α))] / KL(p1 ‖ p0).
    """
    kl = p1 * math.log(p1 / p0) + (1 - p1) * math.log((1 - p1) / (1 - p0))
    num = (1 - beta) * math.log((1 - beta) / alpha) + beta * math.log(beta / (1 - alpha))
    return num / kl


def _unit(kpi: KpiSpec, base: BaselineKpi | None, registry: RegistryBaseline
          ) -> PlanUnit | Missing | str:
    """The unit for ``kpi`` with its ``detect``, the figures missing for it, or why it
    cannot be planned."""
    unit = _unit_of(kpi, kpi.margin, base, registry)
    if not isinstance(unit, PlanUnit) or kpi.detect is None:
        return unit
    # ``detect`` converts to the tested scale exactly as the margin does.
    converted = _unit_of(kpi, kpi.detect, base, registry)
    if not isinstance(converted, PlanUnit):
        return unit
    return replace(unit, detect=converted.margin)


def unit_for(kpi: KpiSpec, registry: RegistryBaseline) -> PlanUnit | Missing | str:
    """The planning unit of ``kpi`` from ``registry``'s figures (or what is missing)."""
    return _unit(kpi, registry.get(kpi.registry_metric or kpi.name) or registry.get(kpi.name),
                 registry)


def describe(problem: Missing | str) -> str:
    """A plan row's note for a unit that could not be built."""
    if isinstance(problem, str):
        return problem
    return "; ".join(str(m) for m in problem)


def missing_figures(policy: Policy, registry: RegistryBaseline) -> list[MissingFigure]:
    """Every figure the policy's decisive KPIs need and ``registry`` lacks, each once."""
    seen: dict[str, MissingFigure] = {}
    for kpi in (k for k in policy.kpis if k.decides):
        unit = unit_for(kpi, registry)
        if isinstance(unit, tuple):
            for m in unit:
                seen.setdefault(m.figure, m)
    return list(seen.values())


def _need(kpi: KpiSpec, field: str, what: str) -> MissingFigure:
    return MissingFigure(f"kpis.{kpi.name}.{field}", what, kpi.name)


def _prevalence(kpi: KpiSpec) -> Missing:
    return (MissingFigure("prevalence", "the share of labelled positives among requests",
                          kpi.name),)


def _unit_of(kpi: KpiSpec, margin_spec: Margin | None, base: BaselineKpi | None,
             registry: RegistryBaseline) -> PlanUnit | Missing | str:
    """The unit for ``kpi`` with ``margin_spec`` on the tested scale as its margin."""
    if base is None:
        # Every figure the KPI lacks, not only its mean: the other checks run on a stand-in.
        rest = _unit_of(kpi, margin_spec, BaselineKpi(mean=0.5), registry)
        return (_need(kpi, "mean", f"the baseline's value of {kpi.name}"),
                *(rest if isinstance(rest, tuple) else ()))
    prev = registry.prevalence
    cov = registry.label_coverage
    margin = margin_spec.value if margin_spec else None
    relative = margin_spec is not None and margin_spec.relative
    if kpi.kind is KpiKind.PROPORTION:
        p = base.mean
        if not 0 <= p <= 1:
            return f"{kpi.name}: baseline mean must be a fraction in [0, 1]"
        metric = kpi.metric
        per: float | None
        if metric == "error_rate":
            per = 1.0
        elif metric == "accuracy":
            per = cov
        elif prev is None:
            return _prevalence(kpi)
        elif metric in ("recall", "false_negative_rate", "f1"):
            per = prev * cov
        elif metric in ("false_positive_rate", "true_negative_rate"):
            per = (1 - prev) * cov
        elif metric == "precision":
            rec = registry.get("recall")
            if rec is None:
                return (MissingFigure("kpis.recall.mean", "the baseline's recall, for the "
                                      "rate of predicted positives", kpi.name),)
            per = prev * cov * rec.mean / p if p > 0 else 0.0
        else:
            return f"{kpi.name}: custom proportions need their own traffic figures; use simulate"
        m = (margin * p if margin is not None and relative else margin) or 0.1 * p
        if not m > 0:
            return (f"{kpi.name}: a relative margin of a baseline rate of {p:g} is 0; give an "
                    "absolute margin")
        edge = p in (0.0, 1.0)
        return PlanUnit(p * (1 - p), per, m, UNIT_NAMES.get(metric or "", "unit"),
                        None if edge else p, zero_rate=edge)
    if kpi.kind is KpiKind.MEAN:
        if base.unit_sd is None:
            return (_need(kpi, "unit_sd", "the σ of one request's value on the tested scale"),)
        m = math.log1p(margin) if kpi.log and margin else (
            (margin * abs(base.mean) if margin is not None and relative else margin)
            or 0.1 * abs(base.mean))
        return PlanUnit(base.unit_sd ** 2, 1.0, m, "request")
    if kpi.kind is KpiKind.QUANTILE:
        if base.unit_sd is None:
            return (_need(kpi, "unit_sd", "the σ of log-latency, to turn the margin into "
                                          "exceedance points"),)
        q = kpi.q or 0.95
        e = 1 - q
        if margin_spec is None:
            shift = math.log(1.1)
        elif margin_spec.relative:
            shift = math.log1p(margin_spec.value)
        else:
            shift = math.log1p(margin_spec.value / base.mean)
        # Lognormal latency: moving the threshold by the margin lowers the exceedance to
        # 1 − Φ(z_q + shift/σ).
        m = e - float(norm.sf(norm.ppf(q) + shift / base.unit_sd))
        return PlanUnit(e * (1 - e), 1.0, m, "request")
    if kpi.kind is KpiKind.AUC:
        if prev is None:
            return _prevalence(kpi)
        a = base.mean
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        # Hanley–McNeil: n·Var ≈ [ (Q1−A²)/prev + (Q2−A²)/(1−prev) ] per labelled request.
        var = (q1 - a * a) / prev + (q2 - a * a) / (1 - prev)
        m = (margin * a if margin is not None and relative else margin) or 0.01
        return PlanUnit(var, cov, m, "labelled request")
    if kpi.kind is KpiKind.FAIRNESS:
        lacking = tuple(_need(kpi, f, what) for f, what, have in (
            ("rate", f"the baseline's {kpi.metric} in a typical segment", base.rate),
            ("segments", f"how many '{kpi.segment_by}' segments there are", base.segments))
            if have is None)
        if prev is None and kpi.metric in ("false_positive_rate", "true_negative_rate",
                                           "recall", "false_negative_rate"):
            lacking += _prevalence(kpi)
        if lacking or base.rate is None or base.segments is None:
            return lacking
        r, s = base.rate, base.segments
        prev = prev or 0.0
        per_unit = {"false_positive_rate": 1 - prev, "true_negative_rate": 1 - prev,
                    "recall": prev, "false_negative_rate": prev}.get(kpi.metric or "", 1.0)
        # A pair of segments: two log-rates, each ≈ (1−r)/(n_seg·r) with n_seg = units/s.
        var = 2 * s * (1 - r) / r
        m = -math.log1p(-margin) if margin else math.log(1.25)  # FI_c ≥ (1 − m)·FI_b
        return PlanUnit(var, per_unit * cov, m,
                        UNIT_NAMES.get(kpi.metric or "", "labelled prediction"))
    if kpi.kind is KpiKind.BUSINESS:
        if base.unit_sd is None:
            return (_need(kpi, "unit_sd", "the σ of one labelled prediction's value"),)
        m = (margin * abs(base.mean) if margin is not None and relative else margin) \
            or 0.1 * abs(base.mean)
        return PlanUnit(base.unit_sd ** 2, cov, m, "labelled request")
    return f"{kpi.name}: kind {kpi.kind.value} cannot be planned"


def _requests(unit: PlanUnit, share: float, distance: float, alpha: float, power: float,
              tau_scale: float, shadow: bool) -> int | None:
    """Requests in a stage for ``radius(v) + z·sqrt(v) ≤ distance``."""
    if not distance > 0:
        return None
    z = float(norm.ppf(power))
    tau2 = tau2_for_radius(tau_scale, alpha)
    # v(N): both arms see N·share and N·(1−share) units (shadow: both see all N).
    factor = 2.0 if shadow else 1.0 / share + 1.0 / (1.0 - share)
    per = unit.variance * factor / unit.per_request
    arms = (1.0, 1.0) if shadow else (share, 1.0 - share)

    def variance(n: float) -> float:
        if not unit.zero_rate:
            return per / n
        # Agresti–Caffo in each arm at its own units: p̃ = 1/(units + 2).
        return sum(unit.variance_at(n * a * unit.per_request)
                   / (n * a * unit.per_request + 2.0) for a in arms)

    def gap(log_n: float) -> float:
        v = variance(math.exp(log_n))
        return one_sided_radius(v, tau2, alpha) + z * math.sqrt(v) - distance

    if gap(math.log(1e12)) > 0:
        return None
    lo = math.log(1.0)
    if gap(lo) < 0:
        return 1
    return math.ceil(math.exp(brentq(gap, lo, math.log(1e12), xtol=1e-6)))


def plan(policy: Policy, registry: RegistryBaseline) -> list[PlanRow]:
    """Planning rows for every evaluated stage × critical/guardrail KPI."""
    ev = policy.evaluation
    decisive = [k for k in policy.kpis if k.decides]
    # The same split as the gate's: decisive KPIs + hard limits + registry control limits,
    # weighted by each KPI's alpha_weight, of what the recent-window check
    # (evaluation.window_share) leaves to the pooled checks.
    unit_alpha = alpha_per_weight(policy, registry) * (1.0 - ev.window_share)
    rows: list[PlanRow] = []
    for stage in policy.gated_stages:
        for kpi in decisive:
            rows.append(_plan_row(stage, kpi, registry, unit_alpha * kpi.alpha_weight,
                                  ev.alpha_promote, ev.power))
    return rows


def _plan_row(stage: Stage, kpi: KpiSpec, registry: RegistryBaseline, alpha_r: float,
              alpha_p: float, power: float) -> PlanRow:
    unit = _unit(kpi, registry.get(kpi.registry_metric or kpi.name) or registry.get(kpi.name),
                 registry)
    if not isinstance(unit, PlanUnit):
        return PlanRow(stage.name, kpi.name, "", None, None, None, describe(unit))
    share = 0.5 if stage.shadow else stage.traffic / 100.0
    promote = _requests(unit, share, stage.promote_margin_scale * unit.margin, alpha_p, power,
                        unit.margin, stage.shadow)
    # A candidate at −detect against the rollback threshold (0 critical, −margin guardrail);
    # the rollback mixture is tuned as the gate tunes it.
    m_r = 0.0 if kpi.role is Role.CRITICAL else 1.0
    shift = unit.detect if math.isfinite(unit.detect) else DETECT_FACTOR * unit.margin
    detect = _requests(unit, share, shift - m_r * unit.margin, alpha_r, power,
                       rollback_distance(unit.margin, shift, m_r), stage.shadow)
    wald = None
    if unit.p0 is not None:
        sign = 1 if kpi.direction.value == "higher" else -1
        p1 = unit.p0 - sign * shift
        if 0 < p1 < 1:
            asn = wald_asn(unit.p0, p1, alpha_r, 1 - power)
            cand_share = 1.0 if stage.shadow else share
            wald = math.ceil(asn / unit.per_request / cand_share)
    note = "baseline rate 0 or 1: planned with Agresti–Caffo's (x + 1)/(n + 2)" \
        if unit.zero_rate else ""
    return PlanRow(stage.name, kpi.name, unit.name, promote, detect, wald, note)
