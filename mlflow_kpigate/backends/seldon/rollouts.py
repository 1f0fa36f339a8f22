"""Rollouts on Seldon Core: create, steer, inspect, delete, and the in-cluster controller.

The MLflow target ``kpigate:/seldon/NAMESPACE`` is a thin adapter over these functions,
as ``kpigate`` / ``kpigate:/local`` is over :mod:`mlflow_kpigate.rollout.manager`.

What lives in the cluster (all labelled ``app.kubernetes.io/managed-by=kpigate`` and
``kpigate.io/rollout=NAME``, and owned by the SeldonDeployment or Experiment, so deleting
it deletes them):

* the SeldonDeployment ``NAME`` (v1) or Models ``NAME-baseline``/``NAME-candidate`` and
  the Experiment ``NAME`` (v2);
* ConfigMap ``NAME-kpigate-state`` (+ ``NAME-kpigate-audit-NNNN``): the rollout state and
  its audit log (:class:`.state_store.ClusterStore`), the committed truth a restarted
  controller resumes from;
* ConfigMap ``NAME-kpigate-policy``: the frozen policy, the registry baseline KPIs and the
  target settings, so any controller (a restarted Job, an operator's laptop) decides and
  acts exactly as the one that started the rollout.

The controller runs where ``create`` runs: in this process with ``-C wait=true`` (the
Kubernetes Job of examples/k8s), otherwise as a background process on this machine.
Re-running the same ``create`` for an unfinished rollout of the same versions resumes it,
which is what a restarted Job does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from mlflow_kpigate.backends.local.state_store import state_dir
from mlflow_kpigate.backends.seldon.cluster import (
    CONFIG_MAP,
    SELDON_DEPLOYMENT,
    SELDON_EXPERIMENT,
    SELDON_MODEL,
    Cluster,
    managed_labels,
    owner_reference,
)
from mlflow_kpigate.backends.seldon.manifests import (
    ModelRef,
    seldon_deployment,
    v2_experiment,
    v2_model_name,
    v2_models,
    whole_percent,
)
from mlflow_kpigate.backends.seldon.router import SeldonTraffic
from mlflow_kpigate.backends.seldon.state_store import ClusterStore, state_configmap_name
from mlflow_kpigate.backends.seldon.target import SeldonTarget, parse_target_uri
from mlflow_kpigate.backends.seldon.webhook import check_webhook_rules
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.deploy.config import DeploymentConfig, parse_config
from mlflow_kpigate.policy import Policy, load_policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.controller import (
    Controller,
    load_registry_baseline,
    save_registry_baseline,
)
from mlflow_kpigate.rollout.effects import Effects

log = logging.getLogger("kpigate.seldon")

FLAVOR = "python_function"
POLICY_KEY = "policy.yaml"
BASELINE_KEY = "baseline_kpis.json"
SETTINGS_KEY = "settings.json"
#: Events that end a stage's traffic window (the next stage, or the end of the rollout).
_STAGE_ENDING = ("promote", "operator_promote", "rollback", "operator_rollback", "aborted",
                 "readiness_abort")


def policy_configmap_name(name: str) -> str:
    """The ConfigMap holding a rollout's frozen policy, baseline KPIs and settings."""
    return f"{name}-kpigate-policy"


def workdir(namespace: str, name: str, root: Path | None = None) -> Path:
    """This machine's scratch directory for a cluster rollout (policy copy, report, logs)."""
    return state_dir(root) / "seldon" / namespace / name


def _target(namespace: str, name: str, cfg: DeploymentConfig) -> SeldonTarget:
    return SeldonTarget(namespace=namespace, name=name, seldon_version=cfg.seldon_version,
                        env_secret=cfg.env_secret, collector_url=cfg.collector_url,
                        gateway_url=cfg.gateway_url, replicas=cfg.replicas)


