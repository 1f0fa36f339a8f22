"""What ``mlflow deployments get`` shows of an embedded rollout, read from its directory.

:func:`deployment_info` builds the mapping from a rollout's state and directory (the live
one, or the archived copy a follower went after); :func:`frozen_policy` reads the policy
the rollout froze when it was created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy import local_processes as procs
from mlflow_kpigate.deploy.local_layout import metrics_endpoint
from mlflow_kpigate.policy import Policy, load_policy

__all__ = ["FLAVOR", "deployment_info", "frozen_policy"]

FLAVOR = "python_function"


def frozen_policy(directory: Path, state: RolloutState) -> Policy | None:
    """The rollout's frozen policy copy (None if it can no longer be read)."""
    for path in (directory / "policy.yaml", Path(state.policy_file)):
        if path.is_file():
            try:
                return load_policy(path)
            except KpigateError:
                continue
    return None


def deployment_info(state: RolloutState, directory: Path) -> dict[str, Any]:
    """The deployment as ``get_deployment`` returns it, from its state and its directory
    (the deployment's, or the archived copy a waiter followed after a ``delete``)."""
    policy = frozen_policy(directory, state) or load_policy(state.policy_file)
    return {
        "name": state.name,
        "flavor": FLAVOR,
        "status": state.status,
        "phase": state.phase.value,
        "paused": state.paused,
        "stage": policy.stages[state.stage_index].describe(),
        "stage_index": state.stage_index,
        "weights": state.weights.describe(),
        "candidate": state.candidate_uri,
        "baseline": state.baseline_uri,
        "endpoint": f"http://127.0.0.1:{state.port}",
        # The controller's Prometheus /metrics while it serves one (None otherwise).
        "metrics_endpoint": metrics_endpoint(directory),
        "reason": state.reason,
        "evaluations": state.evaluations,
        "rollout_run_id": state.rollout_run_id,
        "state_dir": str(directory),
        "running": procs.running(directory),
    }
