"""Seldon Core objects for a rollout: the v1 SeldonDeployment, v2 Models and Experiment.

Everything here is a pure function from values (:class:`~.target.SeldonTarget`,
:class:`ModelRef`, :class:`~mlflow_kpigate.core.state.Weights`) to plain dicts ready
for the Kubernetes API or ``yaml.safe_dump``; applying them is the controller's job.

Traffic per rollout state (Seldon v1; v2 uses the same numbers as Experiment weights):

=====================  ==================  ==========================================
state                  baseline predictor  candidate predictor
=====================  ==================  ==========================================
shadow                 traffic 100         ``shadow: true``, traffic 100
canary p %             traffic 100 - p     traffic p
baking                 ``shadow: true``,   traffic 100
                       traffic 100
promoted               traffic 0           traffic 100, then the baseline is removed
rolled back/detached   traffic 100         traffic 0, then the candidate is removed
=====================  ==================  ==========================================

The shadow predictor carries traffic 100 although Seldon does not count a shadow's
traffic towards the split: with Istio the mirror ignores it, but with Ambassador/Emissary
Seldon turns it into the shadow Mapping's weight, where 0 would mirror nothing. While a
rollout bakes the roles of the shadow stage swap: the candidate is the one live predictor
and the previous version mirrors every request (Seldon allows one shadow next to one live
predictor at 100). In v2 the Experiment then routes everything to the candidate Model,
mirrors to the baseline Model and names the candidate its ``default`` (an Experiment's
default must be one of its candidates, and a mirrored Model may not be one).

Seldon v1 keeps no ``status.observedGeneration``, so the controller cannot tell from the
status whether Seldon has acted on its last change. kpigate therefore stamps the
annotation ``kpigate.io/managed-spec`` with :func:`managed_spec_hash` of what it applied:
a hash over only the fields kpigate owns (predictor names, traffic, shadow flags and model
URIs), which Seldon's defaulting webhook leaves alone. :func:`managed_spec_matches` tells
whether the object in the cluster still routes the way kpigate last set it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.backends.seldon.target import SeldonTarget
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.state import Weights

#: API version and kind of the Seldon Core v1 resource.
SDEP_API_VERSION = "machinelearning.seldon.io/v1"
SDEP_KIND = "SeldonDeployment"
#: API version of the Seldon Core v2 ``Model`` and ``Experiment`` resources.
V2_API_VERSION = "mlops.seldon.io/v1alpha1"

BASELINE = "baseline"
CANDIDATE = "candidate"
#: Predictor names (v1) and Model name suffixes (v2); each equals the kpigate role.
ROLES = (BASELINE, CANDIDATE)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kpigate"
ROLLOUT_LABEL = "kpigate.io/rollout"
ROLE_LABEL = "kpigate.io/role"
MODEL_VERSION_LABEL = "kpigate.io/model-version"
#: Seldon's Istio DestinationRule selects a predictor's pods by this label.
ISTIO_VERSION_LABEL = "version"
MANAGED_SPEC_ANNOTATION = "kpigate.io/managed-spec"

#: The one graph node of each predictor.
GRAPH_NODE = "model"
MLFLOW_SERVER = "MLFLOW_SERVER"
#: Requirement a v2 Server must offer to load an MLflow model (MLServer's mlflow runtime).
V2_REQUIREMENTS = ("mlflow",)

_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_UNRESOLVED_SCHEMES = ("models:", "runs:")


@dataclass(frozen=True)
class ModelRef:
    """A model version as Seldon loads it.

    ``storage_uri`` is where the MLflow model directory really is (``s3://…``, ``gs://…``,
    …), not a ``models:/`` or ``runs:/`` reference: Seldon's storage initializer cannot
    resolve those. ``version`` and ``model_name`` only label the objects (either may be
    empty when the URI was given directly).
    """

    version: str
    storage_uri: str
    model_name: str = ""

    def __post_init__(self) -> None:
        uri = self.storage_uri.strip()
        if not uri:
            raise UsageError("storage_uri: empty; give the model's artifact location, e.g. "
                             "s3://bucket/path/to/model")
        if uri.lower().startswith(_UNRESOLVED_SCHEMES):
            raise UsageError(f"storage_uri: {uri!r} is an MLflow reference, not a storage "
                             "location; resolve it through the registry (Registry.resolve) "
                             "or give the artifact URI, e.g. s3://bucket/path/to/model")
        if len(self.version) > 63 or not _LABEL_VALUE.fullmatch(self.version):
            raise UsageError(f"version: {self.version!r} cannot be a Kubernetes label value; "
                             "use at most 63 letters, digits, '-', '_' or '.'")

    @classmethod
    def from_registry(cls, ref: Any) -> ModelRef:
        """From a resolved :class:`mlflow_kpigate.core.refs.ModelRef` (name, version, storage)."""
        return cls(version=str(ref.version), storage_uri=str(ref.storage_uri),
                   model_name=str(ref.name))


def check_model_uri_scheme(storage_uri: str) -> str | None:
    """A warning when pods in a cluster are unlikely to download ``storage_uri``, else None.

    Local paths and ``file:`` exist only on the machine that logged the model, and
    ``mlflow-artifacts:`` / ``dbfs:`` need an MLflow or Databricks client, which Seldon's
    storage initializer is not.
    """
    scheme = storage_uri.split(":", 1)[0].lower() if ":" in storage_uri else ""
    if not scheme or len(scheme) == 1 or scheme == "file":  # one letter: a Windows drive
        return ("a local path; the model pods cannot read it - store the model in a bucket "
                "(s3://, gs://, …) the cluster can reach")
    if scheme in ("mlflow-artifacts", "dbfs"):
        return (f"{scheme}: is read through MLflow, which Seldon cannot do; point the "
                "tracking server's artifact root at a bucket (s3://, gs://, …)")
    return None


@dataclass(frozen=True)
class RoleTraffic:
    """What one role's predictor (or v2 candidate) gets: a traffic share and a shadow flag."""

    traffic: int
    shadow: bool = False


