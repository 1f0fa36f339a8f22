"""Pure state transitions of a rollout: what a decision or an operator's action does.

Kept free of I/O so the controller, the operator commands and the tests share one
definition of "promote", "rollback", "pause" and "resume". Weights always follow from the
stage, so the traffic a state implies can never exceed its approved stage.

With a ``bake`` in the policy, approving the final 100% stage leads to ``baking`` instead
of ``promoted``: the candidate serves everything and the baseline scores a shadow copy
(:meth:`~mlflow_kpigate.core.state.Weights.baking`). From ``baking``, a gate promote (the
bake ended without a regression) or an operator's promote ends the bake (``promoted``,
the baseline's shadow stops); a rollback sends everything back to the baseline, and
``bake_started_at`` stays set, so the status reads ``rolled_back_after_promotion``.
"""

from __future__ import annotations

from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.state import Phase, RolloutState, Weights
from mlflow_kpigate.policy import Policy, Stage


def stage_weights(stage: Stage) -> Weights:
    """Router weights of a stage: shadow mirrors, canary splits, the final stage is 100%."""
    if stage.shadow:
        return Weights(0.0, shadow=True, candidate_attached=True)
    return Weights(stage.traffic, shadow=False, candidate_attached=True)


def stage_phase(stage: Stage, policy: Policy | None = None) -> Phase:
    """The phase that a stage starts in (the final stage bakes when ``policy`` has a bake)."""
    if stage.is_final:
        return Phase.BAKING if policy is not None and policy.bake.enabled else Phase.PROMOTED
    return Phase.SHADOW if stage.shadow else Phase.CANARY


def initial(state: RolloutState, policy: Policy, now: float) -> RolloutState:
    """The state a new rollout starts in: its first stage, approved by creating it."""
    first = policy.stages[0]
    return state.evolve(stage_index=0, approved_stage_index=0, stage_started_at=now,
                        stage_ready_at=None, phase=stage_phase(first), weights=stage_weights(first),
                        reason=f"rollout started at {first.describe()}")


def promote(state: RolloutState, policy: Policy, now: float, reason: str) -> RolloutState:
    """Advance one stage: to the final 100% (``baking`` with a bake, else ``promoted``), or,
    while baking, end the bake (``promoted``)."""
    if state.phase is Phase.BAKING:
        final = policy.stages[state.stage_index]
        return state.evolve(phase=Phase.PROMOTED, weights=stage_weights(final), reason=reason)
    nxt = state.stage_index + 1
    stage = policy.stages[nxt]
    phase = stage_phase(stage, policy)
    weights = Weights.baking() if phase is Phase.BAKING else stage_weights(stage)
    return state.evolve(stage_index=nxt, approved_stage_index=max(state.approved_stage_index,
                                                                   nxt),
                        stage_started_at=now, stage_ready_at=None, phase=phase,
                        weights=weights, reason=reason,
                        bake_started_at=now if phase is Phase.BAKING else state.bake_started_at)


def rollback(state: RolloutState, reason: str, phase: Phase = Phase.ROLLED_BACK
             ) -> RolloutState:
    """All traffic back to the baseline and the candidate detached."""
    return state.evolve(phase=phase, weights=Weights.baseline_only(), reason=reason)


def after_decision(state: RolloutState, policy: Policy, decision: Decision, now: float
                   ) -> tuple[RolloutState, str]:
    """The state after the gate's ``decision``, and the audit event kind."""
    if state.phase.terminal:
        raise ValueError(f"a {state.phase.value} rollout takes no further decisions")
    state = state.evolve(evaluations=state.evaluations + 1,
                         last_decision=decision.to_dict())
    if decision.action is Action.ROLLBACK:
        return rollback(state, decision.reason), "rollback"
    if decision.action is Action.PROMOTE:
        return promote(state, policy, now, decision.reason), "promote"
    if state.phase is Phase.BAKING:
        return state.evolve(reason=decision.reason), "hold"
    stage = policy.stages[state.stage_index]
    phase = Phase.HOLDING if decision.timed_out else stage_phase(stage, policy)
    return state.evolve(phase=phase, reason=decision.reason), "hold"


def operator_action(state: RolloutState, policy: Policy, action: str, now: float,
                    who: str = "operator") -> RolloutState:
    """An operator's promote / rollback / pause / resume (``ValueError`` if not possible)."""
    if state.phase.terminal:
        raise ValueError(f"the rollout is already {state.phase.value}; nothing to {action}")
    if action == "promote":
        if state.phase is Phase.BAKING:
            return promote(state, policy, now, f"{who} ended the bake early: promoted")
        target = policy.stages[state.stage_index + 1].describe()
        return promote(state, policy, now, f"{who} promoted the rollout to {target}")
    if action == "rollback":
        after = " after promotion (during the bake)" if state.phase is Phase.BAKING else ""
        return rollback(state, f"{who} rolled the rollout back{after}")
    if action == "pause":
        if state.paused:
            raise ValueError("the rollout is already paused")
        return state.evolve(paused=True, reason=f"{who} paused the rollout: evaluations "
                            f"stop, traffic stays at {state.weights.describe()}")
    if action == "resume":
        if not state.paused:
            raise ValueError("the rollout is not paused")
        return state.evolve(paused=False, reason=f"{who} resumed the rollout")
    raise ValueError(f"unknown action {action!r}")
