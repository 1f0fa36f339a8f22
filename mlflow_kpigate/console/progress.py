"""A stage's requirements, seen against needed, as the live view shows them.

The gate checks, at each evaluation, the candidate's requests and labelled predictions in
the stage against the stage's ``min_samples`` and the time served against its
``min_dwell`` (``Decision.checks``). Between evaluations the counts are those of the last
one; the dwell time is the clock's, counted from when the stage was served (its
readiness, else its start), as the controller counts it. Right after a promotion the last
decision is about the previous stage, so the new stage's counts are not known yet
(``seen`` is None) while its needs come from the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_kpigate.core.decision import Check, Decision
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import Policy, Stage

__all__ = ["Requirement", "stage_requirements"]

#: The gate's names of its checks (gate/engine.py), and what the view calls them.
REQUESTS = "candidate requests in stage"
LABELLED = "labelled candidate predictions in stage"
DWELL = "dwell seconds"
BAKE = "bake seconds"
LABELS = {REQUESTS: "candidate requests", LABELLED: "labelled samples", DWELL: "dwell",
          BAKE: "bake"}


@dataclass(frozen=True)
class Requirement:
    """One requirement of the current stage: what it is, how much of it was seen (None:
    not measured in this stage yet), how much is needed, and whether it counts seconds."""

    label: str
    seen: float | None
    needed: float
    seconds: bool = False
    #: The stage's ``max_duration`` next to the dwell time (None: no limit, or not dwell).
    limit: float | None = None

    @property
    def met(self) -> bool:
        """Seen at least what is needed."""
        return self.seen is not None and self.seen >= self.needed

    @property
    def share(self) -> float:
        """Seen over needed, in [0, 1] (1 when nothing is needed)."""
        if self.needed <= 0:
            return 1.0
        return min(max((self.seen or 0.0) / self.needed, 0.0), 1.0)


def _stage(state: RolloutState, policy: Policy | None) -> Stage | None:
    if policy is None or not 0 <= state.stage_index < len(policy.stages):
        return None
    return policy.stages[state.stage_index]


def served_for(state: RolloutState, now: float) -> float:
    """Seconds the current stage has been served at ``now`` (0 before it is ready)."""
    started = state.stage_ready_at if state.stage_ready_at is not None \
        else state.stage_started_at
    return max(now - started, 0.0)


def _counted(check: Check) -> Requirement:
    return Requirement(LABELS.get(check.name, check.name), float(check.seen),
                       float(check.needed), seconds=check.name == BAKE)


def stage_requirements(state: RolloutState, policy: Policy | None,
                       decision: Decision | None, now: float) -> tuple[Requirement, ...]:
    """The current stage's requirements: the last decision's counts when it is about this
    stage, else the policy's needs with nothing seen; the dwell time at ``now``."""
    stage = _stage(state, policy)
    checks = decision.checks if decision is not None \
        and decision.stage_index == state.stage_index else ()
    out = [_counted(c) for c in checks if c.name != DWELL]
    if not checks and stage is not None and not stage.is_final:
        out.append(Requirement(LABELS[REQUESTS], None, float(stage.min_samples.requests)))
        if policy is not None and any(k.needs_labels for k in policy.kpis if k.decides):
            out.append(Requirement(LABELS[LABELLED], None, float(stage.min_samples.labelled)))
    if any(c.name == BAKE for c in checks) or state.phase.terminal:
        return tuple(out)  # the bake counts its own time; an ended rollout has no dwell
    needed = stage.min_dwell if stage is not None else next(
        (float(c.needed) for c in checks if c.name == DWELL), 0.0)
    if stage is not None and stage.is_final:
        return tuple(out)
    out.append(Requirement(LABELS[DWELL], served_for(state, now), needed, seconds=True,
                           limit=stage.max_duration if stage is not None else None))
    return tuple(out)
