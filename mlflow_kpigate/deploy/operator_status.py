"""The status the operator writes on a ModelRollout, and the patch that writes it.

For a rollout in the ConfigMaps the status is :func:`~mlflow_kpigate.backends.modelrollout.
status_from_state`. Two cases have no such rollout yet and are built here: *pending* (the
worker is starting the rollout the spec asks for) and *failed* (the spec or policy is
invalid, or the worker stopped on a usage error); a failure shows as ``Degraded=True`` with
the one-line error, and keeps the phase of a rollout that still runs.

:func:`merge_patch` turns "status now" into a JSON merge patch that makes the stored status
exactly that (keys that disappeared are sent as ``null``), so nothing stale survives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from mlflow_kpigate.backends.modelrollout import AVAILABLE, DEGRADED, PROGRESSING
from mlflow_kpigate.backends.modelrollout.conditions import CONDITION_TYPES
from mlflow_kpigate.backends.modelrollout.status import (
    ActionRecord,
    Condition,
    ModelRolloutStatus,
)
from mlflow_kpigate.core.state import Phase, Weights


def _conditions(wanted: Mapping[str, tuple[str, str]], message: str, generation: int,
                now: datetime, previous: ModelRolloutStatus | None) -> tuple[Condition, ...]:
    before = {c.type: c for c in (previous.conditions if previous else ())}
    out = []
    for type_ in CONDITION_TYPES:
        status, reason = wanted[type_]
        old = before.get(type_)
        since = old.last_transition_time if old is not None and old.status == status else now
        out.append(Condition(type_, status, reason, message, since, generation))
    return tuple(out)


def pending_status(generation: int, message: str, now: datetime,
                   previous: ModelRolloutStatus | None) -> ModelRolloutStatus:
    """The status while the rollout the spec asks for is being started."""
    wanted = {AVAILABLE: ("False", "Pending"), PROGRESSING: ("True", "Pending"),
              DEGRADED: ("False", "NoRegression")}
    return ModelRolloutStatus(
        observed_generation=generation, phase=Phase.PENDING, stage_index=0,
        stage_name="pending", weights=Weights(0.0, False, False), message=message,
        last_action_request=previous.last_action_request if previous else None,
        conditions=_conditions(wanted, message, generation, now, previous))


def failed_status(base: ModelRolloutStatus | None, generation: int, reason: str,
                  message: str, now: datetime,
                  previous: ModelRolloutStatus | None) -> ModelRolloutStatus:
    """``base`` (or a pending status) marked ``Degraded=True`` with ``reason``: the spec
    cannot be acted on. A rollout that still runs keeps ``Progressing`` as it was."""
    base = base or pending_status(generation, message, now, previous)
    running = base.phase not in (Phase.PENDING,) and not base.phase.terminal
    progressing = base.condition(PROGRESSING)
    wanted = {AVAILABLE: ("False", reason),
              PROGRESSING: ((progressing.status, progressing.reason)
                            if running and progressing is not None else ("False", reason)),
              DEGRADED: ("True", reason)}
    return replace(base, message=message,
                   conditions=_conditions(wanted, message, generation, now, previous))


def with_request(status: ModelRolloutStatus, record: ActionRecord | None) -> ModelRolloutStatus:
    """``status`` with ``record`` as the last handled action request (None: unchanged)."""
    return status if record is None else replace(status, last_action_request=record)


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """An RFC 7386 patch turning ``old`` into ``new`` ({} when they are equal)."""
    old = old or {}
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    return patch
