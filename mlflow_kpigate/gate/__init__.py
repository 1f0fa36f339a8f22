"""The decision engine: pure functions from KPI aggregates and a policy to a Decision.

Public API::

    from mlflow_kpigate.gate import evaluate, StageSample, Decision, RegistryBaseline
    from mlflow_kpigate.gate import judge_bake, bake_streams    # after promotion

``evaluate`` is the engine's rule (:mod:`.engine`) with the recent-window check of
:mod:`.window` (a no-op unless the policy sets ``evaluation.window_share``); ``judge_bake``
is the bake's change detector (:mod:`.bake`, :mod:`.change_detector`). No I/O happens here;
the controller (``rollout/``) feeds samples in and acts on the result.
"""

from mlflow_kpigate.core.baseline import BaselineKpi, RegistryBaseline
from mlflow_kpigate.core.decision import Action, Check, Decision, Evidence, Verdict
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.bake import bake_streams, judge_bake
from mlflow_kpigate.gate.window import evaluate

__all__ = [
    "Action",
    "BaselineKpi",
    "Check",
    "Decision",
    "Evidence",
    "RegistryBaseline",
    "StageSample",
    "Verdict",
    "bake_streams",
    "evaluate",
    "judge_bake",
]
