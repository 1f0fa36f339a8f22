"""The ModelRollout's conditions, from its phase, following Kubernetes conventions.

Three condition types, each always present so ``kubectl wait`` and Argo CD health checks
see a definite True/False:

=============================  ===============  ===================  ==================
phase                          Progressing      Available            Degraded
=============================  ===============  ===================  ==================
pending/shadow/canary/holding  True (phase)     False (phase)        False NoRegression
baking                         True Baking      False Baking         False NoRegression
any of those, paused           Unknown Paused   as above             as above
promoted                       False Promoted   True Promoted        False Promoted
rolled_back                    False RolledBack False RolledBack     True RolledBack
rolled back while baking       False …          False …              True RolledBackAfterPromotion
aborted                        False Aborted    False Aborted        True Aborted
=============================  ===============  ===================  ==================

``Available`` means *the candidate is promoted*: it stays False while the baseline serves
during a rollout (the baseline being up is Seldon's status, not this resource's), so
``kubectl wait --for=condition=Available`` returns exactly when a rollout succeeds.
``Progressing=False`` marks any end; ``Degraded=True`` a rollback or abort. A paused
rollout is neither moving nor finished: ``Progressing=Unknown``, as a paused Deployment.

A condition's ``lastTransitionTime`` changes only when its ``status`` changes (a new
reason or message alone keeps it), as the API conventions ask; :func:`conditions_for`
takes the previous conditions for that.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from mlflow_kpigate.backends.modelrollout.status import Condition
from mlflow_kpigate.core.state import ROLLED_BACK_AFTER_PROMOTION, Phase, RolloutState

AVAILABLE, PROGRESSING, DEGRADED = "Available", "Progressing", "Degraded"
#: The order conditions are written in.
CONDITION_TYPES = (AVAILABLE, PROGRESSING, DEGRADED)

_REASONS = {Phase.PENDING: "Pending", Phase.SHADOW: "Shadow", Phase.CANARY: "Canary",
            Phase.HOLDING: "Holding", Phase.BAKING: "Baking", Phase.PROMOTED: "Promoted",
            Phase.ROLLED_BACK: "RolledBack", Phase.ABORTED: "Aborted"}


def phase_reason(state: RolloutState) -> str:
    """The CamelCase reason of the state's phase (``RolledBackAfterPromotion`` when a
    rollback came during the bake)."""
    if state.status == ROLLED_BACK_AFTER_PROMOTION:
        return "RolledBackAfterPromotion"
    return _REASONS[state.phase]


def _wanted(state: RolloutState) -> dict[str, tuple[str, str]]:
    """type → (status, reason) for ``state``."""
    reason = phase_reason(state)
    if state.phase is Phase.PROMOTED:
        return {AVAILABLE: ("True", reason), PROGRESSING: ("False", reason),
                DEGRADED: ("False", reason)}
    if state.phase.terminal:  # rolled back or aborted
        return {AVAILABLE: ("False", reason), PROGRESSING: ("False", reason),
                DEGRADED: ("True", reason)}
    progressing = ("Unknown", "Paused") if state.paused else ("True", reason)
    return {AVAILABLE: ("False", reason), PROGRESSING: progressing,
            DEGRADED: ("False", "NoRegression")}


def conditions_for(state: RolloutState, message: str, *, generation: int, now: datetime,
                   previous: Iterable[Condition] = ()) -> tuple[Condition, ...]:
    """Available, Progressing and Degraded for ``state``.

    ``previous`` are the conditions of the status being replaced: a condition whose
    status is unchanged keeps its ``lastTransitionTime``; others get ``now``. ``message``
    (the rollout's reason) goes on every condition.
    """
    before = {c.type: c for c in previous}
    out = []
    for type_, (status, reason) in _wanted(state).items():
        old = before.get(type_)
        since = old.last_transition_time if old is not None and old.status == status else now
        out.append(Condition(type_, status, reason, message, since, generation))
    return tuple(sorted(out, key=lambda c: CONDITION_TYPES.index(c.type)))
