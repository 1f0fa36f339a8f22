"""A Seldon rollout's objects in the cluster: what ``create`` applies and later runs read.

What lives in the cluster (all labelled ``app.kubernetes.io/managed-by=kpigate`` and
``kpigate.io/rollout=NAME``, and owned by the SeldonDeployment or Experiment, so deleting
it deletes them):

* the SeldonDeployment ``NAME`` (v1) or Models ``NAME-baseline``/``NAME-candidate`` and
  the Experiment ``NAME`` (v2);
* ConfigMap ``NAME-kpigate-state`` (+ ``NAME-kpigate-audit-NNNN``): the rollout state and
  its audit log (:class:`~mlflow_kpigate.backends.seldon.state_store.ClusterStore`), the
  committed truth a restarted controller resumes from;
* ConfigMap ``NAME-kpigate-policy``: the frozen policy, the registry baseline KPIs and the
  target settings, so any controller (a restarted Job, an operator's laptop) decides and
  acts exactly as the one that started the rollout.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.seldon.cluster import Cluster
from mlflow_kpigate.backends.seldon.collector_credentials import CollectorCredentials
from mlflow_kpigate.backends.seldon.collector_registration import (
    deregister_rollout,
    register_rollout,
    registration_body,
)
from mlflow_kpigate.backends.seldon.kinds import (
    CONFIG_MAP,
    SELDON_DEPLOYMENT,
    SELDON_EXPERIMENT,
    SELDON_MODEL,
    managed_labels,
    owner_reference,
)
from mlflow_kpigate.backends.seldon.manifests import ModelRef, whole_percent
from mlflow_kpigate.backends.seldon.state_store import ClusterStore, state_configmap_name
from mlflow_kpigate.backends.seldon.target import SeldonTarget
from mlflow_kpigate.backends.seldon.traffic import SeldonTraffic
from mlflow_kpigate.core.atomic_files import write_text_atomic
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.events import Created, traffic_percent
from mlflow_kpigate.core.refs import ModelRef as RegistryRef
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy.config import DeploymentConfig, state_dir
from mlflow_kpigate.deploy.inputs import BASELINE_FILE, POLICY_FILE, save_registry_baseline
from mlflow_kpigate.policy import Policy, load_policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.ports import Registry

POLICY_KEY = POLICY_FILE
BASELINE_KEY = BASELINE_FILE
SETTINGS_KEY = "settings.json"

log = logging.getLogger(__name__)


def policy_configmap_name(name: str) -> str:
    """The ConfigMap holding a rollout's frozen policy, baseline KPIs and settings."""
    return f"{name}-kpigate-policy"


def workdir(namespace: str, name: str, root: Path | None = None) -> Path:
    """This machine's scratch directory for a cluster rollout (policy copy, report, logs)."""
    return state_dir(root) / "seldon" / namespace / name


def seldon_target(namespace: str, name: str, cfg: DeploymentConfig,
                  service_account: str | None = None, ingest_token: str | None = None
                  ) -> SeldonTarget:
    """The Seldon settings of a rollout from its ``-C`` config (validated); the collector's
    ``ingest_token`` (from the environment, :class:`CollectorCredentials`) goes into the
    request logger's URL."""
    return SeldonTarget(namespace=namespace, name=name, seldon_version=cfg.seldon_version,
                        env_secret=cfg.env_secret, collector_url=cfg.collector_url,
                        gateway_url=cfg.gateway_url, replicas=cfg.replicas,
                        service_account=service_account, ingest_token=ingest_token,
                        shared_collector=cfg.shared_collector)


def check_stages(policy: Policy) -> None:
    """``UsageError`` for a stage Seldon cannot route (its weights are whole percents)."""
    for i, stage in enumerate(policy.stages):
        try:
            whole_percent(stage.traffic)
        except (UsageError, ValueError) as exc:
            raise UsageError(f"stages[{i}]: {stage.traffic:g}% cannot be routed by Seldon, "
                             f"whose traffic weights are whole percents ({exc})") from None