def whole_percent(percent: float) -> int:
    """``percent`` as Seldon's integer traffic; ``UsageError`` naming the stage otherwise."""
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise UsageError(f"stages: {percent:g}% is not a traffic share; use 0 to 100")
    if percent != int(percent):
        low, high = math.floor(percent), math.ceil(percent)
        raise UsageError(f"stages: {percent:g}% is not a whole percent; Seldon splits traffic "
                         f"in whole percents, so use {low} or {high} in the policy's stages")
    return int(percent)


def role_traffic(weights: Weights) -> dict[str, RoleTraffic]:
    """Baseline and candidate traffic for ``weights`` (the table in the module docstring).

    A detached candidate gets traffic 0 (the first of the two rollback steps; removing its
    predictor is the second).
    """
    if not weights.candidate_attached:
        return {BASELINE: RoleTraffic(100), CANDIDATE: RoleTraffic(0)}
    if weights.shadow:
        return {BASELINE: RoleTraffic(100), CANDIDATE: RoleTraffic(100, shadow=True)}
    if weights.baseline_shadow:
        return {BASELINE: RoleTraffic(100, shadow=True), CANDIDATE: RoleTraffic(100)}
    percent = whole_percent(weights.candidate_percent)
    return {BASELINE: RoleTraffic(100 - percent), CANDIDATE: RoleTraffic(percent)}


def labels(target: SeldonTarget, role: str | None = None) -> dict[str, str]:
    """The labels every kpigate object carries (plus the role on per-role objects)."""
    out = {MANAGED_BY_LABEL: MANAGED_BY, ROLLOUT_LABEL: target.name}
    if role is not None:
        out[ROLE_LABEL] = role
    return out


def _role_labels(target: SeldonTarget, role: str, model: ModelRef) -> dict[str, str]:
    out = labels(target, role)
    if model.version:
        out[MODEL_VERSION_LABEL] = model.version
    return out


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")


def predictor(target: SeldonTarget, role: str, model: ModelRef, share: RoleTraffic
              ) -> dict[str, Any]:
    """One SeldonDeployment predictor named ``role`` serving ``model`` with ``share``."""
    _check_role(role)
    graph: dict[str, Any] = {
        "name": GRAPH_NODE,
        "type": "MODEL",
        "implementation": MLFLOW_SERVER,
        "modelUri": model.storage_uri,
        "children": [],
    }
    if target.env_secret:
        graph["envSecretRefName"] = target.env_secret
    if target.service_account:
        graph["serviceAccountName"] = target.service_account
    if target.logger_url:
        graph["logger"] = {"mode": "all", "url": target.logger_url}
    pred: dict[str, Any] = {"name": role, "replicas": target.replicas,
                            "traffic": share.traffic}
    if share.shadow:  # absent otherwise, as Seldon's defaulting leaves a false flag
        pred["shadow"] = True
    pred["labels"] = {**_role_labels(target, role, model), ISTIO_VERSION_LABEL: role}
    pred["graph"] = graph
    return pred


def seldon_deployment(target: SeldonTarget, baseline: ModelRef, candidate: ModelRef | None,
                      weights: Weights) -> dict[str, Any]:
    """The v1 SeldonDeployment for a rollout at ``weights``.

    Without a candidate (or with it detached) only the baseline predictor is built. A
    promoted rollout (candidate 100 %) still lists both, the baseline at 0; removing it is
    :func:`~.patches.remove_predictor_patch`'s job once Seldon has moved the traffic.
    """
    shares = role_traffic(weights)
    predictors = [predictor(target, BASELINE, baseline, shares[BASELINE])]
    if candidate is not None and weights.candidate_attached:
        predictors.append(predictor(target, CANDIDATE, candidate, shares[CANDIDATE]))
    else:
        predictors[0]["traffic"] = 100
    sdep: dict[str, Any] = {
        "apiVersion": SDEP_API_VERSION,
        "kind": SDEP_KIND,
        "metadata": {
            "name": target.name,
            "namespace": target.namespace,
            "labels": labels(target),
            "annotations": {},
        },
        "spec": {"name": target.name, "predictors": predictors},
    }
    sdep["metadata"]["annotations"][MANAGED_SPEC_ANNOTATION] = managed_spec_hash(sdep)
    return sdep


