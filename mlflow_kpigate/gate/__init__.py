"""The decision engine: pure functions from KPI aggregates and a policy to a Decision.

Public API::

    from mlflow_kpigate.gate import evaluate, StageSample, Decision, RegistryBaseline

No I/O happens here; the controller (``rollout/``) feeds samples in and acts on the result.
"""

from .baseline import BaselineKpi, RegistryBaseline
from .decision import Action, Check, Decision, Evidence, Verdict
from .engine import evaluate
from .estimators import StageSample

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
