"""The Seldon Core Deployer: rollouts as canaries of a SeldonDeployment or v2 Experiment.

Target ``kpigate:/seldon/NAMESPACE``. ``create`` applies the first stage's objects and
the rollout's ConfigMaps (:mod:`.seldon_rollout`), then runs the controller
(:mod:`.seldon_controller`) here (``-C wait=true``) or in the background. Re-running the
same ``create`` for an unfinished rollout of the same versions resumes it, which is what a
restarted Job does. Operator actions, inspection and delete work from the ConfigMaps, so
they can run on any machine with access to the namespace.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from mlflow_kpigate.backends.seldon.cluster import Cluster
from mlflow_kpigate.backends.seldon.collector_credentials import (
    INGEST_TOKEN_ENV,
    CollectorCredentials,
)
from mlflow_kpigate.backends.seldon.kinds import CONFIG_MAP, SELDON_DEPLOYMENT, SELDON_EXPERIMENT
from mlflow_kpigate.backends.seldon.manifests import (
    ModelRef,
    seldon_deployment,
    v2_experiment,
    v2_models,
)
from mlflow_kpigate.backends.seldon.state_store import ClusterStore
from mlflow_kpigate.backends.seldon.target import parse_target_uri
from mlflow_kpigate.backends.seldon.webhook import check_webhook_rules
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.events import Aborted, traffic_percent
from mlflow_kpigate.core.state import Phase, Readiness, RolloutState
from mlflow_kpigate.deploy.config import DeploymentConfig, parse_config, writable_state_dir
from mlflow_kpigate.deploy.deployer import Observe, Progress, Rollout
from mlflow_kpigate.deploy.finish import finish_rollout
from mlflow_kpigate.deploy.follow import Poll, follow_store, gone, last_decision
from mlflow_kpigate.deploy.inputs import (
    forecast_lines,
    freeze_policy,
    output_warnings,
    resolve_versions,
    tracking_uri,
)
from mlflow_kpigate.deploy.modelrollout_request import modelrollout_for
from mlflow_kpigate.deploy.operator import commit_operator_action
from mlflow_kpigate.deploy.seldon_controller import (
    metrics_port_from_env,
    run_controller,
    spawn_controller,
    stop_background_controller,
)
from mlflow_kpigate.deploy.seldon_operated import (
    OperatedRollouts,
    create_through_operator,
    operated_pending,
    served,
)
from mlflow_kpigate.deploy.seldon_predict import endpoint_url, score
from mlflow_kpigate.deploy.seldon_rollout import (
    ClusterRollout,
    check_stages,
    connect,
    seldon_target,
    start_rollout,
    workdir,
)
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.effects import Effects
from mlflow_kpigate.rollout.ports import TrafficBackend

FLAVOR = "python_function"


def _config(config: Mapping[str, Any] | None) -> DeploymentConfig:
    return parse_config({k: v for k, v in (config or {}).items() if k != "action"})


class _NoTraffic:
    """Traffic for a rollout whose objects are deleted next: nothing to move."""

    needs_readiness = False

    def apply(self, state: RolloutState) -> None:
        return None

    def readiness(self, state: RolloutState) -> Readiness:
        return Readiness(True, "deleted")


class SeldonDeployer:
    """Rollouts on Seldon Core in one namespace (``kpigate:/seldon/NAMESPACE``)."""

    def __init__(self, target_uri: str) -> None:
        self.target_uri = target_uri
        self.namespace = parse_target_uri(target_uri)

    def _rollout(self, name: str, cfg: DeploymentConfig) -> ClusterRollout:
        return ClusterRollout(connect(self.namespace, cfg), name)

    def _cluster(self, cfg: DeploymentConfig) -> Cluster:
        return connect(self.namespace, cfg)

    def _operated(self, name: str, cfg: DeploymentConfig) -> bool:
        """Whether ``create`` goes through the operator (``-C operator``; ``auto``: when
        the cluster serves ModelRollouts, unless a rollout of ``name`` already runs
        without one; a dry run prints Seldon's manifests then)."""
        if cfg.operator != "auto":
            return cfg.operator == "true"
        if cfg.dry_run:
            return False
        cluster = self._cluster(cfg)
        if not served(cluster):
            return False
        job_run = OperatedRollouts(cluster).get(name) is None and \
            ClusterRollout(cluster, name).store.load() is not None
        return not job_run

    def _dry_run_operated(self, name: str, model_uri: str, cfg: DeploymentConfig,
                          say: Progress) -> dict[str, Any]:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="kpigate-policy-") as scratch:
            policy, _file = freeze_policy(cfg, Path(scratch))
        check_stages(policy)
        obj = modelrollout_for(name, self.namespace, model_uri, cfg, policy.raw,
                               tracking_uri())
        print(yaml.safe_dump(obj, sort_keys=False), end="")
        say(f"kpigate: dry run — nothing applied to namespace {self.namespace}")
        return {"name": name, "status": "dry_run", "flavor": FLAVOR, "manifests": [obj]}

    # -- create ----------------------------------------------------------------------------
    def create(self, name: str, model_uri: str, config: Mapping[str, Any] | None = None,
               progress: Progress | None = None, *, observe: Observe | None = None,
               source: Mapping[str, Any] | None = None,
               stop: threading.Event | None = None) -> dict[str, Any]:
        """Start (or, for the same versions, resume) a staged rollout on Seldon Core.

        ``source`` is saved with a new rollout's settings (the operator's ModelRollout
        digest, :func:`~.seldon_rollout.start_rollout`); ``stop`` ends the controller of
        ``-C wait=true`` early (the operator's worker on SIGTERM); ``observe`` gets the
        state after every evaluation of ``-C wait=true`` (not through the operator)."""
        from mlflow_kpigate.metrics.prometheus import check_policy
        from mlflow_kpigate.registry import Registry

        say = progress or (lambda _m: None)
        namespace = self.namespace
        cfg = parse_config(config)
        if self._operated(name, cfg):
            if cfg.dry_run:
                return self._dry_run_operated(name, model_uri, cfg, say)
            create_through_operator(self._cluster(cfg), name, model_uri, cfg, say)
            return self.describe(name, config)
        # The ingest token goes into the logger URL of the applied objects only; a dry
        # run prints them, so it leaves the token out.
        ingest = None if cfg.dry_run else CollectorCredentials.from_env().ingest_token
        target = seldon_target(namespace, name, cfg, ingest_token=ingest)
        writable_state_dir(cfg.state_dir)
        uri = tracking_uri()
        registry = Registry(uri)
        candidate, baseline = resolve_versions(registry, model_uri, cfg.baseline)
        base_ref, cand_ref = ModelRef.from_registry(baseline), ModelRef.from_registry(candidate)
        directory = workdir(namespace, name, cfg.state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        policy, policy_file = freeze_policy(cfg, directory)
        for warning in output_warnings(registry, policy, {"candidate": candidate,
                                                          "baseline": baseline}):
            say(warning)
        check_stages(policy)
        check_policy(policy, target.seldon_version)  # a KPI Prometheus cannot measure: exit 2
        if cfg.expected_rps is not None:
            for line in forecast_lines(policy, registry.baseline_kpis(baseline, policy), cfg):
                say(line)
        first = transitions.stage_weights(policy.stages[0])
        manifests: list[dict[str, Any]]
        if target.seldon_version == 2:
            manifests = [*v2_models(target, base_ref, cand_ref), v2_experiment(target, first)]
        else:
            manifests = [seldon_deployment(target, base_ref, cand_ref, first)]
            check_webhook_rules(manifests[0])
        if cfg.dry_run:
            print(yaml.safe_dump_all(manifests, sort_keys=False), end="")
            if target.logger_url:
                say("kpigate: the applied logger URL ends in /cloudevents/<ingest token> "
                    f"when ${INGEST_TOKEN_ENV} names the token file (not printed)")
            say(f"kpigate: dry run — nothing applied to namespace {namespace}")
            return {"name": name, "status": "dry_run", "flavor": FLAVOR,
                    "manifests": manifests}
        if policy.metrics.prometheus.url is None and cfg.prometheus_url is None:
            raise UsageError("-C prometheus_url: needed for kpigate:/seldon (the gate reads "
                             "KPIs from Prometheus), or set metrics.prometheus.url in the "
                             "policy")
        rollout = self._rollout(name, cfg)
        existing = rollout.store.load()
        if existing is not None and not existing.phase.terminal:
            if (existing.model_name, existing.candidate_version, existing.baseline_version) \
                    != (candidate.name, candidate.version, baseline.version):
                raise UsageError(f"deployment {name!r} already runs a rollout of "
                                 f"{existing.model_name} v{existing.candidate_version} "
                                 f"({existing.phase.value}); use `mlflow deployments update`"
                                 " or delete it first")
            say(f"kpigate: resuming the rollout of {name} in {namespace} at "
                f"{existing.phase.value} (stage {existing.stage_index})")
        else:
            start_rollout(rollout, target, cfg, manifests, policy, policy_file, registry,
                          (candidate, baseline), uri, say, source)
        if cfg.wait:
            state = run_controller(namespace, name, cfg, progress=say, observe=observe,
                                   metrics_port=metrics_port_from_env(), stop=stop)
            say(f"kpigate: {name} {state.phase.value}: {state.reason}")
        else:
            spawn_controller(namespace, name, cfg, directory)
            say(f"kpigate: {name} controller running in the background on this machine "
                f"(log {directory / 'controller.log'}); for unattended rollouts run it as a "
                "Job with -C wait=true (examples/k8s)")
        return self.describe(name, config)

    def replace(self, name: str, model_uri: str, config: Mapping[str, Any] | None = None,
                progress: Progress | None = None, *, observe: Observe | None = None
                ) -> dict[str, Any]:
        """``update -m``: a new rollout (refused while another one runs, resumed if the same)."""
        rest = {k: v for k, v in (config or {}).items() if k != "action"}
        return self.create(name, model_uri, rest, progress, observe=observe)

    # -- change ----------------------------------------------------------------------------
    def steer(self, name: str, action: str, config: Mapping[str, Any] | None = None,
              who: str = "operator") -> dict[str, Any]:
        """promote / rollback / pause / resume (compare-and-set on the rollout's state)."""
        cfg = _config(config)
        operated = OperatedRollouts(self._cluster(cfg))
        if operated.get(name) is not None:
            operated.steer(name, action, who)
            return self.describe(name, config)
        rollout = self._rollout(name, cfg)
        directory = workdir(self.namespace, name, cfg.state_dir)
        policy, settings = rollout.materialize(directory)
        saved = commit_operator_action(rollout.store, policy, name, action, who)
        self._effects(rollout, directory, policy, saved, rollout.traffic(settings)
                      ).apply(saved, None, f"operator_{action}")
        return self.describe(name, config)

    def delete(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        """End the rollout (recorded as aborted if unfinished); delete what kpigate created;
        deregister it from its shared collector (best effort, logged)."""
        cfg = parse_config(config)
        stop_background_controller(self.namespace, name, cfg.state_dir)
        rollout = self._rollout(name, cfg)
        state = rollout.store.load()
        kind = SELDON_DEPLOYMENT if cfg.seldon_version == 1 else SELDON_EXPERIMENT
        if state is None and not rollout.cluster.objects(kind).get(name) and \
                OperatedRollouts(rollout.cluster).get(name) is None:
            raise UsageError(f"no kpigate rollout named {name!r} in namespace "
                             f"{self.namespace}")
        try:
            settings: dict[str, Any] = rollout.settings()["settings"]
        except (UsageError, ValueError):  # no ConfigMap (a half-created rollout)
            settings = {}
        if state is not None and not state.phase.terminal:
            directory = workdir(self.namespace, name, cfg.state_dir)
            policy, _settings = rollout.materialize(directory)
            ended = transitions.rollback(state, "deployment deleted", Phase.ABORTED)
            saved = rollout.store.save(ended.evolve(effects_pending=True), Aborted(
                policy.stages[ended.stage_index].describe(), ended.weights.describe(),
                traffic_percent(ended.weights), "deleted"))
            # No traffic change: everything is deleted next; only MLflow and the report.
            self._effects(rollout, directory, policy, saved, _NoTraffic()
                          ).apply(saved, None, "aborted")
        operated = OperatedRollouts(rollout.cluster)
        if operated.get(name) is not None:
            # Its Seldon objects and ConfigMaps are owned by it and go with it.
            operated.delete(name)
        rollout.cluster.delete_managed(name)
        rollout.deregister(settings)

    @staticmethod
    def _effects(rollout: ClusterRollout, directory: Any, policy: Any, state: RolloutState,
                 traffic: TrafficBackend) -> Effects:
        from mlflow_kpigate.registry import Registry

        registry = Registry(state.tracking_uri)
        store = rollout.store
        return Effects(store, policy, traffic, registry=registry,
                       on_terminal=lambda s: finish_rollout(directory, s, registry,
                                                            store=store, policy=policy))

    # -- inspect ---------------------------------------------------------------------------
    def describe(self, name: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The deployment as ``get_deployment`` returns it."""
        rollout = self._rollout(name, _config(config))
        state = rollout.store.load()
        resource = OperatedRollouts(rollout.cluster).get(name)
        if resource is not None:
            pending = operated_pending(resource, state)
            if pending is not None:
                return {"name": name, "flavor": FLAVOR, "namespace": self.namespace,
                        **pending}
        if state is None:
            raise UsageError(f"no kpigate rollout named {name!r} in namespace "
                             f"{self.namespace}")
        saved = rollout.settings()
        settings = saved["settings"]
        stages = yaml.safe_load(saved["policy"]).get("stages", []) if saved["policy"] else []
        version = int(settings["target"]["seldon_version"])
        return {
            "name": name, "flavor": FLAVOR, "namespace": self.namespace,
            "backend": f"seldon-v{version}",
            "status": state.status, "phase": state.phase.value, "paused": state.paused,
            "stage_index": state.stage_index, "stages": len(stages),
            "weights": state.weights.describe(), "candidate": state.candidate_uri,
            "baseline": state.baseline_uri, "reason": state.reason,
            "evaluations": state.evaluations, "rollout_run_id": state.rollout_run_id,
            "endpoint": endpoint_url(settings["target"].get("gateway_url"), self.namespace, name,
                                  version),
            **({"operator": True} if resource is not None else {}),
        }

    def list_all(self, config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every kpigate rollout in the namespace."""
        cluster = connect(self.namespace, parse_config(config))
        names = OperatedRollouts(cluster).names()
        for cm in cluster.objects(CONFIG_MAP).list({"app.kubernetes.io/managed-by": "kpigate"}):
            cm_name = cm["metadata"]["name"]
            if cm_name.endswith("-kpigate-state") and \
                    cm_name[: -len("-kpigate-state")] not in names:
                names.append(cm_name[: -len("-kpigate-state")])
        out = []
        for n in sorted(names):
            try:
                out.append(self.describe(n, config))
            except UsageError:
                continue  # half-deleted (its policy ConfigMap is gone): not a rollout to list
        return out

    def open(self, name: str, config: Mapping[str, Any] | None = None) -> Rollout:
        """The rollout's ConfigMap store, its frozen policy, and a local scratch directory."""
        cfg = _config(config)
        rollout = self._rollout(name, cfg)
        directory = workdir(self.namespace, name, cfg.state_dir)
        policy, _settings = rollout.materialize(directory)
        return Rollout(name, rollout.store, policy, directory)

    def last_decision(self, name: str, config: Mapping[str, Any] | None = None
                      ) -> Decision | None:
        """The most recent gate decision of the rollout, from its state ConfigMap."""
        return last_decision(self._existing_store(name, config))

    def follow(self, name: str, config: Mapping[str, Any] | None = None,
               interval_s: float = 1.0) -> Iterator[Poll]:
        """Poll the rollout's state ConfigMap (see :mod:`.follow`); a rollout deleted or
        replaced while followed ends the iteration with a ``KpigateError``."""
        store = self._existing_store(name, config)
        return follow_store(store, interval_s, relocate=gone(
            f"rollout {name!r} in namespace {self.namespace}"))

    def _existing_store(self, name: str, config: Mapping[str, Any] | None
                        ) -> ClusterStore:
        store = self._rollout(name, _config(config)).store
        if not store.exists():
            raise UsageError(f"no kpigate rollout named {name!r} in namespace "
                             f"{self.namespace}")
        return store

    def feedback_url(self, name: str, config: Mapping[str, Any] | None = None) -> str:
        """Where labels of rollout ``name`` go: its collector's ``/feedback``, or
        ``/rollouts/NAME/feedback`` on a shared collector (from the saved settings)."""
        rollout = self._rollout(name, _config(config))
        settings = rollout.settings()["settings"]
        url = rollout.target(settings, CollectorCredentials()).feedback_url
        if url is None:
            raise UsageError(f"{name}: the rollout has no collector (it was created without "
                             "-C collector_url), so there is nowhere to send its labels")
        return url

    # -- serve -----------------------------------------------------------------------------
    def predict(self, name: str, inputs: Any, config: Mapping[str, Any] | None = None
                ) -> Any:
        """Score ``inputs`` through Seldon's gateway (v1 Seldon protocol / v2 inference)."""
        info = self.describe(name, config)
        cfg = parse_config(config)
        version = 2 if info["backend"] == "seldon-v2" else 1
        endpoint = (endpoint_url(cfg.gateway_url, self.namespace, name, version)
                    if cfg.gateway_url else info["endpoint"])
        if not endpoint:
            raise UsageError("-C gateway_url: needed to send predictions through Seldon's "
                             "ingress, e.g. -C gateway_url=http://istio-ingressgateway."
                             "istio-system")
        return score(endpoint, name, version, inputs)
