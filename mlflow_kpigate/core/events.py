"""The rollout's audit events, typed: one class per kind, one encoder, one decoder.

Every change of a rollout is saved with the event that explains it (in one transaction,
see the state stores), and things that change no state (an alert sent, an effect that
failed) are appended on their own. Stores keep an event as ``kind`` plus a JSON ``body``
(:meth:`AuditEvent.body`); :func:`decode` turns a stored one back into its class, and
:class:`Recorded` adds what the store assigned (sequence number, time, state revision).
Kinds this version does not know (written by a newer kpigate) decode as
:class:`OtherEvent`, so reading an audit log never fails on them.

The body is the audit log's public format (``audit.jsonl``, the ConfigMaps): keep keys
stable. ``weights``/``weights_percent`` on events that move traffic give the report its
traffic history; ``Evaluated`` carries the decision and the gate's inputs (see
:mod:`.evaluation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.state import RolloutState, Weights


def traffic_percent(weights: Weights) -> float:
    """The candidate's share of live responses (0 in shadow or when detached; 100 while
    baking, where only the baseline's copy is a shadow)."""
    if weights.shadow or not weights.candidate_attached:
        return 0.0
    return weights.candidate_percent


@dataclass(frozen=True)
class AuditEvent:
    """Base of every event: a ``kind`` and a JSON body built from the dataclass fields."""

    KIND: ClassVar[str] = ""
    #: Whether the event moves traffic (its body then has ``weights``/``weights_percent``).
    MOVES_TRAFFIC: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        """The event's kind as stored (``promote``, ``operator_pause``, ...)."""
        return self.KIND

    def body(self) -> dict[str, Any]:
        """The JSON body stored with the kind."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_body(cls, kind: str, body: Mapping[str, Any]) -> AuditEvent:
        """Rebuild from a stored body (fields missing in old records keep their defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in names})


@dataclass(frozen=True)
class _Traffic(AuditEvent):
    """An event after which the router serves ``weights``."""

    MOVES_TRAFFIC: ClassVar[bool] = True
    stage: str = ""
    weights: str = ""
    weights_percent: float = 0.0


@dataclass(frozen=True)
class Created(_Traffic):
    """The rollout was created at its first stage."""

    KIND: ClassVar[str] = "created"
    candidate: str = ""
    baseline: str = ""
    port: int | None = None
    namespace: str | None = None
    backend: str | None = None

    def body(self) -> dict[str, Any]:
        """Only the fields the backend has (port locally, namespace/backend on Seldon)."""
        return {k: v for k, v in super().body().items() if v is not None}


@dataclass(frozen=True)
class Evaluated(AuditEvent):
    """The gate decided; the kind is the action (``promote`` / ``hold`` / ``rollback``)."""

    evaluation: Evaluation
    stage: str = ""
    weights: str = ""
    weights_percent: float = 0.0

    MOVES_TRAFFIC: ClassVar[bool] = True
    KINDS: ClassVar[tuple[str, ...]] = tuple(a.value for a in Action)

    @property
    def kind(self) -> str:
        """The decision's action."""
        return self.evaluation.decision.action.value

    @property
    def decision(self) -> Decision:
        """The gate's decision."""
        return self.evaluation.decision

    def body(self) -> dict[str, Any]:
        """Decision at the top level (as audit logs have always had it), inputs beside."""
        decision = self.evaluation.decision
        inputs = self.evaluation.to_dict() if self.evaluation.policy_digest else None
        return {"stage_index": decision.stage_index, "stage": self.stage,
                "action": decision.action.value, "reason": decision.reason,
                "weights": self.weights, "weights_percent": self.weights_percent,
                "decision": decision.to_dict(), "evaluation": inputs}

    @classmethod
    def from_body(cls, kind: str, body: Mapping[str, Any]) -> AuditEvent:
        """Rebuild; records made before inputs were kept give a decision-only evaluation."""
        decision = Decision.from_dict(body["decision"])
        inputs = body.get("evaluation")
        evaluation = (Evaluation.from_dict(inputs, decision) if isinstance(inputs, Mapping)
                      else Evaluation.decision_only(0, math.nan, decision))
        return cls(evaluation, str(body.get("stage", "")), str(body.get("weights", "")),
                   float(body.get("weights_percent") or 0.0))

    @classmethod
    def after(cls, evaluation: Evaluation, stage: str, state: RolloutState) -> Evaluated:
        """The event for ``evaluation`` whose outcome is the saved ``state``."""
        return cls(evaluation, stage, state.weights.describe(), traffic_percent(state.weights))