def _check_stages(policy: Policy) -> None:
    for i, stage in enumerate(policy.stages):
        try:
            whole_percent(stage.traffic)
        except (UsageError, ValueError) as exc:
            raise UsageError(f"stages[{i}]: {stage.traffic:g}% cannot be routed by Seldon, "
                             f"whose traffic weights are whole percents ({exc})") from None


def _stage_windows(events: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Each stage's served interval from the audit log: ``stage_ready`` to its end."""
    from mlflow_kpigate.metrics.prometheus import StageWindow

    windows: list[StageWindow] = []
    open_stage: tuple[int, float] | None = None
    for ev in events:
        kind = ev.get("kind")
        if kind == "stage_ready":
            open_stage = (int(ev["stage_index"]), float(ev["ts"]))
        elif kind in _STAGE_ENDING and open_stage is not None:
            windows.append(StageWindow(open_stage[0], open_stage[1], float(ev["ts"])))
            open_stage = None
    if open_stage is not None:
        windows.append(StageWindow(open_stage[0], open_stage[1], None))
    return windows


# -- the cluster's view of one rollout ---------------------------------------------------------
class ClusterRollout:
    """One rollout's objects in a namespace: store, settings, policy, router."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.configmaps = cluster.objects(CONFIG_MAP)
        self.store = ClusterStore(self.configmaps, name)

    def settings(self) -> dict[str, Any]:
        """The settings, policy text and baseline KPIs saved at creation."""
        cm = self.configmaps.get(policy_configmap_name(self.name))
        if cm is None:
            raise UsageError(f"no kpigate rollout named {self.name!r} in namespace "
                             f"{self.cluster.namespace} (ConfigMap "
                             f"{policy_configmap_name(self.name)} not found)")
        data = cm.get("data") or {}
        return {"settings": json.loads(data.get(SETTINGS_KEY, "{}")),
                "policy": data.get(POLICY_KEY, ""),
                "baseline": data.get(BASELINE_KEY, "")}

    def materialize(self, directory: Path) -> tuple[Policy, dict[str, Any]]:
        """Write the frozen policy and baseline KPIs into ``directory``; load the policy."""
        saved = self.settings()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / POLICY_KEY).write_text(saved["policy"])
        if saved["baseline"]:
            (directory / BASELINE_KEY).write_text(saved["baseline"])
        return load_policy(directory / POLICY_KEY), saved["settings"]

    def traffic(self, settings: Mapping[str, Any]) -> SeldonTraffic:
        """The router for these settings."""
        target = SeldonTarget(namespace=self.cluster.namespace, name=self.name,
                              **settings["target"])
        return SeldonTraffic(self.cluster, target, ModelRef(**settings["baseline"]),
                             ModelRef(**settings["candidate"]))


def _connect(namespace: str, cfg: DeploymentConfig) -> Cluster:
    return Cluster.connect(namespace, cfg.kubeconfig, cfg.kube_context)


# -- create ------------------------------------------------------------------------------------
def create(target_uri: str, name: str, model_uri: str, config: Mapping[str, Any] | None = None,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start (or, for the same versions, resume) a staged rollout on Seldon Core."""
    from mlflow_kpigate.registry import Registry
    from mlflow_kpigate.rollout.manager import _effective_policy, _tracking_uri, resolve_versions

    say = progress or (lambda _m: None)
    namespace = parse_target_uri(target_uri)
    cfg = parse_config(config)
    target = _target(namespace, name, cfg)
    tracking_uri = _tracking_uri()
    registry = Registry(tracking_uri)
    candidate, baseline = resolve_versions(registry, model_uri, cfg.baseline)
    base_ref, cand_ref = ModelRef.from_registry(baseline), ModelRef.from_registry(candidate)
    directory = workdir(namespace, name, cfg.state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    policy, policy_file = _effective_policy(cfg, directory)
    _check_stages(policy)
    from mlflow_kpigate.metrics.prometheus import check_policy

    check_policy(policy, target.seldon_version)  # a KPI Prometheus cannot measure: exit 2
    first = transitions.stage_weights(policy.stages[0])
    manifests: list[dict[str, Any]]
    if target.seldon_version == 2:
        manifests = [*v2_models(target, base_ref, cand_ref), v2_experiment(target, first)]
    else:
        manifests = [seldon_deployment(target, base_ref, cand_ref, first)]
        check_webhook_rules(manifests[0])
    if cfg.dry_run:
        print(yaml.safe_dump_all(manifests, sort_keys=False), end="")
        say(f"kpigate: dry run — nothing applied to namespace {namespace}")
        return {"name": name, "status": "dry_run", "flavor": FLAVOR, "manifests": manifests}
    if policy.metrics.prometheus.url is None and cfg.prometheus_url is None:
        raise UsageError("-C prometheus_url: needed for kpigate:/seldon (the gate reads KPIs "
                         "from Prometheus), or set metrics.prometheus.url in the policy")

    cluster = _connect(namespace, cfg)
    rollout = ClusterRollout(cluster, name)
    existing = rollout.store.load()
    if existing is not None and not existing.phase.terminal:
        if (existing.model_name, existing.candidate_version, existing.baseline_version) != \
                (candidate.name, candidate.version, baseline.version):
            raise UsageError(f"deployment {name!r} already runs a rollout of "
                             f"{existing.model_name} v{existing.candidate_version} "
                             f"({existing.phase.value}); use `mlflow deployments update` or "
                             "delete it first")
        say(f"kpigate: resuming the rollout of {name} in {namespace} at "
            f"{existing.phase.value} (stage {existing.stage_index})")
    else:
        _start(cluster, rollout, target, cfg, manifests, policy, policy_file, registry,
               candidate, baseline, base_ref, cand_ref, tracking_uri, say)
    if cfg.wait:
        state = run_controller(namespace, name, cfg, progress=say,
                               metrics_port=_metrics_port())
        say(f"kpigate: {name} {state.phase.value}: {state.reason}")
    else:
        _spawn_controller(namespace, name, cfg, directory)
        say(f"kpigate: {name} controller running in the background on this machine "
            f"(log {directory / 'controller.log'}); for unattended rollouts run it as a "
            "Job with -C wait=true (examples/k8s)")
    return describe(target_uri, name, config)


def _start(cluster: Cluster, rollout: ClusterRollout, target: SeldonTarget,
           cfg: DeploymentConfig, manifests: list[dict[str, Any]], policy: Policy,
           policy_file: Path, registry: Any, candidate: Any, baseline: Any,
           base_ref: ModelRef, cand_ref: ModelRef, tracking_uri: str,
           say: Callable[[str], None]) -> None:
    """Apply the first stage's objects, freeze the policy and save the initial state."""
    name = target.name
    # A finished rollout leaves its objects serving; the new one takes them over.
    for cm_name in [state_configmap_name(name), policy_configmap_name(name)]:
        rollout.configmaps.delete(cm_name)
    for old in rollout.configmaps.list(managed_labels(name)):
        if old["metadata"]["name"].startswith(f"{name}-kpigate-audit-"):
            rollout.configmaps.delete(old["metadata"]["name"])
    owner_obj: dict[str, Any] | None = None
    for manifest in manifests:
        kind = {"SeldonDeployment": SELDON_DEPLOYMENT, "Model": SELDON_MODEL,
                "Experiment": SELDON_EXPERIMENT}[manifest["kind"]]
        objects = cluster.objects(kind)
        current = objects.get(manifest["metadata"]["name"])
        if current is not None:
            labels = (current.get("metadata") or {}).get("labels") or {}
            if labels.get("app.kubernetes.io/managed-by") != "kpigate":
                raise UsageError(f"{manifest['kind']} {manifest['metadata']['name']} already "
                                 f"exists in {target.namespace} and was not created by "
                                 "kpigate; choose another --name")
            manifest = {**manifest, "metadata": {
                **manifest["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"]}}
            applied = objects.replace(manifest)
        else:
            applied = objects.create(manifest)
        if manifest["kind"] in ("SeldonDeployment", "Experiment"):
            owner_obj = applied
    assert owner_obj is not None
    owner = owner_reference(owner_obj)
    save_registry_baseline(policy_file.parent, registry.baseline_kpis(baseline, policy))
    settings = {
        "target": {"seldon_version": target.seldon_version, "env_secret": target.env_secret,
                   "collector_url": target.collector_url, "gateway_url": target.gateway_url,
                   "replicas": target.replicas},
        "baseline": {"version": base_ref.version, "storage_uri": base_ref.storage_uri,
                     "model_name": base_ref.model_name},
        "candidate": {"version": cand_ref.version, "storage_uri": cand_ref.storage_uri,
                      "model_name": cand_ref.model_name},
        "prometheus_url": cfg.prometheus_url,
    }
    rollout.configmaps.create({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": policy_configmap_name(name), "namespace": target.namespace,
                     "labels": managed_labels(name), "ownerReferences": [owner]},
        "data": {POLICY_KEY: policy_file.read_text(),
                 BASELINE_KEY: (policy_file.parent / BASELINE_KEY).read_text(),
                 SETTINGS_KEY: json.dumps(settings, indent=2)}})
    run_id = registry.start_rollout_run(
        deployment=name, candidate=candidate, baseline=baseline, policy_file=policy_file,
        params={"stages": " -> ".join(s.describe() for s in policy.stages),
                "backend": f"seldon-v{target.seldon_version}", "namespace": target.namespace})
    state = RolloutState(
        name=name, model_name=candidate.name, candidate_version=candidate.version,
        baseline_version=baseline.version, candidate_uri=candidate.uri,
        baseline_uri=baseline.uri,
        policy_file=f"configmap:{policy_configmap_name(name)}/{POLICY_KEY}",
        tracking_uri=tracking_uri, port=0, promote_alias=cfg.promote_alias,
        rollout_run_id=run_id, threshold=cfg.threshold)
    state = transitions.initial(state, policy, time.time()).evolve(effects_pending=True)
    store = ClusterStore(rollout.configmaps, name, owner=owner)
    store.save(state, "created", {
        "candidate": candidate.uri, "baseline": baseline.uri,
        "namespace": target.namespace, "backend": f"seldon-v{target.seldon_version}",
        "weights": state.weights.describe(), "weights_percent": 0.0,
        "stage": policy.stages[0].describe()})
    say(f"kpigate: {name} created in {target.namespace} at {policy.stages[0].describe()} "
        f"({candidate.uri} vs {baseline.uri})")


# -- the controller ----------------------------------------------------------------------------
def _metrics_port() -> int | None:
    value = os.environ.get("KPIGATE_METRICS_PORT", "").strip()
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise UsageError(f"KPIGATE_METRICS_PORT={value}: must be a port number (e.g. 9102)")
    return int(value)


def _metrics_linger() -> float:
    value = os.environ.get("KPIGATE_METRICS_LINGER", "90").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        raise UsageError(f"KPIGATE_METRICS_LINGER={value}: must be seconds, e.g. 90") from None


def controller_for(namespace: str, name: str, cfg: DeploymentConfig,
                   observer: Callable[[RolloutState, Any], None] | None = None,
                   directory: Path | None = None) -> Controller:
    """A controller for a cluster rollout, wired to the cluster, Prometheus and MLflow."""
    from mlflow_kpigate.metrics.prometheus import PrometheusSource
    from mlflow_kpigate.notify import notifier_from_policy
    from mlflow_kpigate.registry import Registry
    from mlflow_kpigate.rollout.wiring import finish_rollout

    cluster = _connect(namespace, cfg)
    rollout = ClusterRollout(cluster, name)
    directory = directory or workdir(namespace, name, cfg.state_dir)
    policy, settings = rollout.materialize(directory)
    state = rollout.store.require()
    registry = Registry(state.tracking_uri)
    store = rollout.store
    source = PrometheusSource(
        cfg.prometheus_url or settings.get("prometheus_url"), name, namespace, policy,
        seldon_version=int(settings["target"]["seldon_version"]),
        windows=lambda: _stage_windows(store.events()))
    return Controller(
        directory, registry=registry, notifier=notifier_from_policy(policy), store=store,
        source=source, traffic=rollout.traffic(settings), observer=observer, policy=policy,
        on_terminal=lambda s: finish_rollout(directory, s, registry, store=store,
                                             policy=policy) and None)


def run_controller(namespace: str, name: str, cfg: DeploymentConfig, *,
                   progress: Callable[[str], None] | None = None,
                   metrics_port: int | None = None,
                   stop: threading.Event | None = None) -> RolloutState:
    """Drive the rollout until it ends (or ``stop`` is set); serves metrics if asked."""
    from mlflow_kpigate.rollout.exposition import DecisionMetrics

    metrics = DecisionMetrics(name)
    say = progress or (lambda _m: None)

    def observe(state: RolloutState, decision: Any) -> None:
        metrics.observe(state, decision)
        if decision is not None:
            say(f"kpigate: [{decision.action.value}] {decision.reason}")

    controller = controller_for(namespace, name, cfg, observer=observe)
    metrics.observe(controller.store.require(), None)
    linger = _metrics_linger()
    # In a pod, Prometheus scrapes the pod IP: all interfaces, as for any exporter.
    stop_serving = metrics.serve("0.0.0.0", metrics_port) if metrics_port else None
    try:
        state = controller.run(stop)
        if stop_serving is not None:
            metrics.observe(state, None)
            # Stay up a few scrape intervals so the terminal phase reaches Prometheus (the
            # alert rules rely on seeing it) before the Job's pod goes away.
            (stop or threading.Event()).wait(linger)
        return state
    finally:
        if stop_serving is not None:
            stop_serving()


def _background_alive(directory: Path) -> bool:
    try:
        pid = int((directory / "controller.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _spawn_controller(namespace: str, name: str, cfg: DeploymentConfig,
                      directory: Path) -> None:
    if _background_alive(directory):
        return  # one controller per rollout and machine; the state's CAS guards the rest
    args = [sys.executable, "-m", "mlflow_kpigate.backends.seldon.rollouts",
            "--namespace", namespace, "--name", name]
    for flag, value in (("--kubeconfig", cfg.kubeconfig), ("--context", cfg.kube_context),
                        ("--prometheus-url", cfg.prometheus_url),
                        ("--state-dir", cfg.state_dir)):
        if value:
            args += [flag, str(value)]
    with (directory / "controller.log").open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True)
    (directory / "controller.pid").write_text(str(proc.pid))


def stop_background_controller(namespace: str, name: str, root: Path | None = None) -> None:
    """Stop a controller that ``create`` started on this machine (if any)."""
    pid_file = workdir(namespace, name, root) / "controller.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


# -- operator actions, inspection, delete ------------------------------------------------------
def steer(target_uri: str, name: str, action: str, config: Mapping[str, Any] | None = None,
          who: str = "operator") -> dict[str, Any]:
    """promote / rollback / pause / resume a cluster rollout (compare-and-set on its state)."""
    from mlflow_kpigate.registry import Registry
    from mlflow_kpigate.rollout.manager import commit_operator_action
    from mlflow_kpigate.rollout.wiring import finish_rollout

    namespace = parse_target_uri(target_uri)
    cfg = parse_config({k: v for k, v in (config or {}).items() if k != "action"})
    rollout = ClusterRollout(_connect(namespace, cfg), name)
    directory = workdir(namespace, name, cfg.state_dir)
    policy, settings = rollout.materialize(directory)
    store = rollout.store
    saved = commit_operator_action(store, policy, name, action, who)
    registry = Registry(saved.tracking_uri)
    Effects(store, policy, registry=registry, traffic=rollout.traffic(settings),  # type: ignore[arg-type]
            on_terminal=lambda s: finish_rollout(directory, s, registry, store=store,
                                                 policy=policy) and None
            ).apply(saved, None, f"operator_{action}")
    return describe(target_uri, name, config)


def describe(target_uri: str, name: str, config: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """The deployment as ``get_deployment`` returns it."""
    namespace = parse_target_uri(target_uri)
    cfg = parse_config({k: v for k, v in (config or {}).items() if k != "action"})
    rollout = ClusterRollout(_connect(namespace, cfg), name)
    state = rollout.store.load()
    if state is None:
        raise UsageError(f"no kpigate rollout named {name!r} in namespace {namespace}")
    saved = rollout.settings()
    settings = saved["settings"]
    stages = yaml.safe_load(saved["policy"]).get("stages", []) if saved["policy"] else []
    gateway = settings["target"].get("gateway_url")
    info: dict[str, Any] = {
        "name": name, "flavor": FLAVOR, "namespace": namespace,
        "backend": f"seldon-v{settings['target']['seldon_version']}",
        "status": state.phase.value, "paused": state.paused,
        "stage_index": state.stage_index, "stages": len(stages),
        "weights": state.weights.describe(), "candidate": state.candidate_uri,
        "baseline": state.baseline_uri, "reason": state.reason,
        "evaluations": state.evaluations, "rollout_run_id": state.rollout_run_id,
        "endpoint": _endpoint(gateway, namespace, name,
                              int(settings["target"]["seldon_version"])),
    }
    return info


def _endpoint(gateway: str | None, namespace: str, name: str, version: int) -> str | None:
    if not gateway:
        return None
    if version == 2:
        return f"{gateway}/v2/models/{name}/infer"
    return f"{gateway}/seldon/{namespace}/{name}/api/v1.0/predictions"


def list_all(target_uri: str, config: Mapping[str, Any] | None = None
             ) -> list[dict[str, Any]]:
    """Every kpigate rollout in the namespace."""
    namespace = parse_target_uri(target_uri)
    cfg = parse_config(config)
    cms = _connect(namespace, cfg).objects(CONFIG_MAP)
    out = []
    for cm in cms.list({"app.kubernetes.io/managed-by": "kpigate"}):
        cm_name = cm["metadata"]["name"]
        if cm_name.endswith("-kpigate-state"):
            out.append(describe(target_uri, cm_name[: -len("-kpigate-state")], config))
    return out


def delete(target_uri: str, name: str, config: Mapping[str, Any] | None = None) -> None:
    """End the rollout (recorded as aborted if unfinished) and delete what kpigate created."""
    namespace = parse_target_uri(target_uri)
    cfg = parse_config(config)
    stop_background_controller(namespace, name, cfg.state_dir)
    cluster = _connect(namespace, cfg)
    rollout = ClusterRollout(cluster, name)
    state = rollout.store.load()
    if state is None and not cluster.objects(SELDON_DEPLOYMENT if cfg.seldon_version == 1
                                             else SELDON_EXPERIMENT).get(name):
        raise UsageError(f"no kpigate rollout named {name!r} in namespace {namespace}")
    if state is not None and not state.phase.terminal:
        from mlflow_kpigate.registry import Registry
        from mlflow_kpigate.rollout.wiring import finish_rollout

        directory = workdir(namespace, name, cfg.state_dir)
        policy, _settings = rollout.materialize(directory)
        saved = rollout.store.save(
            transitions.rollback(state, "deployment deleted", Phase.ABORTED)
            .evolve(effects_pending=True), "aborted", {"reason": "deleted"})
        registry = Registry(state.tracking_uri)
        # No traffic change: everything is deleted next; only MLflow and the report.
        Effects(rollout.store, policy, registry=registry,  # type: ignore[arg-type]
                traffic=_NoTraffic(),
                on_terminal=lambda s: finish_rollout(directory, s, registry,
                                                     store=rollout.store, policy=policy)
                and None).apply(saved, None, "aborted")
    cluster.delete_managed(name)


class _NoTraffic:
    needs_readiness = False

    def apply(self, state: RolloutState) -> None:
        return None


def predict(target_uri: str, name: str, inputs: Any,
            config: Mapping[str, Any] | None = None) -> Any:
    """Score ``inputs`` through Seldon's gateway (v1 Seldon protocol / v2 inference)."""
    from mlflow.deployments import PredictionsResponse

    info = describe(target_uri, name, config)
    cfg = parse_config(config)
    endpoint = info["endpoint"]
    if cfg.gateway_url:
        endpoint = _endpoint(cfg.gateway_url, info["namespace"], name,
                             2 if info["backend"] == "seldon-v2" else 1)
    if not endpoint:
        raise UsageError("-C gateway_url: needed to send predictions through Seldon's "
                         "ingress, e.g. -C gateway_url=http://istio-ingressgateway.istio-system")
    columns, rows = _rows(inputs)
    if info["backend"] == "seldon-v2":
        body = {"inputs": [{"name": c, "shape": [len(rows)], "datatype": "FP64",
                            "data": [r[i] for r in rows]} for i, c in enumerate(columns)]}
        headers = {"Content-Type": "application/json", "Seldon-Model": f"{name}.experiment"}
    else:
        body = {"data": {"names": columns, "ndarray": rows}}
        headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(endpoint, data=json.dumps(body, default=float).encode(),
                                 method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            reply = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise UsageError(f"{name}: Seldon rejected the input (HTTP {exc.code}): "
                         f"{detail}") from None
    except OSError as exc:
        raise KpigateError(f"{name}: the gateway at {endpoint} is not reachable ({exc})"
                           ) from None
    if "data" in reply:
        data = reply["data"]
        preds = data.get("ndarray", data.get("tensor", {}).get("values"))
    else:
        preds = [o.get("data") for o in reply.get("outputs", [])]
        preds = preds[0] if len(preds) == 1 else preds
    return PredictionsResponse({"predictions": preds})


def _rows(inputs: Any) -> tuple[list[str], list[list[Any]]]:
    if hasattr(inputs, "to_dict"):
        split = inputs.to_dict(orient="split")
        return [str(c) for c in split["columns"]], split["data"]
    if isinstance(inputs, dict) and "dataframe_split" in inputs:
        split = inputs["dataframe_split"]
        return [str(c) for c in split["columns"]], split["data"]
    if isinstance(inputs, dict) and "dataframe_records" in inputs:
        records = inputs["dataframe_records"]
        columns = list(records[0]) if records else []
        return columns, [[r.get(c) for c in columns] for r in records]
    raise UsageError("predict: give a pandas DataFrame or an MLflow JSON payload "
                     "(dataframe_split or dataframe_records)")


# -- process entry point (the background controller) ------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m mlflow_kpigate.backends.seldon.rollouts --namespace NS --name NAME``."""
    parser = argparse.ArgumentParser(prog="kpigate-seldon-controller")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    parser.add_argument("--prometheus-url")
    parser.add_argument("--state-dir")
    parser.add_argument("--metrics-port", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raw = {k: v for k, v in (("kubeconfig", args.kubeconfig),
                             ("kube_context", args.context),
                             ("prometheus_url", args.prometheus_url),
                             ("state_dir", args.state_dir)) if v}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        state = run_controller(args.namespace, args.name, parse_config(raw),
                               metrics_port=args.metrics_port, stop=stop,
                               progress=lambda m: log.info("%s", m))
    except KpigateError as exc:
        log.error("%s", exc)
        return exc.exit_code
    log.info("controller stopping: rollout %s (%s)", state.phase.value, state.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ClusterRollout", "controller_for", "create", "delete", "describe", "list_all",
           "load_registry_baseline", "predict", "run_controller", "steer", "v2_model_name"]
