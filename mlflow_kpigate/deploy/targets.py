"""Target URIs: which Deployer serves ``kpigate``, ``kpigate:/local``, ``kpigate:/seldon/NS``."""

from __future__ import annotations

from mlflow_kpigate.core import extras
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.deploy.deployer import Deployer


def deployer_for(target_uri: str) -> Deployer:
    """The deployer of ``target_uri`` (``UsageError`` for an unknown target, or for a
    cluster target when the ``seldon`` extra is not installed)."""
    scheme, _, rest = target_uri.strip().partition(":")
    path = rest.strip("/")
    if scheme == "kpigate" and path.split("/")[0] == "seldon":
        extras.require(extras.SELDON, f"-t {target_uri.strip()}")
        from mlflow_kpigate.deploy.seldon import SeldonDeployer

        return SeldonDeployer(target_uri)
    if scheme == "kpigate" and path in ("", "local"):
        from mlflow_kpigate.deploy.local import LocalDeployer

        return LocalDeployer(target_uri)
    raise UsageError(f"-t {target_uri}: unknown kpigate target; use kpigate, kpigate:/local "
                     "or kpigate:/seldon/NAMESPACE")
