"""The embedded backend: a router serving baseline and candidate pyfunc models on one machine.

Public API::

    from mlflow_kpigate.backends.local import RouterConfig, create_app, serve

* :func:`create_app` (:mod:`.routes`) builds the ASGI app from a :class:`RouterConfig`
  (:mod:`.config`), a :class:`~mlflow_kpigate.metrics.Collector` and a weights source;
* :func:`serve` (or ``python -m mlflow_kpigate.backends.local.server DIR``) runs it for a
  deployment directory holding a saved rollout state;
* :mod:`.serving` scores a request (role choice, candidate fallback, prediction log),
  calling the models through :mod:`.model_calls`; :mod:`.shadow` runs shadow copies and
  :mod:`.router_metrics` holds the Prometheus metrics;
* :mod:`.routing` is the sticky split (MLflow's scoring protocol is
  :mod:`mlflow_kpigate.core.payloads`).
"""

from pathlib import Path

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.routes import create_app
from mlflow_kpigate.backends.local.routing import (
    DEFAULT_ROUTING_HEADER,
    CachedWeights,
    RoutingKey,
    choose_role,
    unit_interval,
)

__all__ = [
    "DEFAULT_ROUTING_HEADER",
    "CachedWeights",
    "RouterConfig",
    "RoutingKey",
    "choose_role",
    "create_app",
    "serve",
    "unit_interval",
]


def serve(directory: Path) -> None:
    """Serve a deployment directory until SIGTERM/SIGINT (see :mod:`.server`)."""
    # Imported here so that ``python -m mlflow_kpigate.backends.local.server`` does not
    # find the module already imported by its package (runpy warns about that).
    from mlflow_kpigate.backends.local.server import serve as _serve

    _serve(directory)
