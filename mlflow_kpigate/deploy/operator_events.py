"""Kubernetes Events for a ModelRollout: every decision and action, for ``kubectl describe``.

The operator turns the rollout's audit records (:mod:`mlflow_kpigate.core.events`) into
Events on the ModelRollout. Event names are derived from what they report, so recording
is idempotent: an operator restarted (or a new leader) re-reads the audit log and its
creates of Events already made answer 409, which is skipped. Repeated *hold* decisions
with the same stage and reason are one Event whose ``count`` grows, as the API server's
own event aggregation does, so a long hold does not flood the namespace.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, cast

from mlflow_kpigate.core.events import (
    Aborted,
    AliasMoved,
    Created,
    EffectError,
    Evaluated,
    OperatorAction,
    ReadinessAbort,
    ReadinessTimeout,
    Recorded,
    StageReady,
)

log = logging.getLogger("kpigate.operator")
COMPONENT = "kpigate-operator"
_MESSAGE_MAX = 1024


@dataclass(frozen=True)
class EventNote:
    """One Event to record: type (Normal/Warning), reason (CamelCase), message, and the
    key that names it (``aggregate``: repeats of the key count up instead)."""

    type: str
    reason: str
    message: str
    key: str
    aggregate: bool = False


def note_for(record: Recorded, epoch: str = "") -> EventNote | None:
    """The Event an audit record becomes, or None for bookkeeping records. ``epoch`` names
    the rollout (sequence numbers restart with each rollout of the same ModelRollout)."""
    event, key = record.event, f"{epoch}r{record.seq}"
    if isinstance(event, Evaluated):
        decision = event.decision
        action = decision.action.value
        text = f"{event.stage}: {decision.reason}"
        if action == "hold":
            digest = hashlib.sha256(f"{event.stage}|{decision.reason}".encode()).hexdigest()
            return EventNote("Normal", "DecisionHold", text, f"{epoch}h{digest[:12]}", True)
        return EventNote("Warning" if action == "rollback" else "Normal",
                         f"Decision{action.capitalize()}", text, key)
    if isinstance(event, OperatorAction):
        text = f"{event.action} by {event.by}" + (f": {event.reason}" if event.reason else "")
        return EventNote("Normal", f"Operator{event.action.capitalize()}", text, key)
    if isinstance(event, Created):
        return EventNote("Normal", "RolloutStarted",
                         f"{event.candidate} against {event.baseline} at {event.stage}", key)
    if isinstance(event, StageReady):
        return EventNote("Normal", "StageReady", f"{event.stage} is served", key)
    if isinstance(event, Aborted):
        return EventNote("Warning", "Aborted", event.reason or "aborted", key)
    if isinstance(event, (ReadinessTimeout, ReadinessAbort)):
        return EventNote("Warning", "ReadinessTimeout", _text(event.body()), key)
    if isinstance(event, EffectError):
        return EventNote("Warning", "EffectError", _text(event.body()), key)
    if isinstance(event, AliasMoved):
        return EventNote("Normal", "AliasMoved", _text(event.body()), key)
    return None


def _text(body: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in body.items() if v not in (None, ""))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Creates Events on ModelRollouts through ``CoreV1Api`` (``events`` create/patch)."""

    def __init__(self, api_client: Any, identity: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.identity = identity

    def record(self, involved: Mapping[str, Any], note: EventNote) -> None:
        """Record ``note`` on the object ``involved`` (a ModelRollout as read)."""
        from kubernetes.client.exceptions import ApiException

        meta = involved["metadata"]
        namespace = meta["namespace"]
        name = f"{meta['name']}.{meta.get('uid', '')[:8]}.{note.key}".lower()
        now = _now()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "name": meta["name"], "namespace": namespace,
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": note.reason, "message": note.message[:_MESSAGE_MAX], "type": note.type,
            "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": COMPONENT, "host": self.identity},
            "reportingComponent": COMPONENT, "reportingInstance": self.identity,
        }
        try:
            self.core.create_namespaced_event(namespace, cast(Any, body),
                                             _request_timeout=(10, 30))
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        if not note.aggregate:
            return  # already recorded (by this operator before a restart, or another)
        current = self.core.read_namespaced_event(name, namespace, _request_timeout=(10, 30))
        self.core.patch_namespaced_event(
            name, namespace, {"count": int(current.count or 1) + 1, "lastTimestamp": now,
                              "message": note.message[:_MESSAGE_MAX]},
            _request_timeout=(10, 30))

    def record_all(self, involved: Mapping[str, Any], records: list[Recorded],
                   epoch: str = "") -> int:
        """Record the Events of ``records`` in order; the last sequence number handled."""
        last = -1
        for rec in records:
            note = note_for(rec, epoch)
            if note is not None:
                self.record(involved, note)
            last = rec.seq
        return last
