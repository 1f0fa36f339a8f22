"""The rollout policy: stages, KPIs, error budget and registry guard, validated from YAML.

A policy is written once per model (the counterpart of Argo Rollouts' AnalysisTemplate or
Flagger's ``analysis`` block). ``load_policy`` turns a YAML file into frozen dataclasses or
raises :class:`~mlflow_kpigate.core.errors.PolicyError` listing *every* problem, each as
``path.in.file: what is wrong and how to fix it``. Every field is documented in
``docs/policy.md``.

The package: ``vocabulary`` (enums and names), ``model`` (the frozen values), ``problems``
(the problem collector and field checks), ``stages``, ``kpis``, ``sections``, ``metrics``
and ``bake`` (one validator per part of the document), ``alert_urls`` (where alerts may
go), ``yaml_text`` (the strict YAML reader: no duplicate keys, bounded nesting) and
``loading`` (``policy_from_dict``, ``load_policy``). Import from here; the modules are
the package's own layout.

The validator is hand-written rather than pydantic models (pydantic v2 comes with MLflow),
because pydantic cannot keep today's messages without a translation layer larger than the
validator. Pydantic reports an unknown key as ``Extra inputs are not permitted`` with no
"did you mean", and after the field errors instead of first; a missing field at the field
(``kpis.2.name: Field required``) where we say ``kpis[2]: needs a 'name'``; and infinity
against a bound (``Input should be less than or equal to 0.5``) where we say ``must be a
finite number``. Above all, a model validator can raise only one error and does not run at
all once any field has failed, so cross-field problems (``max_duration`` shorter than
``min_dwell``, fields that do not apply to a KPI's kind) would disappear whenever the same
document also has a plain type error, while this validator lists them all in one run.
"""

from __future__ import annotations

from mlflow_kpigate.policy.alert_urls import PAGERDUTY_HOSTS, SLACK_HOSTS, alert_url_problem
from mlflow_kpigate.policy.kpis import direction_is_higher, parse_margin
from mlflow_kpigate.policy.loading import load_policy, policy_from_dict
from mlflow_kpigate.policy.model import (
    DEFAULT_BAKE_ARL,
    AlertsConfig,
    Bake,
    ControlLimits,
    Evaluation,
    KpiQuery,
    KpiSpec,
    Margin,
    MetricsConfig,
    MinSamples,
    Policy,
    PrometheusSettings,
    Readiness,
    Stage,
)
from mlflow_kpigate.policy.stages import parse_stage_shortcut
from mlflow_kpigate.policy.vocabulary import (
    COUNT,
    FAIRNESS_RATES,
    LATENCY,
    PROPORTION_METRICS,
    QUERY_PLACEHOLDER,
    QUERY_PLACEHOLDERS,
    Direction,
    KpiKind,
    OnTimeout,
    ReadinessAction,
    RequestsFrom,
    Role,
)

__all__ = [
    "COUNT",
    "DEFAULT_BAKE_ARL",
    "FAIRNESS_RATES",
    "LATENCY",
    "PAGERDUTY_HOSTS",
    "PROPORTION_METRICS",
    "QUERY_PLACEHOLDER",
    "QUERY_PLACEHOLDERS",
    "SLACK_HOSTS",
    "AlertsConfig",
    "Bake",
    "ControlLimits",
    "Direction",
    "Evaluation",
    "KpiKind",
    "KpiQuery",
    "KpiSpec",
    "Margin",
    "MetricsConfig",
    "MinSamples",
    "OnTimeout",
    "Policy",
    "PrometheusSettings",
    "Readiness",
    "ReadinessAction",
    "RequestsFrom",
    "Role",
    "Stage",
    "alert_url_problem",
    "direction_is_higher",
    "load_policy",
    "parse_margin",
    "parse_stage_shortcut",
    "policy_from_dict",
]
