"""Figures over many simulated rollouts of one scenario and rule (the benchmark's JSON cells).

A run is kept as a :class:`RunRecord` (small and picklable, so benchmark workers return
them); :func:`summarise` turns a scenario's records into the figures
``benchmarks/decision_efficiency.py`` prints and writes:

* ``false_rollback_rate`` (scenarios whose candidate should be promoted) and ``power``
  (worse candidates): runs rolled back *before* reaching 100%;
* ``exposure_mean`` / ``_median`` / ``_p90``: candidate responses served to users before
  those rollbacks (requests answered while their labels were pending included);
* ``promote_rate``: runs that reached 100%; ``requests_to_promote_mean``: their exposure
  until then; ``hold_rate``: runs neither rolled back nor promoted at the horizon;
* ``time_to_decision_hours_mean``: simulated hours from the start until the first
  promotion to 100% or rollback, over the runs that decided (null when none did);
* ``bake_rollback_rate``: of the runs the controller kept evaluating after promotion (a
  bake period), the share rolled back then; null, not 0, when no run had a bake period
  (a policy without one, or a controller that stops at promotion);
* ``forecast_hours_mean``: the time to decision the controller forecast for an *equal*
  candidate (hours from the start until the full rollout), as recorded at the first look
  once the first stage has been served for its ``min_dwell`` (:meth:`RunRecord.of` with
  the policy; null when not asked for, or when no run got that far in its first stage).

So before-promotion rollbacks, promotions and holds partition the runs, and each of
today's fields keeps its meaning for a rollout without a bake period.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_kpigate.core.forecast import forecast_view
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.simulate.runner import Outcome


@dataclass(frozen=True)
class RunRecord:
    """What the figures need from one simulated rollout."""

    status: str  # promoted | rolled_back | holding (Outcome.status)
    exposed: int  # candidate responses served to users by the end of the run
    exposed_at_promotion: int | None
    decided_look: int | None  # interval of the first promotion to 100% or rollback
    bake_looks: int
    rolled_back_in_bake: bool
    forecast_s: float | None = None  # the controller's forecast full rollout (module doc)

    @classmethod
    def of(cls, outcome: Outcome, policy: Policy | None = None) -> RunRecord:
        """The record of ``outcome`` (with ``policy``: and its forecast, module docstring)."""
        return cls(outcome.status, outcome.exposed_requests, outcome.exposed_at_promotion,
                   outcome.decided_look, outcome.bake_looks, outcome.rolled_back_in_bake,
                   None if policy is None else _forecast_s(outcome, policy))

    @property
    def rolled_back_before_promotion(self) -> bool:
        """Rolled back while the rollout was still in its gated stages."""
        return self.status == "rolled_back" and not self.rolled_back_in_bake

    @property
    def reached_full(self) -> bool:
        """Promoted to the final (100%) stage at some point."""
        return self.exposed_at_promotion is not None


def _forecast_s(outcome: Outcome, policy: Policy) -> float | None:
    """The full rollout the controller forecast at the first look past the first stage's
    ``min_dwell`` (seconds from the start; None: no such look, or no finite forecast)."""
    interval = policy.evaluation.interval
    dwell = max(policy.stages[0].min_dwell, interval)
    for look in outcome.looks:
        if look.stage_index != 0 or (look.interval + 1) * interval < dwell - 1e-9:
            continue
        fc = forecast_view(look.decision) if look.decision is not None else None
        if fc is None or not math.isfinite(fc.full_rollout_s):
            return None
        return fc.at + fc.full_rollout_s
    return None


def _stat(values: Sequence[float], fn: Any) -> float | None:
    return float(fn(values)) if values else None


def summarise(records: Sequence[RunRecord], should_promote: bool,
              interval_s: float) -> dict[str, float | int | None]:
    """The figures of one (scenario, rule) cell; see the module docstring."""
    n = len(records)
    if n == 0:
        raise ValueError("no runs to summarise")
    rolled = [r.exposed for r in records if r.rolled_back_before_promotion]
    promoted = [r.exposed_at_promotion for r in records if r.exposed_at_promotion is not None]
    decided = [(r.decided_look + 1) * interval_s / 3600.0 for r in records
               if r.decided_look is not None]
    baked = [r for r in records if r.bake_looks > 0]
    rb_rate = len(rolled) / n
    holding = sum(1 for r in records if not r.reached_full and r.status != "rolled_back")
    return {
        "false_rollback_rate": rb_rate if should_promote else None,
        "power": None if should_promote else rb_rate,
        "exposure_mean": _stat(rolled, np.mean),
        "exposure_median": _stat(rolled, np.median),
        "exposure_p90": _stat(rolled, lambda v: np.percentile(v, 90)),
        "promote_rate": len(promoted) / n,
        "requests_to_promote_mean": _stat(promoted, np.mean),
        "hold_rate": holding / n,
        "reps": n,
        "time_to_decision_hours_mean": _stat(decided, np.mean),
        "bake_rollback_rate": (sum(r.rolled_back_in_bake for r in baked) / len(baked)
                               if baked else None),
        "forecast_hours_mean": _stat([r.forecast_s / 3600.0 for r in records
                                      if r.forecast_s is not None], np.mean),
    }
