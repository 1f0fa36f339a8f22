"""The words a policy is written in: roles, directions, KPI kinds, timeout actions and names.

These enums and constants are shared by the policy's value types, its validator and the
code that runs a policy (the gate's estimators, the Prometheus source), which is why they
live apart from both.
"""

from __future__ import annotations

import re
from enum import Enum


class Role(str, Enum):
    """What a KPI is allowed to decide."""

    CRITICAL = "critical"  # any confident degradation (margin 0) rolls back
    GUARDRAIL = "guardrail"  # confident degradation beyond the margin rolls back
    SUCCESS = "success"  # the improvement the candidate is for: reported, never rolls back
    INFO = "info"  # reported only


class Direction(str, Enum):
    """Which way is better for a KPI."""

    HIGHER = "higher"
    LOWER = "lower"


class KpiKind(str, Enum):
    """How a KPI is measured, which fixes its estimator and variance (see docs/statistics.md)."""

    PROPORTION = "proportion"
    MEAN = "mean"
    QUANTILE = "quantile"
    AUC = "auc"
    FAIRNESS = "fairness"
    BUSINESS = "business"


class OnTimeout(str, Enum):
    """What happens when a stage reaches ``max_duration`` without a promote or rollback."""

    HOLD_AND_ALERT = "hold_and_alert"
    ROLLBACK = "rollback"
    PROMOTE_IF_NO_GUARDRAIL_FAILS = "promote_if_no_guardrail_fails"


#: Proportion metrics computed from the confusion matrix, with their better direction.
PROPORTION_METRICS: dict[str, Direction] = {
    "precision": Direction.HIGHER,
    "recall": Direction.HIGHER,
    "f1": Direction.HIGHER,
    "accuracy": Direction.HIGHER,
    "true_negative_rate": Direction.HIGHER,
    "false_positive_rate": Direction.LOWER,
    "false_negative_rate": Direction.LOWER,
    "error_rate": Direction.LOWER,
}

#: Rates whose ratio across segments a fairness KPI compares.
FAIRNESS_RATES: tuple[str, ...] = (
    "false_positive_rate",
    "false_negative_rate",
    "recall",
    "precision",
    "accuracy",
    "positive_rate",
)

#: The latency source name (seconds, measured by the router for every request).
LATENCY = "latency"
#: The business-KPI denominator meaning "per labelled prediction".
COUNT = "count"


class RequestsFrom(str, Enum):
    """Which Prometheus series give a cluster rollout's requests, errors and latency."""

    SELDON = "seldon"  # Seldon's own executor / model-server metrics
    KPIGATE = "kpigate"  # the in-cluster kpigate collector's kpigate_stage_* series

    def __str__(self) -> str:
        return self.value


class ReadinessAction(str, Enum):
    """What happens when a stage's traffic is not ready within ``readiness.timeout``."""

    HOLD = "hold"  # alert and keep waiting
    ABORT = "abort"  # send all traffic to the baseline and end the rollout

    def __str__(self) -> str:
        # The controller reads it with str(); Python 3.11 would otherwise give the member name.
        return self.value


#: Placeholders a custom PromQL template may use (see :data:`QUERY_PLACEHOLDER`).
QUERY_PLACEHOLDERS: tuple[str, ...] = (
    "deployment", "namespace", "role", "stage", "window", "start", "end",
)
#: ``{name}`` in a template. PromQL's own braces always hold ``label="value"`` matchers,
#: never a bare word, so they need no escaping.
QUERY_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
