"""A ModelRollout as a kpigate rollout request, and back.

Both directions of one translation, kept together so they cannot drift apart:

* :func:`create_request`: the operator's worker turns a ModelRollout into what
  ``mlflow deployments create -t kpigate:/seldon/NS`` takes (a model URI and ``-C``
  options), so a rollout started by the operator is the same rollout a Job would run;
* :func:`modelrollout_for`: ``create`` in operator mode turns a model URI and ``-C``
  options into a ModelRollout object to apply.

:func:`model_digest` names *which* rollout a ModelRollout asks for (its ``spec.model``):
it is saved with the rollout's settings when the rollout starts, so the operator can tell
"this rollout ended" (digest unchanged: nothing to do) from "a new one is asked for"
(the spec's model changed since).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mlflow_kpigate.backends.modelrollout import API_VERSION, KIND, ModelRollout
from mlflow_kpigate.backends.modelrollout.spec import (
    EXPERIMENT,
    SELDON_DEPLOYMENT,
    ModelRolloutSpec,
)
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.deploy.config import DeploymentConfig

#: Annotation on a ModelRollout created by ``mlflow deployments create`` (who made it).
CREATED_BY_ANNOTATION = "kpigate.io/created-by"


def model_digest(spec: ModelRolloutSpec) -> str:
    """A short digest of ``spec.model``: what is rolled out against what."""
    text = json.dumps(spec.model.to_object(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_of(mr: ModelRollout, obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator saves with a rollout it starts (``settings["source"]``), and the
    owner reference the rollout's Seldon objects get (``owner``, not saved)."""
    from mlflow_kpigate.backends.seldon.kinds import owner_reference

    return {"kind": KIND, "digest": model_digest(mr.spec), "generation": mr.generation,
            "owner": owner_reference(obj, controller=True)}


def _unsupported(mr: ModelRollout) -> None:
    backend = mr.spec.backend
    if backend.name and backend.name != mr.name:
        raise UsageError(f"spec.backend.name: {backend.name!r} differs from the ModelRollout's "
                         f"name {mr.name!r}; kpigate names the Seldon objects after the "
                         "rollout — leave it out or rename the ModelRollout")
    defaults = (f"{mr.name}-baseline", f"{mr.name}-candidate")
    models = (backend.baseline_model or defaults[0], backend.candidate_model or defaults[1])
    if models != defaults:
        raise UsageError("spec.backend.models: kpigate names the v2 Models NAME-baseline and "
                         "NAME-candidate; leave the field out")


def create_request(mr: ModelRollout, policy_file: Path, *, kubeconfig: str | None = None,
                   context: str | None = None, state_dir: str | None = None,
                   shared_collector: bool = False) -> tuple[str, dict[str, Any]]:
    """(model URI, ``-C`` options) that start the rollout ``mr`` asks for.

    ``policy_file`` holds the policy (inline, or read from its ConfigMap by the caller).
    """
    _unsupported(mr)
    spec = mr.spec
    raw: dict[str, Any] = {
        "policy": str(policy_file), "promote_alias": spec.model.promote_alias,
        "seldon_version": spec.backend.seldon_version, "replicas": spec.backend.replicas,
        "collector_url": spec.collector_url, "wait": True,
        # The worker *is* the operator's controller: never a ModelRollout of its own.
        "operator": "false",
    }
    if shared_collector:
        raw["shared_collector"] = True
    if spec.model.baseline is not None:
        raw["baseline"] = spec.model.baseline.model_uri(spec.model.name)
    for key, value in (("env_secret", spec.backend.env_secret),
                       ("prometheus_url", spec.prometheus_url), ("kubeconfig", kubeconfig),
                       ("kube_context", context), ("state_dir", state_dir)):
        if value:
            raw[key] = value
    return spec.model.candidate.model_uri(spec.model.name), raw


def _version_ref(uri: str, option: str) -> tuple[str, dict[str, str]]:
    """``models:/NAME/7`` → (NAME, {version: "7"}); ``models:/NAME@alias`` → alias."""
    body = uri.strip()[len("models:/"):] if uri.strip().startswith("models:/") else ""
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias and "/" not in alias:
            return name, {"alias": alias}
    else:
        name, _, version = body.partition("/")
        if name and version.isdigit() and int(version) > 0:
            return name, {"version": version}
    raise UsageError(f"{option}: {uri} — with the kpigate operator give models:/NAME/VERSION "
                     "or models:/NAME@ALIAS")


def modelrollout_for(name: str, namespace: str, model_uri: str, cfg: DeploymentConfig,
                     policy: Mapping[str, Any], tracking_uri: str) -> dict[str, Any]:
    """The ModelRollout object ``create -t kpigate:/seldon/NS`` applies in operator mode.

    ``policy`` is the frozen policy document (``-C stages`` applied), carried inline so
    the rollout does not depend on a file on the machine that created it.
    """
    model_name, candidate = _version_ref(model_uri, "-m")
    model: dict[str, Any] = {"name": model_name, "candidate": candidate,
                             "promoteAlias": cfg.promote_alias}
    if cfg.baseline:
        base_name, baseline = _version_ref(cfg.baseline, "-C baseline")
        if base_name != model_name:
            raise UsageError(f"-C baseline={cfg.baseline}: must be a version of {model_name} "
                             "(the operator rolls out versions of one registered model)")
        model["baseline"] = baseline
    if not cfg.collector_url:
        raise UsageError("-C collector_url: needed with the kpigate operator (the namespace's "
                         "collector, e.g. http://kpigate-collector:8080)")
    if not tracking_uri.startswith(("http://", "https://", "databricks")):
        raise UsageError(f"MLFLOW_TRACKING_URI={tracking_uri}: the operator reaches MLflow "
                         "over HTTP; set MLFLOW_TRACKING_URI to the tracking server's URL")
    backend: dict[str, Any] = {
        "kind": SELDON_DEPLOYMENT if cfg.seldon_version == 1 else EXPERIMENT,
        "replicas": cfg.replicas}
    if cfg.env_secret:
        backend["envSecretRef"] = {"name": cfg.env_secret}
    spec: dict[str, Any] = {
        "model": model, "policy": {"inline": json.loads(json.dumps(dict(policy)))},
        "backend": backend, "tracking": {"uri": tracking_uri},
        "collector": {"url": cfg.collector_url}, "paused": False}
    for key, value in (("prometheusUrl", cfg.prometheus_url),):
        if value:
            spec[key] = value
    obj = {"apiVersion": API_VERSION, "kind": KIND,
           "metadata": {"name": name, "namespace": namespace,
                        "annotations": {CREATED_BY_ANNOTATION: "mlflow deployments create"}},
           "spec": spec}
    ModelRollout.from_object(obj)  # the CRD's own rules, checked before sending
    return obj


def policy_text(mr: ModelRollout, read_configmap: Any) -> str:
    """The policy document's text: inline, or the key of its ConfigMap
    (``read_configmap(name) -> dict | None``)."""
    source = mr.spec.policy
    if source.inline is not None:
        return yaml.safe_dump(dict(source.inline), sort_keys=False)
    cm = read_configmap(source.config_map)
    if cm is None:
        raise UsageError(f"spec.policy.configMapRef: ConfigMap {source.config_map!r} not found "
                         f"in {mr.namespace}; create it or fix the name")
    text = (cm.get("data") or {}).get(source.key)
    if not text:
        raise UsageError(f"spec.policy.configMapRef.key: ConfigMap {source.config_map!r} has "
                         f"no key {source.key!r}; fix the key")
    return str(text)
