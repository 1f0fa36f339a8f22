"""Reconcile one ModelRollout: actions in, worker kept running, status and Events out.

:meth:`RolloutSync.sync` is idempotent and reads everything it decides on from the cluster
(the ModelRollout, the rollout's ConfigMaps), so it can run at any time, any number of
times, on any operator that leads:

1. the operator's requests on the spec become operator actions committed on the rollout's
   state (compare-and-set, :func:`~.operator.commit_operator_action`): ``spec.paused``
   pauses or resumes; a ``spec.actionRequest`` whose id is not the last handled one
   promotes or rolls back, once — the id is recorded in the audit event (``by``), so a
   request is never applied twice even if the operator dies before the status says so.
   The worker applies the action's effects (traffic, MLflow) on its next tick;
2. a worker runs while the rollout has work: none started yet, unfinished, or a new one
   asked for (the spec's model changed since the rollout in the ConfigMaps started);
3. the status is rewritten from the state (:mod:`.operator_status`) when it changed, and
   every new audit record becomes an Event (:mod:`.operator_events`).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.modelrollout import ModelRollout, ModelRolloutStatus
from mlflow_kpigate.backends.modelrollout import status_from_state as _status_from_state
from mlflow_kpigate.backends.modelrollout.resource import readable_status
from mlflow_kpigate.backends.modelrollout.status import ActionRecord
from mlflow_kpigate.backends.seldon.cluster import Cluster
from mlflow_kpigate.backends.seldon.kinds import MODEL_ROLLOUT
from mlflow_kpigate.core.atomic_files import write_text_atomic
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.events import OperatorAction
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy.modelrollout_request import model_digest
from mlflow_kpigate.deploy.operator import commit_operator_action
from mlflow_kpigate.deploy.operator_events import EventNote, EventRecorder
from mlflow_kpigate.deploy.operator_status import (
    failed_status,
    merge_patch,
    pending_status,
    with_request,
)
from mlflow_kpigate.deploy.operator_worker import saved_digest
from mlflow_kpigate.deploy.operator_workers import Key, WorkerPool, private_dir, worker_env
from mlflow_kpigate.deploy.seldon_rollout import ClusterRollout, workdir

log = logging.getLogger("kpigate.operator")
_ENV_NAME = "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789"


def request_by(request_id: str) -> str:
    """The ``by`` of the audit event of ``spec.actionRequest`` ``request_id``."""
    return f"ModelRollout actionRequest {request_id}"


class RolloutSync:
    """Reconciles ModelRollouts (see the module docstring)."""

    def __init__(self, api_client: Any, pool: WorkerPool, recorder: EventRecorder,
                 state_dir: Path | None,
                 observe: Callable[[Key, RolloutState | None], None] | None = None) -> None:
        self.api_client = api_client
        self.pool = pool
        self.recorder = recorder
        self.state_dir = state_dir
        self.observe = observe or (lambda _k, _s: None)
        self._evented: dict[Key, tuple[str, int]] = {}

    def forget(self, key: Key) -> None:
        """The ModelRollout is gone: stop its worker, drop what was kept for it."""
        self.pool.stop(key)
        self._evented.pop(key, None)
        self.observe(key, None)

    def sync(self, namespace: str, name: str) -> None:
        """Reconcile ModelRollout ``namespace/name`` once."""
        key = (namespace, name)
        cluster = Cluster(self.api_client, namespace)
        mrs = cluster.objects(MODEL_ROLLOUT)
        obj = mrs.get(name)
        if obj is None:
            self.forget(key)
            return
        generation = int(obj["metadata"].get("generation") or 0)
        previous = readable_status(obj)
        rollout = ClusterRollout(cluster, name)
        state = rollout.store.load()
        now = datetime.now(timezone.utc)
        try:
            mr = ModelRollout.from_object(obj)
        except UsageError as exc:
            self._event(obj, EventNote("Warning", "InvalidSpec", str(exc),
                                       f"invalid-{generation}"))
            if state is not None and not state.phase.terminal:
                self.pool.ensure(key, generation, self._env(cluster, None))
            base = self._state_status(rollout, state, generation, now, previous)
            self._write(mrs, obj, failed_status(base, generation, "InvalidSpec", str(exc),
                                                now, previous))
            return
        saved = saved_digest(rollout) if state is not None else None
        digest = model_digest(mr.spec)
        record = None
        if state is not None and not state.phase.terminal:
            state, record = self._actions(obj, rollout, mr, state, previous, now)
        elif mr.spec.action_request is not None:
            record = self._stale_request(mr, previous, now)
        asked_anew = state is None or (state.phase.terminal and saved != digest)
        wanted = asked_anew or state is None or not state.phase.terminal or \
            state.effects_pending
        failure = None
        if wanted:
            try:
                env = self._env(cluster, mr)
            except UsageError as exc:
                failure = str(exc)
            else:
                failure = self.pool.ensure(key, generation, env).failed
        else:
            self.pool.stop(key)
        current = None if asked_anew else \
            self._state_status(rollout, state, generation, now, previous)
        status = with_request(current or pending_status(
            generation, "starting the rollout the spec asks for", now, previous), record)
        if failure is not None:
            self._event(obj, EventNote("Warning", "WorkerFailed", failure,
                                       f"failed-{generation}"))
            status = failed_status(status, generation, "WorkerFailed", failure, now, previous)
        self._write(mrs, obj, status)
        if state is not None and not asked_anew:
            self._events(key, obj, rollout, state)
        self.observe(key, None if asked_anew else state)

    # -- actions -------------------------------------------------------------------------------
    def _actions(self, obj: dict[str, Any], rollout: ClusterRollout, mr: ModelRollout,
                 state: RolloutState, previous: ModelRolloutStatus | None, now: datetime
                 ) -> tuple[RolloutState, ActionRecord | None]:
        directory = self._scratch(mr.namespace, mr.name)
        if mr.spec.paused != state.paused:
            policy, _settings = rollout.materialize(directory)
            action = "pause" if mr.spec.paused else "resume"
            try:
                state = commit_operator_action(rollout.store, policy, mr.name, action,
                                               "ModelRollout spec.paused")
            except UsageError as exc:
                self._event(obj, EventNote("Warning", "ActionRejected", str(exc),
                                           f"paused-{mr.generation}"))
        request = mr.spec.action_request
        last = previous.last_action_request if previous else None
        if request is None or (last is not None and last.id == request.id):
            return state, None
        by = request_by(request.id)
        if any(isinstance(r.event, OperatorAction) and r.event.by == by
               for r in rollout.store.events()):
            # Applied by an operator that died before recording it in the status.
            return state, ActionRecord(request.id, request.action, "Applied", state.reason, now)
        policy, _settings = rollout.materialize(directory)
        try:
            state = commit_operator_action(rollout.store, policy, mr.name, request.action, by)
        except UsageError as exc:
            return state, ActionRecord(request.id, request.action, "Rejected", str(exc), now)
        return state, ActionRecord(request.id, request.action, "Applied", state.reason, now)

    @staticmethod
    def _stale_request(mr: ModelRollout, previous: ModelRolloutStatus | None,
                       now: datetime) -> ActionRecord | None:
        request = mr.spec.action_request
        last = previous.last_action_request if previous else None
        if request is None or (last is not None and last.id == request.id):
            return None
        return ActionRecord(request.id, request.action, "Rejected",
                            "no rollout is running: nothing to "
                            f"{request.action}", now)

    # -- status and events ---------------------------------------------------------------------
    def _state_status(self, rollout: ClusterRollout, state: RolloutState | None,
                      generation: int, now: datetime, previous: ModelRolloutStatus | None
                      ) -> ModelRolloutStatus | None:
        if state is None:
            return None
        try:
            policy, _settings = rollout.materialize(
                self._scratch(rollout.cluster.namespace, rollout.name))
            names: tuple[str, ...] = tuple(s.describe() for s in policy.stages)
        except UsageError:
            names = ()
        return _status_from_state(state, generation=generation, now=now, previous=previous,
                                  stage_names=names)

    def _write(self, mrs: Any, obj: dict[str, Any], status: ModelRolloutStatus) -> None:
        patch = merge_patch(obj.get("status"), status.to_object())
        if patch:
            mrs.merge_patch_status(obj["metadata"]["name"], patch)

    def _event(self, obj: dict[str, Any], note: EventNote) -> None:
        try:
            self.recorder.record(obj, note)
        except Exception as exc:
            log.warning("could not record Event %s on %s: %s", note.reason,
                        obj["metadata"].get("name"), exc)

    def _events(self, key: Key, obj: dict[str, Any], rollout: ClusterRollout,
                state: RolloutState) -> None:
        epoch = (state.rollout_run_id or str(int(state.created_at)))[:8]
        seen_epoch, seen = self._evented.get(key, ("", 0))
        since = seen if seen_epoch == epoch else 0
        records = rollout.store.events(since)
        if not records:
            return
        try:
            last = self.recorder.record_all(obj, records, epoch)
        except Exception as exc:
            log.warning("could not record Events on %s/%s: %s", *key, exc)
            return
        self._evented[key] = (epoch, max(last, since))

    def _scratch(self, namespace: str, name: str) -> Path:
        """The operator's own copy of a rollout's policy: never the worker's directory."""
        return workdir(namespace, name, self.state_dir) / "operator"

    # -- the worker's environment --------------------------------------------------------------
    def _env(self, cluster: Cluster, mr: ModelRollout | None) -> dict[str, str]:
        """The worker's environment from the ModelRollout's Secrets (read each time, so a
        rotated Secret reaches the next worker)."""
        if mr is None:  # an invalid spec: the worker resumes with what it was started with
            return dict(os.environ)
        credentials: dict[str, str] = {}
        if mr.spec.tracking_secret:
            credentials = {k: v for k, v in _secret(cluster, mr.spec.tracking_secret).items()
                           if k and set(k) <= set(_ENV_NAME) and not k[0].isdigit()}
        files: dict[str, Path] = {}
        if mr.spec.collector_token_secret:
            tokens = _secret(cluster, mr.spec.collector_token_secret)
            where = private_dir(workdir(mr.namespace, mr.name, self.state_dir) / "tokens")
            for scope in ("ingest", "operator"):
                if tokens.get(scope):
                    path = where / scope
                    # Atomically: a running worker may read it at any time.
                    write_text_atomic(path, tokens[scope].strip() + "\n", 0o600)
                    files[scope] = path
        return worker_env(os.environ, mr.spec.tracking_uri, credentials, files)


def _secret(cluster: Cluster, name: str) -> dict[str, str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        secret = client.CoreV1Api(cluster.api_client).read_namespaced_secret(
            name, cluster.namespace, _request_timeout=(10, 30))
    except ApiException as exc:
        raise UsageError(f"Secret {cluster.namespace}/{name}: cannot read it (HTTP "
                         f"{exc.status} {exc.reason}); create it or grant the operator "
                         "get on it") from None
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


