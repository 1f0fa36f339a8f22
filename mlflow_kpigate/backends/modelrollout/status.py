"""The ModelRollout's ``status``: phase, stage, weights, the last decision with a summary
of its evidence, the forecast, the last handled action request and the conditions — as
frozen values read from and written to the resource's JSON.

Only the operator writes a status (through the status subresource); :mod:`.mapping` builds
one from kpigate's rollout state. Reading one back (:meth:`ModelRolloutStatus.from_object`)
is what lets the next status keep each condition's ``lastTransitionTime``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlflow_kpigate.backends.modelrollout import fields as f
from mlflow_kpigate.backends.modelrollout.spec import REQUEST_ACTIONS
from mlflow_kpigate.core.decision import Action, Verdict
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.state import Phase, Weights

CONDITION_STATUSES = ("True", "False", "Unknown")
REQUEST_RESULTS = ("Applied", "Rejected")


@dataclass(frozen=True)
class Condition:
    """One Kubernetes condition (the shape of ``metav1.Condition``)."""

    type: str
    status: str
    reason: str
    message: str
    last_transition_time: datetime
    observed_generation: int = 0

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> Condition:
        """Read one entry of ``status.conditions``."""
        when = f.timestamp(data, "lastTransitionTime", path, required=True)
        if when is None:  # timestamp() raises first; this tells the type checker
            raise UsageError(f"{f.at(path, 'lastTransitionTime')}: required")
        return cls(f.required(data, "type", path),
                   f.required(data, "status", path,
                                choices=CONDITION_STATUSES),
                   f.required(data, "reason", path),
                   f.string(data, "message", path) or "", when,
                   f.integer(data, "observedGeneration", path, default=0))

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        return {"type": self.type, "status": self.status,
                "observedGeneration": self.observed_generation,
                "lastTransitionTime": f.rfc3339(self.last_transition_time),
                "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class KpiSummary:
    """One KPI's evidence in a decision, reduced to what a ``kubectl get -o yaml`` reader
    needs; the full evidence stays in kpigate's audit log."""

    name: str
    verdict: Verdict
    role: str = ""
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    baseline_value: float | None = None
    candidate_value: float | None = None
    margin: str | None = None
    samples: int = 0
    samples_needed: int | None = None

    _NUMBERS = (("estimate", "estimate"), ("lower", "lower"), ("upper", "upper"),
                ("baseline_value", "baselineValue"), ("candidate_value", "candidateValue"))

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> KpiSummary:
        """Read one entry of ``status.lastDecision.kpis``."""
        verdict = f.required(data, "verdict", path,
                           choices=tuple(v.value for v in Verdict))
        needed = data.get("samplesNeeded")
        return cls(f.required(data, "name", path), Verdict(verdict),
                   f.string(data, "role", path) or "",
                   **{attr: f.number(data, key, path) for attr, key in cls._NUMBERS},
                   margin=f.string(data, "margin", path),
                   samples=f.integer(data, "samples", path, default=0),
                   samples_needed=None if needed is None
                   else f.integer(data, "samplesNeeded", path, default=0))

    def to_object(self) -> dict[str, Any]:
        """The JSON form; numbers without a value are left out (JSON has no NaN)."""
        out: dict[str, Any] = {"name": self.name, "verdict": self.verdict.value}
        if self.role:
            out["role"] = self.role
        for attr, key in self._NUMBERS:
            value = getattr(self, attr)
            if value is not None:
                out[key] = value
        if self.margin is not None:
            out["margin"] = self.margin
        out["samples"] = self.samples
        if self.samples_needed is not None:
            out["samplesNeeded"] = self.samples_needed
        return out


@dataclass(frozen=True)
class LastDecision:
    """The gate's last decision: action, reason, stage, time and per-KPI summaries."""

    action: Action
    reason: str
    stage: str = ""
    time: datetime | None = None
    timed_out: bool = False
    kpis: tuple[KpiSummary, ...] = ()

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> LastDecision:
        """Read ``status.lastDecision``."""
        action = f.required(data, "action", path,
                          choices=tuple(a.value for a in Action))
        kpis_path = f.at(path, "kpis")
        return cls(Action(action), f.string(data, "reason", path) or "",
                   f.string(data, "stage", path) or "", f.timestamp(data, "time", path),
                   f.boolean(data, "timedOut", path),
                   tuple(KpiSummary.from_object(k, f"{kpis_path}[{i}]")
                         for i, k in enumerate(f.items(data, "kpis", path))))

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"action": self.action.value, "reason": self.reason}
        if self.stage:
            out["stage"] = self.stage
        if self.time is not None:
            out["time"] = f.rfc3339(self.time)
        out["timedOut"] = self.timed_out
        out["kpis"] = [k.to_object() for k in self.kpis]
        return out


