"""The Seldon Core backend: the Model Router as SeldonDeployment/Experiment canaries.

Pure parts (no cluster access), re-exported here:

* :mod:`.target` — :class:`SeldonTarget` (``kpigate:/seldon/NAMESPACE`` + ``-C`` settings);
* :mod:`.manifests` — the v1 ``SeldonDeployment`` and v2 ``Model``/``Experiment`` builders
  and the traffic each rollout state implies;
* :mod:`.patches` — RFC 6902 patches guarded by ``test`` operations, and a small
  interpreter to apply them;
* :mod:`.webhook` — Seldon's admission rules as checks that raise :class:`ManifestError`.

Parts that talk to the cluster through the ``kubernetes`` client, imported by name:
:mod:`.kinds` (resource kinds, kpigate's labels, owner references), :mod:`.cluster` (one
namespace, the API client), :mod:`.objects` (one kind's objects: get, list, create, guarded
patches, delete), :mod:`.cluster_errors`, :mod:`.readiness` (pure: has Seldon rolled out
what was applied), :mod:`.traffic` (the controller's TrafficBackend) and
:mod:`.state_store` (rollout state and audit log in ConfigMaps). Which of them a rollout
uses is decided in :mod:`mlflow_kpigate.deploy.seldon`; ``kpigate render`` prints what
the pure parts build.
"""

from mlflow_kpigate.backends.seldon.manifests import (
    BASELINE,
    CANDIDATE,
    MANAGED_SPEC_ANNOTATION,
    ModelRef,
    RoleTraffic,
    managed_spec_hash,
    managed_spec_matches,
    predictor,
    role_traffic,
    seldon_deployment,
    v2_experiment,
    v2_model_name,
    v2_models,
    whole_percent,
)
from mlflow_kpigate.backends.seldon.patches import (
    PatchConflict,
    apply_json_patch,
    remove_predictor_patch,
    v2_experiment_patch,
    weights_patch,
)
from mlflow_kpigate.backends.seldon.target import SeldonTarget, parse_target_uri
from mlflow_kpigate.backends.seldon.webhook import (
    ManifestError,
    check_experiment_rules,
    check_webhook_rules,
)

__all__ = [
    "BASELINE",
    "CANDIDATE",
    "MANAGED_SPEC_ANNOTATION",
    "ManifestError",
    "ModelRef",
    "PatchConflict",
    "RoleTraffic",
    "SeldonTarget",
    "apply_json_patch",
    "check_experiment_rules",
    "check_webhook_rules",
    "managed_spec_hash",
    "managed_spec_matches",
    "parse_target_uri",
    "predictor",
    "remove_predictor_patch",
    "role_traffic",
    "seldon_deployment",
    "v2_experiment",
    "v2_experiment_patch",
    "v2_model_name",
    "v2_models",
    "weights_patch",
    "whole_percent",
]
