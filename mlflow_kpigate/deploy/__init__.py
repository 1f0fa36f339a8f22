"""Composition roots: one Deployer per backend, the only place that picks concrete parts.

See :mod:`.deployer` for the interface and :func:`~.targets.deployer_for`; :mod:`.local`
(processes on this machine) and :mod:`.seldon` (Seldon Core on Kubernetes) implement it.
"""

from mlflow_kpigate.deploy.deployer import Deployer, Progress, Rollout
from mlflow_kpigate.deploy.targets import deployer_for

__all__ = ["Deployer", "Progress", "Rollout", "deployer_for"]
