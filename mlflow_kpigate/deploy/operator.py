"""An operator's promote / rollback / pause / resume, committed on the latest state.

Shared by both deployers: the action is a pure transition
(:func:`~mlflow_kpigate.rollout.transitions.operator_action`) saved compare-and-set with
its audit event, re-applied to a newer state when a controller saved meanwhile.
"""

from __future__ import annotations

import time

from mlflow_kpigate.core.errors import KpigateError, StateConflict, UsageError
from mlflow_kpigate.core.events import OperatorAction, traffic_percent
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.ports import StateStore


def commit_operator_action(store: StateStore, policy: Policy, name: str, action: str,
                           who: str = "operator") -> RolloutState:
    """Save an operator's ``action`` on the latest state; the caller runs its effects.

    A concurrent controller save is not lost: the action is re-applied to the newer state.
    The saved state has ``effects_pending`` set.
    """
    for attempt in range(10):
        state = store.require()
        try:
            new = transitions.operator_action(state, policy, action, time.time(), who)
        except ValueError as exc:
            raise UsageError(f"{name}: {exc}") from None
        new = new.evolve(effects_pending=True)
        event = OperatorAction(policy.stages[new.stage_index].describe(), new.weights.describe(),
                               traffic_percent(new.weights), action, who, new.reason)
        try:
            return store.save(new, event)
        except StateConflict:
            # The controller saved an evaluation meanwhile: apply the action to that.
            time.sleep(0.05 * (attempt + 1))
    raise KpigateError(f"{name}: the rollout kept changing; try `{action}` again")
