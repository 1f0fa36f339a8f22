"""The embedded backend: a router serving baseline and candidate pyfunc models on one machine.

Public API::

    from mlflow_kpigate.backends.local import RouterConfig, create_app, serve

* :func:`create_app` builds the ASGI app from a :class:`RouterConfig`, a
  :class:`~mlflow_kpigate.metrics.Collector` and a weights source;
* :func:`serve` (or ``python -m mlflow_kpigate.backends.local.server DIR``) runs it for a
  deployment directory holding a saved rollout state;
* :mod:`.routing` is the sticky split, :mod:`.payloads` MLflow's scoring protocol.
"""

from pathlib import Path

from .app import PREDICTIONS_DB, RouterConfig, create_app, parse_feedback
from .payloads import PayloadError, format_predictions, interpret_output, parse_payload
from .routing import DEFAULT_ROUTING_HEADER, CachedWeights, RoutingKey, choose_role, unit_interval

__all__ = [
    "DEFAULT_ROUTING_HEADER",
    "PREDICTIONS_DB",
    "CachedWeights",
    "PayloadError",
    "RouterConfig",
    "RoutingKey",
    "choose_role",
    "create_app",
    "format_predictions",
    "interpret_output",
    "parse_feedback",
    "parse_payload",
    "serve",
    "unit_interval",
]


def serve(directory: Path) -> None:
    """Serve a deployment directory until SIGTERM/SIGINT (see :mod:`.server`)."""
    # Imported here so that ``python -m mlflow_kpigate.backends.local.server`` does not
    # find the module already imported by its package (runpy warns about that).
    from .server import serve as _serve

    _serve(directory)
