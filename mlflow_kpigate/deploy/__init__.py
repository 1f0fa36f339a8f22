"""Composition roots: one Deployer per backend, the only place that picks concrete parts.

See :mod:`.deployer` for the interface and :func:`~.targets.deployer_for`; :mod:`.local`
(processes on this machine) and :mod:`.seldon` (Seldon Core on Kubernetes) implement it.

The names below are imported on first use (PEP 562): ``python -m
mlflow_kpigate.deploy.local_supervisor`` imports this package first, and the supervisor
starts the router sooner without the policy model and numpy that the Deployer protocol
pulls in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow_kpigate.deploy.deployer import Deployer, Progress, Rollout
    from mlflow_kpigate.deploy.targets import deployer_for

_EXPORTS = {"Deployer": "deployer", "Progress": "deployer", "Rollout": "deployer",
            "deployer_for": "targets"}

__all__ = ["Deployer", "Progress", "Rollout", "deployer_for"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