# --------------------------------------------------------------------------------------
# What kpigate owns in a SeldonDeployment, and whether the cluster still matches it
# --------------------------------------------------------------------------------------


def managed_view(sdep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The routing fields kpigate sets, per predictor in order (defaults made explicit)."""
    view = []
    for pred in (sdep.get("spec") or {}).get("predictors") or ():
        graph = pred.get("graph") or {}
        view.append({"name": pred.get("name"), "traffic": pred.get("traffic", 0),
                     "shadow": bool(pred.get("shadow", False)),
                     "modelUri": graph.get("modelUri")})
    return view


def managed_spec_hash(sdep: Mapping[str, Any]) -> str:
    """A short stable hash of :func:`managed_view` (the ``kpigate.io/managed-spec`` value)."""
    text = json.dumps(managed_view(sdep), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def managed_spec_matches(sdep: Mapping[str, Any]) -> bool:
    """True when ``sdep`` still routes as kpigate last applied (its annotation matches)."""
    annotations = (sdep.get("metadata") or {}).get("annotations") or {}
    return annotations.get(MANAGED_SPEC_ANNOTATION) == managed_spec_hash(sdep)


# --------------------------------------------------------------------------------------
# Seldon Core v2: one Model per role and an Experiment splitting between them
# --------------------------------------------------------------------------------------


def v2_model_name(target_name: str, role: str) -> str:
    """``NAME-baseline`` / ``NAME-candidate``."""
    _check_role(role)
    return f"{target_name}-{role}"


def v2_model(target: SeldonTarget, role: str, model: ModelRef) -> dict[str, Any]:
    """The v2 ``Model`` serving ``model`` for ``role`` (MLServer's mlflow runtime)."""
    spec: dict[str, Any] = {
        "storageUri": model.storage_uri,
        "requirements": list(V2_REQUIREMENTS),
        "replicas": target.replicas,
    }
    if target.env_secret:
        spec["secretName"] = target.env_secret
    return {
        "apiVersion": V2_API_VERSION,
        "kind": "Model",
        "metadata": {"name": v2_model_name(target.name, role), "namespace": target.namespace,
                     "labels": _role_labels(target, role, model)},
        "spec": spec,
    }


def v2_models(target: SeldonTarget, baseline: ModelRef, candidate: ModelRef | None
              ) -> list[dict[str, Any]]:
    """The baseline's ``Model`` and, when given, the candidate's."""
    models = [v2_model(target, BASELINE, baseline)]
    if candidate is not None:
        models.append(v2_model(target, CANDIDATE, candidate))
    return models


def v2_routing(target_name: str, weights: Weights
               ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Experiment ``candidates`` and ``mirror`` for ``weights`` (integer weights).

    In shadow the baseline is the only candidate (weight 100) and the candidate Model gets
    a 100 % mirror; while baking the reverse; a detached candidate is left out; otherwise
    both are listed with the split (the baseline at weight 0 once promoted, so
    ``default`` stays a candidate).
    """
    shares = role_traffic(weights)
    base = {"name": v2_model_name(target_name, BASELINE), "weight": shares[BASELINE].traffic}
    cand_name = v2_model_name(target_name, CANDIDATE)
    if not weights.candidate_attached:
        return [{**base, "weight": 100}], None
    if shares[CANDIDATE].shadow:
        return [base], {"name": cand_name, "percent": 100}
    if shares[BASELINE].shadow:
        return [{"name": cand_name, "weight": 100}], {"name": base["name"], "percent": 100}
    return [base, {"name": cand_name, "weight": shares[CANDIDATE].traffic}], None


def v2_default(target_name: str, weights: Weights) -> str:
    """The Experiment's ``default`` Model: the baseline, except while baking (the
    candidate, since the mirrored baseline may not be a candidate)."""
    role = CANDIDATE if weights.candidate_attached and weights.baseline_shadow else BASELINE
    return v2_model_name(target_name, role)


def v2_experiment(target: SeldonTarget, weights: Weights) -> dict[str, Any]:
    """The v2 ``Experiment`` named after the deployment, taking over the baseline's endpoint."""
    candidates, mirror = v2_routing(target.name, weights)
    spec: dict[str, Any] = {"default": v2_default(target.name, weights),
                            "candidates": candidates}
    if mirror is not None:
        spec["mirror"] = mirror
    return {
        "apiVersion": V2_API_VERSION,
        "kind": "Experiment",
        "metadata": {"name": target.name, "namespace": target.namespace,
                     "labels": labels(target)},
        "spec": spec,
    }
