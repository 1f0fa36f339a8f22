"""Simulated staged rollouts on synthetic streams (``kpigate simulate`` and the benchmarks).

Try a policy before going live: the same gate decides, on a stream whose truth you set.
Modules: :mod:`.stream` (synthetic data), :mod:`.paired_stream` (both models on the same
requests: shadow stages and the bake), :mod:`.scenarios` (built-in scenarios and the
file format), :mod:`.rules` (the gate and its foils), :mod:`.oracle` (the known-truth SPRT
reference), :mod:`.variants` (derived policies: shadow stage first), :mod:`.runner` (one
rollout through the real controller) and :mod:`.figures` (figures over many runs).
"""

from mlflow_kpigate.simulate.figures import RunRecord, summarise
from mlflow_kpigate.simulate.oracle import OracleRule, oracle_tests
from mlflow_kpigate.simulate.rules import RULES, KpigateRule, PaperRule, Rule, RuleResult, ZTestRule
from mlflow_kpigate.simulate.runner import Look, Outcome, registry_from_stream, run_rollout
from mlflow_kpigate.simulate.scenarios import (
    BUILTIN,
    GOOD,
    builtin,
    load_scenarios,
    resolve,
    scenario_from_dict,
    should_promote,
)
from mlflow_kpigate.simulate.stream import RoleModel, StreamGenerator, StreamSpec
from mlflow_kpigate.simulate.variants import with_shadow_stage

__all__ = [
    "BUILTIN",
    "GOOD",
    "RULES",
    "KpigateRule",
    "Look",
    "OracleRule",
    "Outcome",
    "PaperRule",
    "RoleModel",
    "Rule",
    "RuleResult",
    "RunRecord",
    "StreamGenerator",
    "StreamSpec",
    "ZTestRule",
    "builtin",
    "load_scenarios",
    "oracle_tests",
    "registry_from_stream",
    "resolve",
    "run_rollout",
    "scenario_from_dict",
    "should_promote",
    "summarise",
    "with_shadow_stage",
]
