"""Decision rules a simulated rollout can be run with: kpigate's gate and two foils.

* ``kpigate``: :func:`mlflow_kpigate.gate.evaluate` (anytime-valid, α split).
* ``ztest``: the same stratified estimates, but a fixed-horizon one-sided z bound
  (z = 1.645) re-checked at every interval, no multiplicity correction: the common
  "re-run the test every few minutes" practice that peeking inflates.
* ``paper``: the case study's control-chart rule: roll back when the candidate's KPI in the
  latest interval differs from the registry baseline mean by more than 2σ (two-sided),
  promote when the stage's minimum samples and dwell are met.

The foils exist to be compared with the gate in ``benchmarks/decision_efficiency.py``; they
are not offered for real rollouts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.gate import Action, RegistryBaseline, StageSample, evaluate
from mlflow_kpigate.gate.estimators import Strata, kpi_value, measure
from mlflow_kpigate.gate.strata import shadow_stages
from mlflow_kpigate.policy import Policy, Role, Stage

Z_95 = 1.6448536269514722


@dataclass(frozen=True)
class RuleResult:
    """A rule's answer at one look."""

    action: Action
    reason: str
    decision: Decision | None = None


class Rule(Protocol):
    """A decision rule: called once per evaluation interval."""

    name: str

    def __call__(self, policy: Policy, stage_index: int, stage_elapsed: float,
                 samples: Sequence[StageSample], window: StageSample | None,
                 registry: RegistryBaseline | None) -> RuleResult: ...


def _stage_ready(policy: Policy, stage: Stage, current: StageSample | None,
                 elapsed: float) -> bool:
    if current is None:
        return False
    needs_labels = any(k.needs_labels for k in policy.kpis if k.decides)
    return (current.candidate.requests >= stage.min_samples.requests
            and (not needs_labels or current.candidate.labelled >= stage.min_samples.labelled)
            and elapsed >= stage.min_dwell)


class KpigateRule:
    """The gate itself."""

    name = "kpigate"

    def __call__(self, policy: Policy, stage_index: int, stage_elapsed: float,
                 samples: Sequence[StageSample], window: StageSample | None,
                 registry: RegistryBaseline | None) -> RuleResult:
        d = evaluate(policy, stage_index, stage_elapsed, samples, registry)
        return RuleResult(d.action, d.reason, d)


class ZTestRule:
    """Fixed-horizon z bounds re-checked every interval (peeking), no α split."""

    name = "ztest"

    def __call__(self, policy: Policy, stage_index: int, stage_elapsed: float,
                 samples: Sequence[StageSample], window: StageSample | None,
                 registry: RegistryBaseline | None) -> RuleResult:
        stage = policy.stages[stage_index]
        strata = Strata([s for s in samples if s.stage_index <= stage_index],
                        shadow_stages(policy))
        all_ok = True
        for kpi in policy.kpis:
            if not kpi.decides:
                continue
            m_r = 0.0 if kpi.role is Role.CRITICAL else 1.0
            meas = measure(kpi, strata, m_r, stage.promote_margin_scale)
            if meas.missing is not None:
                all_ok = False
                continue
            uppers = [t.delta + Z_95 * math.sqrt(t.variance) for t in meas.rollback_tests
                      if t.usable]
            lowers = [t.delta - Z_95 * math.sqrt(t.variance) for t in meas.promote_tests
                      if t.usable]
            if uppers and min(uppers) < meas.rollback_threshold:
                return RuleResult(Action.ROLLBACK, f"rollback: z-test says {kpi.name} is worse")
            if not lowers or min(lowers) <= meas.promote_threshold:
                all_ok = False
        current = next((s for s in strata if s.stage_index == stage_index), None)
        if all_ok and _stage_ready(policy, stage, current, stage_elapsed):
            return RuleResult(Action.PROMOTE, "promote: z bounds within margins")
        return RuleResult(Action.HOLD, "hold")


class PaperRule:
    """|candidate KPI in the latest interval − registry μ| > 2σ → rollback."""

    name = "paper"

    def __init__(self, k: float = 2.0) -> None:
        self.k = k

    def __call__(self, policy: Policy, stage_index: int, stage_elapsed: float,
                 samples: Sequence[StageSample], window: StageSample | None,
                 registry: RegistryBaseline | None) -> RuleResult:
        if registry is None:
            raise ValueError("the paper's rule needs the registry baseline (μ, σ per KPI)")
        if window is not None:
            for kpi in policy.kpis:
                if not kpi.decides:
                    continue
                base = registry.get(kpi.name)
                if base is None or base.std is None or not base.has_spread:
                    continue
                value = kpi_value(kpi, window.candidate)
                if math.isfinite(value) and abs(value - base.mean) > self.k * float(base.std):
                    return RuleResult(Action.ROLLBACK,
                                      f"rollback: {kpi.name} {value:.4g} outside μ ± {self.k:g}σ")
        stage = policy.stages[stage_index]
        current = next((s for s in samples if s.stage_index == stage_index), None)
        if _stage_ready(policy, stage, current, stage_elapsed):
            return RuleResult(Action.PROMOTE, "promote: no KPI outside the control limits")
        return RuleResult(Action.HOLD, "hold")


RULES: dict[str, type] = {"kpigate": KpigateRule, "ztest": ZTestRule, "paper": PaperRule}
