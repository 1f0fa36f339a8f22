"""The decision engine: pure functions from KPI aggregates and a policy to a Decision.

Public API::

    from mlflow_kpigate.gate import evaluate, StageSample, Decision, RegistryBaseline

No I/O happens here; the controller (``rollout/``) feeds samples in and acts on the result.
"""

from mlflow_kpigate.core.baseline import BaselineKpi, RegistryBaseline
from mlflow_kpigate.core.decision import Action, Check, Decision, Evidence, Verdict
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.engine import evaluate

__all__ = [
    "Action",
    "BaselineKpi",
    "Check",
    "Decision",
    "Evidence",
    "RegistryBaseline",
    "StageSample",
    "Verdict",
    "evaluate",
]
