"""Seldon rollouts run by the in-cluster operator: the ModelRollout side of the deployer.

With ``-C operator=true`` (or ``auto`` when the cluster serves the CRD) ``create`` applies
a ModelRollout instead of running a controller: the operator (``kpigate operator``) starts
and drives the rollout; ``-C wait=true`` follows the resource's status to the end and exits
with the same codes as the embedded backend. Everything a user changes goes through the
resource, so through Kubernetes RBAC: promote and rollback are a ``spec.actionRequest``
with a fresh id, pause and resume ``spec.paused``; the operator records the outcome in
``status.lastActionRequest``, which :meth:`OperatedRollouts.steer` waits for.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from mlflow_kpigate.backends.modelrollout import ModelRollout, ModelRolloutStatus
from mlflow_kpigate.backends.modelrollout.resource import readable_status
from mlflow_kpigate.backends.modelrollout.spec import ModelSpec
from mlflow_kpigate.backends.seldon.cluster import Cluster
from mlflow_kpigate.backends.seldon.cluster_errors import ResourceNotServed
from mlflow_kpigate.backends.seldon.kinds import MODEL_ROLLOUT
from mlflow_kpigate.core.errors import KpigateError, UsageError

#: How long ``create -C wait=true`` and the actions wait for an operator to show up.
OPERATOR_GRACE_S = 60.0
POLL_S = 1.0


def served(cluster: Cluster) -> bool:
    """Whether the cluster serves ModelRollouts in this namespace (the CRD is installed)."""
    try:
        cluster.objects(MODEL_ROLLOUT).list()
    except ResourceNotServed:
        return False
    return True


class OperatedRollouts:
    """The ModelRollouts of one namespace, as the deployer reads and writes them."""

    def __init__(self, cluster: Cluster,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.objects = cluster.objects(MODEL_ROLLOUT)
        self.sleep = sleep
        self.clock = clock

    def get(self, name: str) -> dict[str, Any] | None:
        """The ModelRollout ``name`` (None: none)."""
        try:
            return self.objects.get(name)
        except ResourceNotServed:
            return None

    def names(self) -> list[str]:
        """Every ModelRollout's name."""
        try:
            return [o["metadata"]["name"] for o in self.objects.list()]
        except ResourceNotServed:
            return []

    def apply(self, obj: dict[str, Any], running: bool) -> tuple[dict[str, Any], str]:
        """Create ``obj``, or update the existing one's model; (stored object, what was
        done). A different model while the current rollout runs is refused (``update``
        semantics: one rollout at a time)."""
        name = obj["metadata"]["name"]
        current = self.get(name)
        if current is None:
            return self.objects.create(obj), "created"
        wanted = ModelSpec.from_object(obj["spec"]["model"], "spec.model")
        have = ModelSpec.from_object(current["spec"]["model"], "spec.model")
        if wanted == have:
            return current, "unchanged"
        if running:
            raise UsageError(f"deployment {name!r} already runs a rollout of {have.name} "
                             f"({_ref(have)}); wait for it to end, roll it back, or delete it "
                             "first")
        spec = {**current["spec"], **obj["spec"]}
        spec.pop("actionRequest", None)
        replaced = {**current, "spec": spec}
        return self.objects.replace(replaced), "updated"

    def wait(self, name: str, generation: int, timeout: float | None,
             say: Callable[[str], None]) -> ModelRolloutStatus | None:
        """Follow the status until the rollout of ``generation`` ends (or ``timeout``);
        the last status seen. ``KpigateError`` when no operator acts within a minute."""
        start = self.clock()
        last_reason = None
        seen: ModelRolloutStatus | None = None
        while True:
            obj = self.get(name)
            if obj is None:
                raise KpigateError(f"ModelRollout {self.cluster.namespace}/{name} was deleted "
                                   "while waiting for it")
            status = readable_status(obj)
            if status is not None and status.observed_generation >= generation:
                seen = status
                decision = status.last_decision
                if decision is not None and decision.reason != last_reason:
                    last_reason = decision.reason
                    say(f"kpigate: [{decision.action.value}] {decision.reason}")
                if status.phase.terminal:
                    return status
            elif self.clock() - start > OPERATOR_GRACE_S:
                raise KpigateError(
                    f"no kpigate operator acted on ModelRollout {self.cluster.namespace}/"
                    f"{name} within {OPERATOR_GRACE_S:.0f}s; install it (deploy/kubernetes) "
                    "or run the controller here with -C operator=false")
            if timeout is not None and self.clock() - start > timeout:
                return seen
            self.sleep(POLL_S)

    def steer(self, name: str, action: str, who: str) -> ModelRolloutStatus | None:
        """Ask the operator to promote / roll back / pause / resume; the status once it
        has (``UsageError`` if it refused)."""
        if self.get(name) is None:
            raise UsageError(f"no ModelRollout named {name!r} in namespace "
                             f"{self.cluster.namespace}")
        if action in ("pause", "resume"):
            self.objects.merge_patch(name, {"spec": {"paused": action == "pause"}})
            return self._until(name, lambda s: s.paused == (action == "pause")
                               or s.phase.terminal, action)
        request_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.objects.merge_patch(name, {"spec": {"actionRequest": {
            "id": request_id, "action": action, "reason": f"requested by {who}"[:200]}}})
        status = self._until(name, lambda s: s.last_action_request is not None
                             and s.last_action_request.id == request_id, action)
        record = status.last_action_request if status is not None else None
        if record is not None and record.result == "Rejected":
            raise UsageError(f"{name}: {record.message}")
        return status

    def _until(self, name: str, done: Callable[[ModelRolloutStatus], bool],
               action: str) -> ModelRolloutStatus:
        start = self.clock()
        while True:
            obj = self.get(name)
            status = readable_status(obj) if obj is not None else None
            if status is not None and done(status):
                return status
            if self.clock() - start > OPERATOR_GRACE_S:
                raise KpigateError(
                    f"{name}: the {action} request is in the ModelRollout's spec, but no "
                    f"kpigate operator carried it out within {OPERATOR_GRACE_S:.0f}s; it "
                    "will be carried out when the operator runs")
            self.sleep(POLL_S / 4)

    def delete(self, name: str) -> bool:
        """Delete the ModelRollout (its Seldon objects and ConfigMaps go with it: they are
        owned by it); False if there was none."""
        try:
            return self.objects.delete(name, propagation="Foreground")
        except ResourceNotServed:
            return False

    @staticmethod
    def read(obj: Mapping[str, Any]) -> ModelRollout:
        """The ModelRollout of ``obj``."""
        return ModelRollout.from_object(obj)

    @staticmethod
    def status_of(obj: Mapping[str, Any]) -> ModelRolloutStatus | None:
        """``obj``'s status, if it has a valid one."""
        return readable_status(obj)


