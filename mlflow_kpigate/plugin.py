"""The ``kpigate`` MLflow deployment target (entry point ``mlflow.deployments: kpigate``).

This release ships the decision engine, the policy format and ``kpigate simulate``; the
embedded router/controller that ``create_deployment`` drives is the next piece of work.
Until it lands, every deployment operation fails with one clear message instead of
pretending to deploy, and :func:`target_help` says so.
"""

from __future__ import annotations

from typing import Any

from mlflow.deployments import BaseDeploymentClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

_NOT_YET = (
    "the kpigate deployment target cannot deploy yet: this version ships the KPI gate, "
    "policies and `kpigate simulate` only (try `kpigate simulate POLICY`); the embedded "
    "router and controller come in the next release"
)


def target_help() -> str:
    """Help text shown by ``mlflow deployments help -t kpigate``."""
    return (
        "kpigate: staged rollouts of MLflow model versions decided by KPI evidence.\n\n"
        "Status: " + _NOT_YET + ".\n\n"
        "Available now: `kpigate policy validate FILE`, `kpigate plan FILE --baseline-file F`,"
        " `kpigate simulate FILE --scenario NAME`. See README.md and docs/policy.md."
    )


def run_local(name: str, model_uri: str, flavor: str | None = None,
              config: dict[str, Any] | None = None) -> None:
    """``mlflow deployments run-local -t kpigate``: not available in this version."""
    raise MlflowException(_NOT_YET, error_code=INVALID_PARAMETER_VALUE)


class KpigateDeploymentClient(BaseDeploymentClient):
    """Deployment client for ``get_deploy_client("kpigate")``; see the module docstring."""

    def _unavailable(self) -> MlflowException:
        return MlflowException(_NOT_YET, error_code=INVALID_PARAMETER_VALUE)

    def create_deployment(self, name: str, model_uri: str, flavor: str | None = None,
                          config: dict[str, Any] | None = None, endpoint: str | None = None
                          ) -> dict[str, Any]:
        """Not available in this version (raises ``MlflowException``)."""
        raise self._unavailable()

    def update_deployment(self, name: str, model_uri: str | None = None,
                          flavor: str | None = None, config: dict[str, Any] | None = None,
                          endpoint: str | None = None) -> dict[str, Any]:
        """Not available in this version (raises ``MlflowException``)."""
        raise self._unavailable()

    def delete_deployment(self, name: str, config: dict[str, Any] | None = None,
                          endpoint: str | None = None) -> None:
        """Not available in this version (raises ``MlflowException``)."""
        raise self._unavailable()

    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """No deployments can exist yet: an empty list."""
        return []

    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        """Not available in this version (raises ``MlflowException``)."""
        raise self._unavailable()

    def predict(self, deployment_name: str | None = None, inputs: Any = None,
                endpoint: str | None = None) -> Any:
        """Not available in this version (raises ``MlflowException``)."""
        raise self._unavailable()
