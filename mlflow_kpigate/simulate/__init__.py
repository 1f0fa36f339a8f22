"""Simulated staged rollouts on synthetic streams (``kpigate simulate`` and the benchmarks).

Try a policy before going live: the same gate decides, on a stream whose truth you set.
"""

from mlflow_kpigate.simulate.rules import RULES, KpigateRule, PaperRule, Rule, RuleResult, ZTestRule
from mlflow_kpigate.simulate.runner import Look, Outcome, registry_from_stream, run_rollout
from mlflow_kpigate.simulate.scenarios import (
    BUILTIN,
    GOOD,
    builtin,
    load_scenarios,
    resolve,
    scenario_from_dict,
)
from mlflow_kpigate.simulate.stream import RoleModel, StreamGenerator, StreamSpec

__all__ = [
    "BUILTIN",
    "GOOD",
    "RULES",
    "KpigateRule",
    "Look",
    "Outcome",
    "PaperRule",
    "RoleModel",
    "Rule",
    "RuleResult",
    "StreamGenerator",
    "StreamSpec",
    "ZTestRule",
    "builtin",
    "load_scenarios",
    "registry_from_stream",
    "resolve",
    "run_rollout",
    "scenario_from_dict",
]
