"""kpigate's own Kubernetes resource, ``ModelRollout`` (``kpigate.io/v1alpha1``).

The CRD is ``deploy/kubernetes/base/crd/kpigate.io_modelrollouts.yaml``; this package is
its Python model: the spec (:mod:`.spec`), the status (:mod:`.status`), the conditions
(:mod:`.conditions`) and the mapping from kpigate's rollout state to a status
(:mod:`.mapping`). It sits in the backends layer beside ``backends/seldon`` because it is
the cluster's side of a rollout, independent of which Seldon version serves it, and it
needs only ``core``; the operator that will reconcile ModelRollouts belongs in
``deploy/`` and is not built yet (docs/kubernetes.md, "ModelRollout (v1alpha1)").
"""

from __future__ import annotations

from mlflow_kpigate.backends.modelrollout.conditions import (
    AVAILABLE,
    DEGRADED,
    PROGRESSING,
    conditions_for,
)
from mlflow_kpigate.backends.modelrollout.mapping import status_from_state
from mlflow_kpigate.backends.modelrollout.resource import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ModelRollout,
)
from mlflow_kpigate.backends.modelrollout.spec import ModelRolloutSpec
from mlflow_kpigate.backends.modelrollout.status import Condition, ModelRolloutStatus

__all__ = ["API_VERSION", "AVAILABLE", "DEGRADED", "GROUP", "KIND", "PLURAL", "PROGRESSING",
           "VERSION", "Condition", "ModelRollout", "ModelRolloutSpec", "ModelRolloutStatus",
           "conditions_for", "status_from_state"]
