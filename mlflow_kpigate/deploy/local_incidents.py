"""The supervisor's view of its deployment's store, made safe to use in its loop, and its
alerts.

* :meth:`Incidents.state` reads the rollout state; a store that fails (an SQLite error, a
  corrupted or unreadable ``state.db``, a full disk) gives ``None`` and one log line per
  failing spell, never an exception: the supervisor goes on keeping its processes alive.
* :meth:`Incidents.record` appends an audit event (a restart) and sends an alert through
  the policy's notifier (``alerts`` in the policy, the channels the controller uses).
  An event the store cannot take yet is kept in memory (up to ``MAX_PENDING``) and
  written, in order, once the store works again (:meth:`Incidents.retry`, every 2 s).
  Alerts go out on a thread of their own (the notifiers retry for seconds) with
  ``AlertSent`` recorded once delivered; at most one per kind of restart every
  ``ALERT_EVERY_S`` (a crash loop would page every second), the next one saying how
  many were not sent.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.core.events import AlertSent, AuditEvent
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.rollout.ports import Notifier

__all__ = ["ALERT_EVERY_S", "Incidents"]

log = logging.getLogger("kpigate.supervisor")

ALERT_EVERY_S = 300.0
MAX_PENDING = 1000
RETRY_EVERY_S = 2.0
SEVERITY = "warning"


class Incidents:
    """Store reads, audit events and alerts of one deployment's supervisor."""

    def __init__(self, directory: Path, notifier: Notifier | None = None) -> None:
        self.directory = directory
        self._store: RolloutStore | None = None
        self._pending: list[AuditEvent] = []
        self._lock = threading.Lock()
        self._failing = False
        self._notifier = notifier
        self._notifier_loaded = notifier is not None
        self._last_alert: dict[str, float] = {}
        self._unsent: dict[str, int] = {}
        self._next_retry = 0.0

    # -- the store -------------------------------------------------------------------------
    def state(self) -> RolloutState | None:
        """The saved rollout state; None if there is none or the store fails."""
        try:
            state = self._open().load()
        except Exception as exc:  # any store failure must not end the loop
            self._failed("reading the rollout state", exc)
            return None
        self._flush()
        return state

    def record(self, event: AuditEvent, summary: str) -> None:
        """Append ``event`` to the audit log (now or once the store works) and alert."""
        with self._lock:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(event)
            else:
                log.error("audit event %s lost: %d events wait for the store", event.kind,
                          MAX_PENDING)
        self._flush()
        self._alert(event.kind, summary)

    @property
    def pending(self) -> int:
        """How many audit events wait for the store."""
        with self._lock:
            return len(self._pending)

    def retry(self, now: float) -> None:
        """Try again to write the events that wait for the store (call it every tick; it
        tries every ``RETRY_EVERY_S``)."""
        if self.pending and now >= self._next_retry:
            self._next_retry = now + RETRY_EVERY_S
            self._flush()

    def _open(self) -> RolloutStore:
        if self._store is None:
            self._store = RolloutStore(self.directory)
        return self._store

    def _flush(self) -> None:
        with self._lock:
            while self._pending:
                try:
                    self._open().append(self._pending[0])
                except Exception as exc:
                    self._failed(f"recording {self._pending[0].kind}", exc)
                    return
                self._pending.pop(0)
        if self._failing:
            self._failing = False
            log.info("the state store works again")

    def _failed(self, what: str, exc: Exception) -> None:
        self._store = None  # reopen next time (the file may have been replaced)
        if not self._failing:
            self._failing = True
            log.error("the state store failed while %s (%s: %s); supervising on, "
                      "retrying", what, type(exc).__name__, str(exc).splitlines()[0][:300]
                      if str(exc) else "")

    # -- alerts ----------------------------------------------------------------------------
    def _load_notifier(self, state: RolloutState | None) -> Notifier | None:
        if self._notifier_loaded or state is None:
            return self._notifier
        from mlflow_kpigate.notify import notifier_from_policy
        from mlflow_kpigate.policy import load_policy

        self._notifier_loaded = True
        try:
            self._notifier = notifier_from_policy(load_policy(state.policy_file))
        except KpigateError as exc:
            log.error("alerts are off: %s", str(exc).splitlines()[0])
        return self._notifier

    def _alert(self, kind: str, summary: str) -> None:
        state = self.state()
        notifier = self._load_notifier(state)
        if notifier is None:
            return
        now = time.monotonic()
        last = self._last_alert.get(kind)
        if last is not None and now - last < ALERT_EVERY_S:
            self._unsent[kind] = self._unsent.get(kind, 0) + 1
            return
        self._last_alert[kind] = now
        unsent = self._unsent.pop(kind, 0)
        if unsent:
            summary += f" ({unsent} more since the last alert)"
        name = state.name if state is not None else self.directory.name
        details: dict[str, Any] = {"deployment": name, "event": kind}
        if state is not None:
            details.update(model=state.model_name, candidate_version=state.candidate_version,
                           baseline_version=state.baseline_version,
                           phase=state.phase.value, weights=state.weights.describe())
        key = f"kpigate/{name}/{kind}/{int(time.time())}"
        threading.Thread(target=self._send, name="kpigate-alert", daemon=True,
                         args=(notifier, f"kpigate {name}: {summary}", key, details)).start()

    def _send(self, notifier: Notifier, summary: str, key: str,
              details: dict[str, Any]) -> None:
        try:
            notifier.alert(severity=SEVERITY, summary=summary[:1000], dedup_key=key,
                           details=details)
        except Exception as exc:  # an alert channel down is logged only
            log.error("alert %s not delivered: %s", key, exc)
            return
        with self._lock:
            self._pending.append(AlertSent(SEVERITY, key))
        self._flush()
