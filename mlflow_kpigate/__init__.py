"""mlflow-kpigate: staged rollouts of MLflow model versions, decided by KPI evidence.

The four parts of the framework live in their own sub-packages:

- ``kpis``: streaming, mergeable KPI aggregators (the data the gate consumes);
- ``gate``: the pure decision engine (anytime-valid comparison → promote/hold/rollback);
- ``backends`` / ``rollout``: the model router and rollback controller (later issues);
- ``simulate``: synthetic staged rollouts for trying policies before going live.
"""

from mlflow_kpigate._version import __version__

__all__ = ["__version__"]
