"""The embedded backend: a router serving baseline and candidate pyfunc models on one machine.

Public API::

    from mlflow_kpigate.backends.local import RouterConfig, create_app, serve

* :func:`create_app` (:mod:`.routes`) builds the ASGI app from a :class:`RouterConfig`
  (:mod:`.config`), a :class:`~mlflow_kpigate.metrics.Collector` and a weights source;
* :func:`serve` (or ``python -m mlflow_kpigate.backends.local.server DIR``) runs it for a
  deployment directory holding a saved rollout state: a main process (:mod:`.server`)
  with ``workers`` worker processes (:mod:`.worker`) on one port and one candidate
  process each (:mod:`.candidate_worker`, :mod:`.candidate_process`); paths in
  :mod:`.layout`;
* :mod:`.serving` scores a request (role choice, candidate fallback, prediction log),
  calling the baseline through :mod:`.model_calls` and the candidate through a
  :mod:`.scorers` ``Scorer`` (:mod:`.candidate_scorer` → :mod:`.candidate_client` →
  :mod:`.candidate_protocol`); :mod:`.shadow` runs shadow copies and
  :mod:`.router_metrics` holds the Prometheus metrics;
* :mod:`.routing` is the sticky split (MLflow's scoring protocol is
  :mod:`mlflow_kpigate.core.payloads`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# Imported on first use (PEP 562): the state store, the traffic nudge and the processes
# that use them should not pay for FastAPI and pandas, which only the router needs.
_EXPORTS = {
    "RouterConfig": "config",
    "create_app": "routes",
    "DEFAULT_ROUTING_HEADER": "routing",
    "CachedWeights": "routing",
    "RoutingKey": "routing",
    "choose_role": "routing",
    "unit_interval": "routing",
}

__all__ = [*sorted(_EXPORTS), "serve"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(directory: Path) -> None:
    """Serve a deployment directory until SIGTERM/SIGINT (see :mod:`.server`)."""
    # Imported here so that ``python -m mlflow_kpigate.backends.local.server`` does not
    # find the module already imported by its package (runpy warns about that).
    from mlflow_kpigate.backends.local.server import serve as _serve

    _serve(directory)