@dataclass(frozen=True)
class OperatorAction(_Traffic):
    """An operator promoted, rolled back, paused or resumed the rollout."""

    action: str = ""
    by: str = "operator"
    reason: str = ""

    PREFIX: ClassVar[str] = "operator_"

    @property
    def kind(self) -> str:
        """``operator_<action>``."""
        return self.PREFIX + self.action

    @classmethod
    def from_body(cls, kind: str, body: Mapping[str, Any]) -> AuditEvent:
        """The action comes from the kind when an old body lacks it."""
        event = super().from_body(kind, body)
        assert isinstance(event, OperatorAction)
        if not event.action:
            return OperatorAction(**{**event.body(), "action": kind[len(cls.PREFIX):]})
        return event


@dataclass(frozen=True)
class Aborted(_Traffic):
    """The rollout ended without a gate decision (deleted, the router did not start)."""

    KIND: ClassVar[str] = "aborted"
    reason: str = ""


@dataclass(frozen=True)
class StageReady(AuditEvent):
    """The backend serves the stage's traffic; its samples count from now."""

    KIND: ClassVar[str] = "stage_ready"
    stage_index: int = 0
    stage: str = ""
    waited_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class ReadinessTimeout(AuditEvent):
    """The stage's traffic was not served in time; the rollout holds and alerts."""

    KIND: ClassVar[str] = "readiness_timeout"
    reason: str = ""
    alert: bool = True


@dataclass(frozen=True)
class ReadinessAbort(_Traffic):
    """The stage's traffic was not served in time and the policy says abort."""

    KIND: ClassVar[str] = "readiness_abort"
    reason: str = ""


@dataclass(frozen=True)
class EffectError(AuditEvent):
    """Side effects of a saved state failed; they are retried."""

    KIND: ClassVar[str] = "effect_error"
    errors: tuple[str, ...] = ()
    revision: int | None = None  # the state revision whose effects failed

    def body(self) -> dict[str, Any]:
        """Errors as a JSON list."""
        return {"errors": list(self.errors), "revision": self.revision}

    @classmethod
    def from_body(cls, kind: str, body: Mapping[str, Any]) -> AuditEvent:
        """Errors back to a tuple."""
        revision = body.get("revision")
        return cls(tuple(str(e) for e in body.get("errors", ())),
                   None if revision is None else int(revision))


@dataclass(frozen=True)
class AlertSent(AuditEvent):
    """An alert went out (``dedup_key`` keeps it from being sent twice)."""

    KIND: ClassVar[str] = "alert_sent"
    severity: str = ""
    dedup_key: str = ""


@dataclass(frozen=True)
class AliasMoved(AuditEvent):
    """The promote alias now points at the candidate."""

    KIND: ClassVar[str] = "alias_moved"
    alias: str = ""
    to_version: str = ""
    from_version: str | None = None


@dataclass(frozen=True)
class AliasRestored(AuditEvent):
    """The promote alias was moved back from the candidate to the previous version (a
    rollback, or an abort, after the bake had started)."""

    KIND: ClassVar[str] = "alias_restored"
    alias: str = ""
    to_version: str = ""
    from_version: str | None = None


@dataclass(frozen=True)
class Resumed(AuditEvent):
    """A restarted controller redoes the side effects of revision ``redo_effects_for``."""

    KIND: ClassVar[str] = "resumed"
    redo_effects_for: int = 0


@dataclass(frozen=True)
class ReportWritten(AuditEvent):
    """The rollout's report was written to ``path``."""

    KIND: ClassVar[str] = "report_written"
    path: str = ""


@dataclass(frozen=True)
class OutcomePublished(AuditEvent):
    """The outcome was written where MLflow users look: the description sections of the
    ``described`` versions (comma-separated ``NAME/VERSION``), the run's timeline image,
    and ``model_metrics`` (what the candidate's LoggedModel got, or why nothing)."""

    KIND: ClassVar[str] = "outcome_published"
    described: str = ""
    timeline: bool = False
    model_metrics: str = ""