def _ref(model: ModelSpec) -> str:
    ref = model.candidate
    return f"version {ref.version}" if ref.version else f"alias {ref.alias}"


def create_through_operator(cluster: Cluster, name: str, model_uri: str, cfg: Any,
                            say: Callable[[str], None]) -> ModelRolloutStatus | None:
    """``create`` in operator mode: check what can be checked here (the policy, the
    registry versions), apply the ModelRollout, and with ``-C wait=true`` follow it to the
    end (the last status seen; None without waiting)."""
    import tempfile
    from pathlib import Path

    from mlflow_kpigate.deploy.inputs import freeze_policy, resolve_versions, tracking_uri
    from mlflow_kpigate.deploy.modelrollout_request import modelrollout_for
    from mlflow_kpigate.deploy.seldon_rollout import ClusterRollout, check_stages
    from mlflow_kpigate.metrics.prometheus import check_policy
    from mlflow_kpigate.registry import Registry

    with tempfile.TemporaryDirectory(prefix="kpigate-policy-") as scratch:
        policy, _file = freeze_policy(cfg, Path(scratch))
    check_stages(policy)
    check_policy(policy, cfg.seldon_version)
    uri = tracking_uri()
    candidate, baseline = resolve_versions(Registry(uri), model_uri, cfg.baseline)
    obj = modelrollout_for(name, cluster.namespace, model_uri, cfg, policy.raw, uri)
    rollouts = OperatedRollouts(cluster)
    state = ClusterRollout(cluster, name).store.load()
    stored, done = rollouts.apply(obj, running=state is not None and not state.phase.terminal)
    generation = int(stored["metadata"].get("generation") or 1)
    say(f"kpigate: ModelRollout {cluster.namespace}/{name} {done}: {candidate.uri} against "
        f"{baseline.uri}; the kpigate operator runs it (kubectl get modelrollout {name} -n "
        f"{cluster.namespace})")
    if not cfg.wait:
        return None
    return rollouts.wait(name, generation, cfg.wait_timeout, say)


def operated_pending(obj: Mapping[str, Any], state: Any) -> dict[str, Any] | None:
    """``get_deployment``'s view of a ModelRollout whose rollout is not in the ConfigMaps
    yet (or not the one its spec asks for): from its status. None when the ConfigMaps
    describe it."""
    status = readable_status(obj)
    if state is not None and status is not None and status.phase.value != "pending":
        return None
    mr = ModelRollout.from_object(obj)
    message = status.message if status is not None else "waiting for the kpigate operator"
    return {"backend": f"seldon-v{mr.spec.backend.seldon_version}", "status": "pending",
            "phase": "pending", "paused": mr.spec.paused, "stage_index": 0,
            "weights": "baseline 100%",
            "candidate": mr.spec.model.candidate.model_uri(mr.spec.model.name),
            "baseline": (mr.spec.model.baseline.model_uri(mr.spec.model.name)
                         if mr.spec.model.baseline else f"@{mr.spec.model.promote_alias}"),
            "reason": message, "evaluations": 0, "rollout_run_id": None, "endpoint": None,
            "operator": True}
