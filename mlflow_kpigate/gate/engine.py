"""The decision engine: a pure function from (policy, stage, samples, baseline) to a Decision.

Rules (docs/statistics.md has the reasoning):

* **rollback** when any critical/guardrail KPI's anytime-valid upper bound on
  (candidate − baseline, better-positive) is below its rollback threshold (−margin for a
  guardrail, 0 for a critical KPI), or when the candidate's own value is confidently past a
  hard ``limit`` or past the registry's worse control limit μ ∓ kσ;
* **promote** when every critical/guardrail KPI's lower bound is above
  −(stage scale × margin) *and* its point estimate is within the (unscaled) margin, every
  hard limit is confidently respected, and the stage's minimum samples and dwell time are
  met;
* **hold** otherwise; at the stage's ``max_duration`` the policy's ``on_timeout`` applies.

In a shadow stage a KPI whose values describe the served answer (business values) is
``not_measurable``: reported with that reason and left out of the stage's decision (it
neither blocks promotion nor rolls back); later split stages measure it on their own
strata (:meth:`~.strata.Strata.for_kpi`).

Error budget: rollback fires on *any* of R tests, so ``alpha_rollback`` is split over the R
rollback checks by weighted Bonferroni: each check gets ``alpha_rollback · w / W``, where w
is its KPI's ``alpha_weight`` (a KPI's hard-limit and control-limit checks carry its
weight) and W the sum of the weights of all R checks (a fairness check splits its share
again over its segment pairs). Holm's step-down would reject exactly when Bonferroni does
for this "any" event, so it would buy nothing and would make each KPI's interval depend on
the others. Promotion needs *all* decisive KPIs (intersection–union), so each uses the full
``alpha_promote``. The rollback boundary's mixture is tuned at the KPI's ``detect``
distance, the promotion boundary's at its margin. For a guardrail with
``promote_margin_scale`` 1 a rollback and a promotion can never both be indicated; for a
critical KPI, or with ``promote_margin_scale`` > 1, the promotion threshold is lower than
the rollback threshold and both can hold at once: rollback wins, because it is checked
first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.decision import Action, Check, Decision, Evidence, Verdict
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius, variance_for_radius
from mlflow_kpigate.gate.estimators import measure
from mlflow_kpigate.gate.own_value import OwnValue, own_value
from mlflow_kpigate.gate.strata import (
    Measurement,
    Strata,
    Test,
    not_measurable_reason,
    shadow_stages,
)
from mlflow_kpigate.policy import KpiKind, KpiSpec, OnTimeout, Policy, Role, Stage

NAN = math.nan


@dataclass(frozen=True)
class _Bounds:
    upper: float  # min over tests of the rollback upper bound
    lower: float  # min over tests of the promotion lower bound
    delta: float  # estimate of the test that sets ``upper``
    label: str


def _bounds(tests_r: Sequence[Test], tests_p: Sequence[Test], scale: float, alpha_r: float,
            alpha_p: float, rollback_scale: float | None = None) -> _Bounds:
    """Anytime-valid bounds of a family of tests (Bonferroni within the family for rollback).

    The promotion mixture is tuned at ``scale`` (the margin), the rollback mixture at
    ``rollback_scale`` (the detect distance; default ``scale``).
    """
    usable_r = [t for t in tests_r if t.usable]
    usable_p = [t for t in tests_p if t.usable]
    scale_r = scale if rollback_scale is None else rollback_scale
    if not usable_r or not usable_p or not all(x > 0 and math.isfinite(x)
                                               for x in (scale, scale_r)):
        return _Bounds(NAN, NAN, NAN, "")
    a_r = alpha_r / len(usable_r)
    tau2_r = tau2_for_radius(scale_r, a_r)
    tau2_p = tau2_for_radius(scale, alpha_p)
    uppers = [(t.delta + one_sided_radius(t.variance, tau2_r, a_r), t) for t in usable_r]
    upper, worst = min(uppers, key=lambda u: u[0])
    lower = min(t.delta - one_sided_radius(t.variance, tau2_p, alpha_p) for t in usable_p)
    return _Bounds(upper, lower, worst.delta, worst.label)


def _fmt(value: float, kpi: KpiSpec | None = None) -> str:
    if not math.isfinite(value):
        return "n/a"
    seconds = kpi is not None and (
        kpi.kind is KpiKind.QUANTILE or (kpi.kind is KpiKind.MEAN and kpi.log)
    )
    if seconds:
        return f"{value * 1000:.1f} ms"
    return f"{value:.4g}"


def _needed(samples: int, variance: float, radius: float, scale: float, alpha: float
            ) -> int | None:
    """Units at which an equal candidate's promotion bound would reach ``−radius``.

    The estimate's variance falls like 1/n at the current allocation, so the units needed
    are ``samples × v_now / v*`` where ``v*`` is the variance at which the boundary's radius
    equals the (stage-scaled) margin.
    """
    if samples <= 0 or not (variance > 0 and math.isfinite(variance)) or not radius > 0:
        return None
    vstar = variance_for_radius(radius, tau2_for_radius(scale, alpha), alpha)
    if vstar <= 0:
        return None
    return math.ceil(samples * variance / vstar)


def _kpi_checks(policy: Policy, kpi: KpiSpec, registry: RegistryBaseline | None) -> int:
    """The rollback checks of one KPI: its comparison, its hard limit, its control limit."""
    return (int(kpi.decides) + int(kpi.limit is not None)
            + int(_control_limit(policy, kpi, registry) is not None))


def rollback_checks(policy: Policy, registry: RegistryBaseline | None) -> int:
    """How many rollback checks share ``alpha_rollback`` (fixed for the whole rollout)."""
    return max(sum(_kpi_checks(policy, kpi, registry) for kpi in policy.kpis), 1)


def alpha_per_weight(policy: Policy, registry: RegistryBaseline | None) -> float:
    """``alpha_rollback`` / W, W the summed ``alpha_weight`` of all rollback checks.

    A check of a KPI with weight w runs at ``w ×`` this (weighted Bonferroni: the shares
    add up to ``alpha_rollback``). With every weight 1 it is ``alpha_rollback / R``.
    """
    total = sum(kpi.alpha_weight * _kpi_checks(policy, kpi, registry) for kpi in policy.kpis)
    return policy.evaluation.alpha_rollback / (total if total > 0 else 1.0)


def _control_limit(policy: Policy, kpi: KpiSpec, registry: RegistryBaseline | None
                   ) -> tuple[float, float] | None:
    """(worse control limit, kσ) for ``kpi`` when the registry guard applies."""
    k = policy.control_limits.k
    if k is None or registry is None or not kpi.decides:
        return None
    base = registry.get(kpi.registry_metric or kpi.name) or registry.get(kpi.name)
    if base is None or base.std is None or not base.has_spread:
        return None
    spread = k * base.std
    worse = base.mean - spread if kpi.direction.value == "higher" else base.mean + spread
    return worse, spread


def _own_bounds(check: OwnValue | None, alpha_r: float, alpha_p: float) -> _Bounds:
    if check is None:
        return _Bounds(NAN, NAN, NAN, "")
    return _bounds(check.tests_rollback, check.tests_promote, check.scale, alpha_r, alpha_p)


def _kpi_evidence(policy: Policy, stage: Stage, kpi: KpiSpec, samples: Strata,
                  registry: RegistryBaseline | None, alpha_r: float) -> tuple[Evidence, bool]:
    """Evidence for one KPI and whether its hard limit is confidently respected."""
    alpha_p = policy.evaluation.alpha_promote
    critical = kpi.role is Role.CRITICAL
    m_r = 0.0 if critical else 1.0
    m_p = stage.promote_margin_scale
    base: dict[str, Any] = dict(kpi=kpi.name, kind=kpi.kind.value, role=kpi.role.value,
                direction=kpi.direction.value, margin=str(kpi.margin) if kpi.margin else None,
                limit=kpi.limit,
                alpha_rollback=alpha_r if kpi.decides or kpi.limit is not None else NAN,
                alpha_promote=alpha_p)
    if stage.shadow and kpi.depends_on_served_answer:
        return Evidence(verdict=Verdict.NOT_MEASURABLE,
                        reason=not_measurable_reason(kpi, bake=False), **base), True
    # Own-value checks too: the candidate's values in shadow strata are the baseline's.
    samples = samples.for_kpi(kpi)
    meas: Measurement = measure(kpi, samples, m_r, m_p)

    # Hard limit and registry control limit: the candidate's own value.
    cand = samples.merged("candidate") if len(samples) else None
    limit_ok = kpi.limit is None
    breach: str | None = None
    if cand is not None and kpi.limit is not None:
        scale = _limit_scale(kpi, kpi.limit)
        lb = _own_bounds(own_value(kpi, cand, kpi.limit, scale), alpha_r, alpha_p)
        if lb.upper < 0:
            breach = (f"{kpi.name} is confidently past its hard limit {_fmt(kpi.limit, kpi)} "
                      f"(candidate {_fmt(meas.candidate_value, kpi)})")
        limit_ok = lb.lower > 0
    cl = _control_limit(policy, kpi, registry)
    control_breach: str | None = None
    if cand is not None and cl is not None:
        worse, spread = cl
        cb = _own_bounds(own_value(kpi, cand, worse, spread), alpha_r, alpha_p)
        if cb.upper < 0:
            control_breach = (f"{kpi.name} is confidently beyond the registry control limit "
                              f"{_fmt(worse, kpi)} (μ ∓ {policy.control_limits.k:g}σ; candidate "
                              f"{_fmt(meas.candidate_value, kpi)})")

    if meas.missing is not None:
        verdict = Verdict.INSUFFICIENT_DATA if kpi.role is not Role.INFO else Verdict.REPORTED
        reason = f"{kpi.name}: {meas.missing}"
        if breach or control_breach:
            verdict = Verdict.LIMIT_BREACHED if breach else Verdict.OUTSIDE_CONTROL_LIMITS
            reason = breach or control_breach or reason
        return Evidence(verdict=verdict, reason=reason, statistic=meas.statistic,
                        baseline_value=meas.baseline_value,
                        candidate_value=meas.candidate_value, samples=meas.samples,
                        **base), limit_ok

    b = _bounds(meas.rollback_tests, meas.promote_tests, meas.scale, alpha_r, alpha_p,
                meas.rollback_tau_scale)
    promote_radius = -meas.promote_threshold if meas.promote_threshold < 0 else meas.scale
    pool_var = min((t.variance for t in meas.promote_tests if t.usable), default=NAN)
    needed = _needed(meas.samples, pool_var, promote_radius, meas.scale, alpha_p)
    where = f" [{b.label}]" if b.label else ""
    values = (f"candidate {_fmt(meas.candidate_value, kpi)} vs baseline "
              f"{_fmt(meas.baseline_value, kpi)}")
    interval = f"Δ {b.delta:+.4g}, bounds [{b.lower:+.4g}, {b.upper:+.4g}]"
    if breach:
        verdict, reason = Verdict.LIMIT_BREACHED, breach
    elif control_breach:
        verdict, reason = Verdict.OUTSIDE_CONTROL_LIMITS, control_breach
    elif kpi.role is Role.INFO:
        verdict, reason = Verdict.REPORTED, f"{kpi.name}: {values} ({interval})"
    elif kpi.decides and b.upper < meas.rollback_threshold:
        what = "worse than the baseline" if critical else "worse than its margin allows"
        verdict = Verdict.WORSE
        reason = (f"{kpi.name} is confidently {what}{where}: {values} ({interval}; rollback "
                  f"when upper < {meas.rollback_threshold:+.4g})")
    elif b.lower > 0 and meas.better_means_superior:
        verdict = Verdict.BETTER
        reason = f"{kpi.name} is confidently better: {values} ({interval})"
    elif kpi.decides and b.lower > meas.promote_threshold and not _guard_passes(meas):
        # The interval allows it (a widened stage margin), but the estimate itself is worse
        # than the margin: promoting would hand more traffic to a probably-worse candidate.
        verdict = Verdict.INCONCLUSIVE
        reason = (f"{kpi.name} is estimated worse than its margin: Δ̂ "
                  f"{meas.guard_estimate:+.4g} < {meas.guard_threshold:+.4g} (promotion needs "
                  f"the estimate within the margin; {values}, bounds [{b.lower:+.4g}, "
                  f"{b.upper:+.4g}])")
    elif kpi.decides and b.lower > meas.promote_threshold:
        verdict = Verdict.NON_INFERIOR
        reason = (f"{kpi.name} is confidently within its margin: {values} ({interval}; needs "
                  f"lower > {meas.promote_threshold:+.4g})")
    else:
        verdict = Verdict.INCONCLUSIVE
        more = ""
        if needed is not None and needed > meas.samples:
            more = f"; ~{needed - meas.samples:,} more samples for an equal candidate"
        goal = (f"needs lower > {meas.promote_threshold:+.4g}" if kpi.decides
                else "improvement not shown yet")
        reason = f"{kpi.name} is inconclusive: {values} ({interval}; {goal}{more})"
    return Evidence(
        verdict=verdict,
        reason=reason,
        statistic=meas.statistic + (f" [{b.label}]" if b.label else ""),
        baseline_value=meas.baseline_value,
        candidate_value=meas.candidate_value,
        delta=b.delta,
        lower=b.lower,
        upper=b.upper,
        rollback_threshold=meas.rollback_threshold if kpi.decides else NAN,
        promote_threshold=meas.promote_threshold if kpi.decides else NAN,
        samples=meas.samples,
        samples_needed=needed,
        **base,
    ), limit_ok


def _guard_passes(meas: Measurement) -> bool:
    """The promotion guard: the point estimate is within the unscaled margin (δ̂ > −m).

    No guard without a margin; a missing estimate fails (NaN compares false).
    """
    if not math.isfinite(meas.guard_threshold):
        return True
    return meas.guard_estimate > meas.guard_threshold


def _limit_scale(kpi: KpiSpec, limit: float) -> float:
    """Distance from a hard limit at which the decision matters (KPI units)."""
    if kpi.margin is not None:
        return kpi.margin.value * abs(limit) if kpi.margin.relative else kpi.margin.value
    return 0.05 * abs(limit) if limit else 0.01


def _stage_checks(policy: Policy, stage: Stage, current: StageSample | None,
                  stage_elapsed: float) -> tuple[Check, ...]:
    requests = current.candidate.requests if current else 0
    labelled = current.candidate.labelled if current else 0
    checks = [
        Check("candidate requests in stage", requests, stage.min_samples.requests,
              requests >= stage.min_samples.requests),
    ]
    if any(k.needs_labels for k in policy.kpis if k.decides):
        checks.append(Check("labelled candidate predictions in stage", labelled,
                            stage.min_samples.labelled, labelled >= stage.min_samples.labelled))
    checks.append(Check("dwell seconds", stage_elapsed, stage.min_dwell,
                        stage_elapsed >= stage.min_dwell))
    return tuple(checks)


def evaluate(policy: Policy, stage_index: int, stage_elapsed: float,
             samples: Sequence[StageSample], registry: RegistryBaseline | None = None
             ) -> Decision:
    """Decide promote / hold / rollback for the rollout's current stage.

    ``samples`` holds one :class:`StageSample` per stage seen so far (the current one
    included); evidence is pooled over all of them, while minimum samples and dwell are
    counted in the current stage only. ``stage_elapsed`` is the time spent in the current
    stage, in seconds. Pure: no I/O, no clock.
    """
    if not 0 <= stage_index < len(policy.stages):
        raise ValueError(f"stage_index {stage_index} is outside the policy's stages")
    stage = policy.stages[stage_index]
    if stage.is_final:
        raise ValueError("the final 100% stage is the promotion itself; nothing to evaluate")
    n_checks = rollback_checks(policy, registry)
    alpha_unit = alpha_per_weight(policy, registry)
    strata = Strata([s for s in samples if s.stage_index <= stage_index],
                    shadow_stages(policy))
    current = next((s for s in strata if s.stage_index == stage_index), None)

    evidence: list[Evidence] = []
    limits_ok = True
    for kpi in policy.kpis:
        ev, ok = _kpi_evidence(policy, stage, kpi, strata, registry,
                               alpha_unit * kpi.alpha_weight)
        evidence.append(ev)
        limits_ok = limits_ok and ok
    checks = _stage_checks(policy, stage, current, stage_elapsed)
    next_index = stage_index + 1
    next_stage = policy.stages[next_index]
    common: dict[str, Any] = dict(stage_index=stage_index, stage_name=stage.name,
                                  evidence=tuple(evidence), checks=checks,
                                  alpha_rollback_per_test=alpha_unit, rollback_tests=n_checks)

    failing = [e for e in evidence if e.verdict.blocks_rollout and
               (e.verdict is not Verdict.WORSE or e.role in ("critical", "guardrail"))]
    if failing:
        reason = "rollback: " + "; ".join(e.reason for e in failing)
        return Decision(Action.ROLLBACK, reason, alert=True, **common)

    decisive = [e for e in evidence if e.role in ("critical", "guardrail")
                and e.verdict is not Verdict.NOT_MEASURABLE]
    unproven = [e for e in decisive
                if e.verdict not in (Verdict.NON_INFERIOR, Verdict.BETTER)]
    unmet = [c for c in checks if not c.met]
    if not next_stage.is_final:
        target = next_stage.describe()
    elif policy.bake.enabled:
        target = (f"full rollout, baking {format_duration(policy.bake.duration)} before it "
                  "counts as promoted")
    else:
        target = "full rollout (promoted)"
    if not unproven and not unmet and limits_ok:
        total = current.candidate.requests if current else 0
        reason = (f"promote to {target}: all {len(decisive)} critical/guardrail KPIs are "
                  f"confidently within their margins ({total:,} candidate requests in "
                  f"{stage.describe()})")
        return Decision(Action.PROMOTE, reason, next_stage_index=next_index, **common)

    why: list[str] = [e.reason for e in unproven]
    if not limits_ok:
        why.append("a hard limit is not yet confidently respected")
    for c in unmet:
        if c.name.startswith("dwell"):
            why.append(f"min dwell {format_duration(c.needed)} not reached "
                       f"({format_duration(c.seen)})")
        else:
            why.append(f"{c.name}: {int(c.seen):,} of {int(c.needed):,}")
    timed_out = stage.max_duration is not None and stage_elapsed >= stage.max_duration
    if not timed_out:
        return Decision(Action.HOLD, "hold: " + "; ".join(why), **common)

    limit = format_duration(stage.max_duration or 0)
    if stage.on_timeout is OnTimeout.ROLLBACK:
        return Decision(Action.ROLLBACK, f"rollback: {stage.describe()} reached max_duration "
                        f"{limit} without evidence to promote (" + "; ".join(why) + ")",
                        timed_out=True, alert=True, **common)
    samples_met = all(c.met for c in checks if not c.name.startswith("dwell"))
    if stage.on_timeout is OnTimeout.PROMOTE_IF_NO_GUARDRAIL_FAILS and samples_met:
        reason = (f"promote to {target} on timeout: no critical/guardrail KPI is confidently "
                  f"worse after {limit}, but non-inferiority was NOT shown ("
                  + "; ".join(why) + ")")
        return Decision(Action.PROMOTE, reason, next_stage_index=next_index, timed_out=True,
                        alert=True, **common)
    return Decision(Action.HOLD, f"hold (max_duration {limit} reached, alerting): "
                    + "; ".join(why), timed_out=True, alert=True, **common)