@dataclass(frozen=True)
class ForecastStatus:
    """The time-to-decision forecast: a summary line and absolute times when finite."""

    summary: str
    computed_at: datetime | None = None
    decision_time: datetime | None = None
    rollout_complete_time: datetime | None = None

    _TIMES = (("computed_at", "computedAt"), ("decision_time", "decisionTime"),
              ("rollout_complete_time", "rolloutCompleteTime"))

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> ForecastStatus:
        """Read ``status.forecast``."""
        return cls(f.required(data, "summary", path),
                   **{attr: f.timestamp(data, key, path) for attr, key in cls._TIMES})

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"summary": self.summary}
        for attr, key in self._TIMES:
            value = getattr(self, attr)
            if value is not None:
                out[key] = f.rfc3339(value)
        return out


@dataclass(frozen=True)
class ActionRecord:
    """The last ``spec.actionRequest`` handled: a request with this id is not redone."""

    id: str
    action: str
    result: str
    message: str = ""
    time: datetime | None = None

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> ActionRecord:
        """Read ``status.lastActionRequest``."""
        return cls(f.required(data, "id", path),
                   f.required(data, "action", path, choices=REQUEST_ACTIONS),
                   f.required(data, "result", path, choices=REQUEST_RESULTS),
                   f.string(data, "message", path) or "", f.timestamp(data, "time", path))

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"id": self.id, "action": self.action, "result": self.result}
        if self.message:
            out["message"] = self.message
        if self.time is not None:
            out["time"] = f.rfc3339(self.time)
        return out


@dataclass(frozen=True)
class ModelRolloutStatus:
    """The whole ``status`` of a ModelRollout."""

    observed_generation: int
    phase: Phase
    stage_index: int
    stage_name: str
    weights: Weights
    paused: bool = False
    evaluations: int = 0
    message: str = ""
    last_decision: LastDecision | None = None
    forecast: ForecastStatus | None = None
    last_action_request: ActionRecord | None = None
    conditions: tuple[Condition, ...] = ()

    @property
    def traffic(self) -> str:
        """The weights in words (the ``Traffic`` printer column)."""
        return self.weights.describe()

    def condition(self, type_: str) -> Condition | None:
        """The condition of ``type_``, if set."""
        return next((c for c in self.conditions if c.type == type_), None)

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str = "status") -> ModelRolloutStatus:
        """Read a ``status`` mapping; :class:`UsageError` naming the first bad field."""
        stage = f.section(data, "stage", path)
        weights = f.section(data, "weights", path)
        stage_path, w_path = f.at(path, "stage"), f.at(path, "weights")
        decision = f.mapping(data, "lastDecision", path)
        forecast = f.mapping(data, "forecast", path)
        request = f.mapping(data, "lastActionRequest", path)
        cond_path = f.at(path, "conditions")
        return cls(
            observed_generation=f.integer(data, "observedGeneration", path, default=0),
            phase=Phase(f.required(data, "phase", path,
                                 choices=tuple(p.value for p in Phase))),
            stage_index=f.integer(stage, "index", stage_path, default=0),
            stage_name=f.required(stage, "name", stage_path),
            weights=Weights(f.number(weights, "candidatePercent", w_path) or 0.0,
                            f.boolean(weights, "shadow", w_path),
                            f.boolean(weights, "candidateAttached", w_path, default=True),
                            f.boolean(weights, "baselineShadow", w_path)),
            paused=f.boolean(data, "paused", path),
            evaluations=f.integer(data, "evaluations", path, default=0),
            message=f.string(data, "message", path) or "",
            last_decision=None if decision is None
            else LastDecision.from_object(decision, f.at(path, "lastDecision")),
            forecast=None if forecast is None
            else ForecastStatus.from_object(forecast, f.at(path, "forecast")),
            last_action_request=None if request is None
            else ActionRecord.from_object(request, f.at(path, "lastActionRequest")),
            conditions=tuple(Condition.from_object(c, f"{cond_path}[{i}]")
                             for i, c in enumerate(f.items(data, "conditions", path))),
        )

    def to_object(self) -> dict[str, Any]:
        """The JSON form (what the operator PATCHes to ``…/status``)."""
        out: dict[str, Any] = {
            "observedGeneration": self.observed_generation,
            "phase": self.phase.value,
            "stage": {"index": self.stage_index, "name": self.stage_name},
            "weights": {"candidatePercent": self.weights.candidate_percent,
                        "shadow": self.weights.shadow,
                        "candidateAttached": self.weights.candidate_attached,
                        "baselineShadow": self.weights.baseline_shadow},
            "traffic": self.traffic,
            "paused": self.paused,
            "evaluations": self.evaluations,
            "message": self.message,
        }
        if self.last_decision is not None:
            out["lastDecision"] = self.last_decision.to_object()
        if self.forecast is not None:
            out["forecast"] = self.forecast.to_object()
        if self.last_action_request is not None:
            out["lastActionRequest"] = self.last_action_request.to_object()
        out["conditions"] = [c.to_object() for c in self.conditions]
        return out
