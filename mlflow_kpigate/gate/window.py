"""The recent-window check: the current stage judged on its own, with its own α share.

The gate's rollback test pools every stage's estimate (inverse-variance weights), so it
tracks the *average* Δ of the rollout so far. A candidate whose Δ moves mid-rollout — fine
in shadow and at 5%, worse at 25% — can keep a good pooled average for a while and be
promoted on its early evidence. This check looks at the most recent window, the current
stage's stratum alone, and rolls back when that stratum alone is confidently worse than
the rollback threshold (the engine's rule and thresholds, on one stratum).

**α.** ``evaluation.window_share`` (``s``) moves a share of ``alpha_rollback`` from the
pooled checks to this one: the engine gets ``alpha_rollback·(1 − s)``, the window check
``alpha_rollback·s``, so a false rollback still has probability at most
``alpha_rollback`` over the whole rollout. The window share is split equally (Bonferroni)
over the decisive KPIs and over the gated stages after the first — each stage's stratum is
a separate anytime-valid sequence, and the family must hold over all of them; the first
stage is always alone, so it never spends any — and, for a fairness
KPI, over its segment pairs as the engine does. Each uses the engine's one-sided normal
mixture boundary with τ² tuned to the KPI's margin at that level. With ``s = 0`` (the
default) nothing changes: :func:`evaluate` is the engine's.

The check is skipped while the current stage is the only stratum (the pooled test is then
the same sequence at a larger α). Public entry: :func:`evaluate`, which the controller and
``kpigate replay`` call in place of :func:`mlflow_kpigate.gate.engine.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.decision import Action, Decision, Verdict
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate import engine
from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius
from mlflow_kpigate.gate.estimators import measure
from mlflow_kpigate.gate.strata import Strata, shadow_stages
from mlflow_kpigate.policy import Policy, Role


@dataclass(frozen=True)
class WindowFinding:
    """One decisive KPI in the current stage's stratum alone."""

    kpi: str
    delta: float
    upper: float
    threshold: float
    alpha: float
    label: str = ""

    @property
    def worse(self) -> bool:
        """The stratum alone is confidently worse than the rollback threshold."""
        return self.upper < self.threshold

    def reason(self, stage: str) -> str:
        """One line for the decision's reason."""
        where = f" [{self.label}]" if self.label else ""
        return (f"{self.kpi} is confidently worse in the current stage ({stage}) alone"
                f"{where}: Δ {self.delta:+.4g}, upper {self.upper:+.4g} < "
                f"{self.threshold:+.4g} (recent-window check, α {self.alpha:.3g})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN/inf become null)."""
        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {"kpi": self.kpi, "delta": num(self.delta), "upper": num(self.upper),
                "threshold": num(self.threshold), "alpha": self.alpha, "label": self.label,
                "worse": self.worse}


def check_window(policy: Policy, stage_index: int, samples: Sequence[StageSample],
                 alpha: float) -> list[WindowFinding]:
    """The decisive KPIs judged on the current stage's stratum alone, at ``alpha`` in all.

    Empty while the current stage is the only stratum, or with ``alpha`` 0.
    """
    strata = [s for s in samples if s.stage_index <= stage_index]
    current = [s for s in strata if s.stage_index == stage_index]
    decisive = [k for k in policy.kpis if k.decides]
    if alpha <= 0 or not current or len(strata) < 2 or not decisive:
        return []
    # Stage 0 is never checked (it is always the only stratum), so the others share α.
    per_kpi = alpha / (len(decisive) * max(len(policy.gated_stages) - 1, 1))
    out: list[WindowFinding] = []
    for kpi in decisive:
        critical = kpi.role is Role.CRITICAL
        meas = measure(kpi, Strata(current, shadow_stages(policy)), 0.0 if critical else 1.0,
                       1.0)
        usable = [t for t in meas.rollback_tests if t.usable]
        if meas.missing is not None or not usable or not meas.scale > 0:
            continue
        a = per_kpi / len(usable)
        tau2 = tau2_for_radius(meas.scale, a)
        worst = min(usable, key=lambda t: t.delta + one_sided_radius(t.variance, tau2, a))
        upper = worst.delta + one_sided_radius(worst.variance, tau2, a)
        out.append(WindowFinding(kpi.name, worst.delta, upper, meas.rollback_threshold, a,
                                 worst.label if len(usable) > 1 else ""))
    return out


def evaluate(policy: Policy, stage_index: int, stage_elapsed: float,
             samples: Sequence[StageSample], registry: RegistryBaseline | None = None
             ) -> Decision:
    """The engine's decision with the recent-window check (see the module docstring)."""
    share = policy.evaluation.window_share
    if share <= 0:
        return engine.evaluate(policy, stage_index, stage_elapsed, samples, registry)
    alpha = policy.evaluation.alpha_rollback
    pooled = replace(policy, evaluation=replace(policy.evaluation,
                                                alpha_rollback=alpha * (1.0 - share)))
    decision = engine.evaluate(pooled, stage_index, stage_elapsed, samples, registry)
    findings = check_window(policy, stage_index, samples, alpha * share)
    meta = {**decision.meta, "window": {"alpha": alpha * share,
                                        "findings": [f.to_dict() for f in findings]}}
    worse = [f for f in findings if f.worse]
    if decision.action is Action.ROLLBACK or not worse:
        return replace(decision, meta=meta)
    stage = policy.stages[stage_index].describe()
    flagged = {f.kpi: f for f in worse}
    evidence = tuple(replace(e, verdict=Verdict.WORSE, reason=flagged[e.kpi].reason(stage))
                     if e.kpi in flagged else e for e in decision.evidence)
    reason = "rollback: " + "; ".join(f.reason(stage) for f in worse)
    return replace(decision, action=Action.ROLLBACK, reason=reason, next_stage_index=None,
                   evidence=evidence, alert=True, timed_out=False, meta=meta)
