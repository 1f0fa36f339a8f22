"""A ModelRollout status from kpigate's rollout state and its last decision.

The operator (not built yet) will call :func:`status_from_state` after every save of a
:class:`~mlflow_kpigate.core.state.RolloutState` and PATCH the result to ``…/status``; it
is pure, so the same state always gives the same status, and it carries forward what only
the previous status knows (each condition's ``lastTransitionTime``, the last handled
action request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from mlflow_kpigate.backends.modelrollout.conditions import conditions_for
from mlflow_kpigate.backends.modelrollout.status import (
    ForecastStatus,
    KpiSummary,
    LastDecision,
    ModelRolloutStatus,
)
from mlflow_kpigate.core.decision import Decision, Evidence
from mlflow_kpigate.core.forecast import Forecast, forecast_view
from mlflow_kpigate.core.state import RolloutState


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def kpi_summary(evidence: Evidence) -> KpiSummary:
    """One KPI's evidence reduced to the status's summary (``delta`` is the estimate)."""
    return KpiSummary(evidence.kpi, evidence.verdict, evidence.role,
                      _finite(evidence.delta), _finite(evidence.lower),
                      _finite(evidence.upper), _finite(evidence.baseline_value),
                      _finite(evidence.candidate_value), evidence.margin, evidence.samples,
                      evidence.samples_needed)


def last_decision(decision: Decision, decided_at: datetime | None) -> LastDecision:
    """The status's ``lastDecision``."""
    return LastDecision(decision.action, decision.reason, decision.stage_name, decided_at,
                        decision.timed_out, tuple(kpi_summary(e) for e in decision.evidence))


def forecast_status(forecast: Forecast) -> ForecastStatus:
    """The status's ``forecast``: the summary line and the finite times made absolute."""
    at = datetime.fromtimestamp(forecast.at, timezone.utc)

    def when(seconds: float | None) -> datetime | None:
        return None if seconds is None or not math.isfinite(seconds) \
            else at + timedelta(seconds=seconds)

    current = forecast.current
    return ForecastStatus(forecast.line(), at,
                          when(current.equal_s if current is not None else None),
                          when(forecast.full_rollout_s if forecast.stages else None))


def _stage_name(state: RolloutState, decision: Decision | None,
                stage_names: Sequence[str]) -> str:
    if 0 <= state.stage_index < len(stage_names):
        return stage_names[state.stage_index]
    if decision is not None and decision.stage_index == state.stage_index:
        return decision.stage_name
    return f"stage {state.stage_index}"  # what kpigate status prints without the policy


def status_from_state(state: RolloutState, *, generation: int, now: datetime,
                      previous: ModelRolloutStatus | None = None,
                      stage_names: Sequence[str] = ()) -> ModelRolloutStatus:
    """The status describing ``state`` for the object at ``generation``.

    The last decision is the one ``state`` records (``state.last_decision``, written with
    the state by the controller), timed at ``state.updated_at`` when it came with this
    save and otherwise kept from ``previous``. ``stage_names`` are the policy's stage
    names (without them, the decision's stage name or ``stage N``). ``now`` is the
    transition time of conditions that change.
    """
    decision = Decision.from_dict(state.last_decision) if state.last_decision else None
    summary = None
    if decision is not None:
        old = previous.last_decision if previous is not None else None
        decided_at = datetime.fromtimestamp(state.updated_at, timezone.utc)
        summary = last_decision(decision, decided_at)
        if old is not None and old.time is not None and \
                (old.action, old.reason, old.stage, old.kpis) == \
                (summary.action, summary.reason, summary.stage, summary.kpis):
            summary = old  # the same decision re-read: keep when it was taken
    forecast = forecast_view(decision) if decision is not None else None
    return ModelRolloutStatus(
        observed_generation=generation,
        phase=state.phase,
        stage_index=state.stage_index,
        stage_name=_stage_name(state, decision, stage_names),
        weights=state.weights,
        paused=state.paused,
        evaluations=state.evaluations,
        message=state.reason,
        last_decision=summary,
        forecast=forecast_status(forecast) if forecast is not None else None,
        last_action_request=previous.last_action_request if previous is not None else None,
        conditions=conditions_for(state, state.reason, generation=generation, now=now,
                                  previous=previous.conditions if previous else ()),
    )