@dataclass(frozen=True)
class RouterRestarted(AuditEvent):
    """The embedded router's process exited, or hung and was killed, and was started again
    (``reason`` says which; records from before it was kept have none)."""

    KIND: ClassVar[str] = "router_restarted"
    exit_code: int = 0
    reason: str = ""


@dataclass(frozen=True)
class ControllerRestarted(AuditEvent):
    """The controller's process exited before the rollout ended and was started again."""

    KIND: ClassVar[str] = "controller_restarted"
    exit_code: int = 0


@dataclass(frozen=True)
class SupervisorRestarted(AuditEvent):
    """The embedded deployment's supervisor was gone (killed, crashed, machine rebooted)
    and a new one took over its router and controller (``orphans``: the pids it found
    still running and replaced)."""

    KIND: ClassVar[str] = "supervisor_restarted"
    previous_pid: int = 0
    reason: str = ""
    orphans: tuple[int, ...] = ()

    def body(self) -> dict[str, Any]:
        """Orphans as a JSON list."""
        return {**super().body(), "orphans": list(self.orphans)}

    @classmethod
    def from_body(cls, kind: str, body: Mapping[str, Any]) -> AuditEvent:
        """Orphans back to a tuple."""
        return cls(int(body.get("previous_pid") or 0), str(body.get("reason", "")),
                   tuple(int(p) for p in body.get("orphans", ())))


@dataclass(frozen=True)
class ForecastWarning(AuditEvent):
    """The time-to-decision forecast says a stage cannot decide within its max_duration at
    the measured traffic (said once per rollout; no alert: nothing is wrong yet)."""

    KIND: ClassVar[str] = "forecast_warning"
    stage: str = ""
    reason: str = ""
    basis: str = ""


@dataclass(frozen=True)
class OtherEvent(AuditEvent):
    """A kind this version does not model (a newer kpigate's); kept as it was stored."""

    other_kind: str
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The stored kind."""
        return self.other_kind

    def body(self) -> dict[str, Any]:
        """The stored body."""
        return dict(self.data)


_BY_KIND: dict[str, type[AuditEvent]] = {
    cls.KIND: cls for cls in (Created, Aborted, StageReady, ReadinessTimeout, ReadinessAbort,
                              EffectError, AlertSent, AliasMoved, AliasRestored, Resumed,
                              ReportWritten, OutcomePublished, ForecastWarning,
                              RouterRestarted, ControllerRestarted, SupervisorRestarted)
}


def decode(kind: str, body: Mapping[str, Any]) -> AuditEvent:
    """The typed event for a stored ``kind`` and ``body``."""
    if kind in Evaluated.KINDS and isinstance(body.get("decision"), Mapping):
        return Evaluated.from_body(kind, body)
    if kind.startswith(OperatorAction.PREFIX):
        return OperatorAction.from_body(kind, body)
    cls = _BY_KIND.get(kind)
    if cls is None:
        return OtherEvent(kind, {k: v for k, v in body.items() if k != "revision"})
    return cls.from_body(kind, body)


@dataclass(frozen=True)
class Recorded:
    """An event as a store returns it: sequence number, time, the typed event, and the state
    revision it belongs to (the one saved with it; for an event appended on its own, the
    revision it names, if any)."""

    seq: int
    ts: float
    event: AuditEvent
    revision: int | None = None

    @property
    def kind(self) -> str:
        """The event's kind."""
        return self.event.kind

    def to_dict(self) -> dict[str, Any]:
        """The audit log line: ``seq``, ``ts``, ``kind``, ``revision`` (if any), the body."""
        head: dict[str, Any] = {"seq": self.seq, "ts": self.ts, "kind": self.kind}
        if self.revision is not None:
            head["revision"] = self.revision
        return {**head, **self.event.body()}

    @classmethod
    def from_stored(cls, seq: int, ts: float, kind: str, body: Mapping[str, Any]) -> Recorded:
        """From a store's row: the body may carry the ``revision`` it was saved with."""
        revision = body.get("revision")
        return cls(int(seq), float(ts), decode(kind, body),
                   None if revision is None else int(revision))