def connect(namespace: str, cfg: DeploymentConfig) -> Cluster:
    """The namespace through the configured kubeconfig/context (or in-cluster config)."""
    return Cluster.connect(namespace, cfg.kubeconfig, cfg.kube_context)


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
        # Atomically: another process (a worker, the operator) may be reading them.
        write_text_atomic(directory / POLICY_KEY, saved["policy"])
        if saved["baseline"]:
            write_text_atomic(directory / BASELINE_KEY, saved["baseline"])
        return load_policy(directory / POLICY_KEY), saved["settings"]

    def traffic(self, settings: Mapping[str, Any],
                credentials: CollectorCredentials | None = None) -> SeldonTraffic:
        """The router for these settings, with the collector tokens the environment names
        (``credentials`` overrides them). The saved settings never hold a token."""
        creds = CollectorCredentials.from_env() if credentials is None else credentials
        return SeldonTraffic(self.cluster, self.target(settings, creds),
                             ModelRef(**settings["baseline"]),
                             ModelRef(**settings["candidate"]), creds)

    def target(self, settings: Mapping[str, Any], credentials: CollectorCredentials
               ) -> SeldonTarget:
        """The Seldon settings saved at creation (``settings["target"]``; settings saved
        before a key existed get its default), with the ingest token of ``credentials``."""
        return SeldonTarget(namespace=self.cluster.namespace, name=self.name,
                            ingest_token=credentials.ingest_token, **settings["target"])

    def deregister(self, settings: Mapping[str, Any],
                   credentials: CollectorCredentials | None = None) -> None:
        """End the rollout on its shared collector, if it has one (best effort: a failure
        is logged, never raised)."""
        if not (settings.get("target") or {}).get("shared_collector"):
            return
        try:
            creds = CollectorCredentials.from_env() if credentials is None else credentials
            deregister_rollout(self.target(settings, creds), creds)
        except KpigateError as exc:
            log.warning("could not deregister %s from its shared collector: %s",
                        self.name, exc)


def start_rollout(rollout: ClusterRollout, target: SeldonTarget, cfg: DeploymentConfig,
                  manifests: list[dict[str, Any]], policy: Policy, policy_file: Path,
                  registry: Registry, versions: tuple[RegistryRef, RegistryRef],
                  tracking_uri: str, say: Callable[[str], None],
                  source: Mapping[str, Any] | None = None,
                  credentials: CollectorCredentials | None = None) -> None:
    """Apply the first stage's objects, keep the policy, baseline KPIs and settings in a
    ConfigMap, open the rollout run and save the initial state.

    With a shared collector (``target.shared_collector``) the rollout is registered with
    it first (``PUT /rollouts/NAME`` with the operator token of ``credentials``, by default
    the ones the environment names); when that fails nothing is applied or changed and
    :class:`CollectorRegistrationFailed` says why in one line.

    ``source`` says what asked for the rollout (the operator: the ModelRollout's spec
    digest and generation); it is saved with the settings, in the same write, so whoever
    reads them knows which request the rollout in these ConfigMaps answers.
    """
    name = target.name
    cluster = rollout.cluster
    candidate, baseline = versions
    base_ref, cand_ref = ModelRef.from_registry(baseline), ModelRef.from_registry(candidate)
    if target.shared_collector:
        creds = CollectorCredentials.from_env() if credentials is None else credentials
        outcome = register_rollout(target, registration_body(
            policy_file.read_text(), base_ref.version, cand_ref.version, cfg.threshold), creds)
        say(f"kpigate: {name} registered with the shared collector at "
            f"{target.collector_base_url} ({outcome})")
    # A finished rollout leaves its objects serving; the new one takes them over.
    for cm_name in [state_configmap_name(name), policy_configmap_name(name)]:
        rollout.configmaps.delete(cm_name)
    for old in rollout.configmaps.list(managed_labels(name)):
        if old["metadata"]["name"].startswith(f"{name}-kpigate-audit-"):
            rollout.configmaps.delete(old["metadata"]["name"])
    owner_obj: dict[str, Any] | None = None
    source = dict(source or {})
    # A rollout the operator started belongs to its ModelRollout: deleting that deletes
    # the Seldon objects, and with them the ConfigMaps they own.
    rollout_owner = source.pop("owner", None)
    for manifest in manifests:
        if rollout_owner:
            manifest = {**manifest, "metadata": {**manifest["metadata"],
                                                 "ownerReferences": [rollout_owner]}}
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
        "target": target.saved_settings(),
        "baseline": {"version": base_ref.version, "storage_uri": base_ref.storage_uri,
                     "model_name": base_ref.model_name},
        "candidate": {"version": cand_ref.version, "storage_uri": cand_ref.storage_uri,
                      "model_name": cand_ref.model_name},
        "prometheus_url": cfg.prometheus_url,
    }
    if source:
        settings["source"] = dict(source)
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
    store.save(state, Created(policy.stages[0].describe(), state.weights.describe(),
                              traffic_percent(state.weights), candidate.uri, baseline.uri,
                              namespace=target.namespace,
                              backend=f"seldon-v{target.seldon_version}"))
    say(f"kpigate: {name} created in {target.namespace} at {policy.stages[0].describe()} "
        f"({candidate.uri} vs {baseline.uri})")
