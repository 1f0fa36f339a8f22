"""Validation of rollout policies: every error path reports ``path: message``."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mlflow_kpigate.core.errors import USAGE_EXIT_CODE, PolicyError, UsageError
from mlflow_kpigate.policy import (
    Direction,
    KpiKind,
    KpiQuery,
    Margin,
    MetricsConfig,
    OnTimeout,
    PrometheusSettings,
    Readiness,
    ReadinessAction,
    RequestsFrom,
    Role,
    load_policy,
    parse_margin,
    parse_stage_shortcut,
    policy_from_dict,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"


def base() -> dict[str, Any]:
    """A small valid policy document that tests edit."""
    return {
        "stages": [{"shadow": True}, {"traffic": 5}, {"traffic": 50}, {"traffic": 100}],
        "kpis": [
            {"name": "precision", "kind": "proportion", "metric": "precision", "margin": 0.02},
            {"name": "errors", "kind": "proportion", "metric": "error_rate",
             "role": "critical", "margin": 0.01},
        ],
    }


def with_kpi(kpi: dict[str, Any]) -> dict[str, Any]:
    """``base()`` plus ``kpi`` as ``kpis[2]``."""
    doc = base()
    doc["kpis"].append(kpi)
    return doc


def problems(doc: Any) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy_from_dict(doc)
    return info.value.problems


def assert_problem(doc: Any, path: str, fragment: str) -> list[str]:
    """Validation fails with a problem at exactly ``path`` whose message has ``fragment``."""
    found = problems(doc)
    prefix = f"{path}: " if path else ""
    assert any(p.startswith(prefix) and fragment in p for p in found), found
    return found


# --------------------------------------------------------------------------------------
# Valid policies
# --------------------------------------------------------------------------------------


def test_base_document_is_valid() -> None:
    policy = policy_from_dict(base())
    assert [s.describe() for s in policy.stages] == ["shadow", "5%", "50%", "100%"]
    assert [s.name for s in policy.stages] == ["shadow", "canary-5", "canary-50", "full"]
    assert policy.stages[-1].is_final
    assert len(policy.gated_stages) == 3
    precision = policy.kpi("precision")
    assert precision.role is Role.GUARDRAIL
    assert precision.direction is Direction.HIGHER
    assert precision.margin == Margin(0.02, relative=False)
    assert policy.kpi("errors").direction is Direction.LOWER
    assert policy.evaluation.interval == 300
    assert policy.evaluation.alpha_rollback == 0.05
    assert not policy.control_limits.enabled
    with pytest.raises(KeyError):
        policy.kpi("nope")


def test_fraud_example_loads() -> None:
    policy = load_policy(EXAMPLES / "fraud.yaml")
    assert [s.describe() for s in policy.stages] == ["shadow", "5%", "25%", "50%", "100%"]
    assert [s.promote_margin_scale for s in policy.stages[1:4]] == [3, 2, 1]
    assert policy.evaluation.interval == 300
    assert policy.evaluation.maturity == 1800
    assert policy.control_limits.k == 2
    names = [k.name for k in policy.kpis]
    assert names == ["precision", "recall", "latency_p95", "fpr_fairness", "error_rate", "auc"]
    assert policy.kpi("error_rate").role is Role.CRITICAL
    assert policy.kpi("auc").role is Role.SUCCESS
    p95 = policy.kpi("latency_p95")
    assert p95.kind is KpiKind.QUANTILE
    assert p95.q == 0.95
    assert p95.margin == Margin(0.10, relative=True)
    fair = policy.kpi("fpr_fairness")
    assert fair.kind is KpiKind.FAIRNESS
    assert fair.segment_by == "region"
    assert policy.segment_fields == ("region",)
    assert policy.source == str(EXAMPLES / "fraud.yaml")
    # stage_defaults reach every stage that does not set the field itself
    assert all(s.on_timeout is OnTimeout.HOLD_AND_ALERT for s in policy.stages)
    assert policy.stages[1].min_dwell == 3600
    assert policy.stages[0].min_dwell == 1800


def test_minimal_example_loads() -> None:
    policy = load_policy(EXAMPLES / "minimal.yaml")
    assert len(policy.stages) == 5
    assert len(policy.kpis) == 2
    assert policy.stages[0].shadow


def test_stage_shortcut_string() -> None:
    doc = base()
    doc["stages"] = "shadow, 5%, 25, 50,100"
    policy = policy_from_dict(doc)
    assert [s.traffic for s in policy.stages] == [0, 5, 25, 50, 100]
    assert policy.stages[0].shadow


def test_stage_list_of_plain_items() -> None:
    doc = base()
    doc["stages"] = ["shadow", 10, 100]
    policy = policy_from_dict(doc)
    assert [s.describe() for s in policy.stages] == ["shadow", "10%", "100%"]


def test_parse_stage_shortcut() -> None:
    assert parse_stage_shortcut("shadow,5,100") == [
        {"shadow": True}, {"traffic": 5.0}, {"traffic": 100.0}]


def test_stage_defaults_apply_and_stage_fields_win() -> None:
    doc = base()
    doc["stage_defaults"] = {
        "min_samples": {"requests": 5000, "labelled": 500},
        "min_dwell": "1h",
        "max_duration": "1d",
        "on_timeout": "rollback",
        "promote_margin_scale": 2,
    }
    doc["stages"][1].update(min_samples={"labelled": 50}, on_timeout="hold_and_alert")
    policy = policy_from_dict(doc)
    shadow, five, fifty = policy.stages[:3]
    assert shadow.min_samples.requests == 5000
    assert shadow.min_dwell == 3600
    assert shadow.max_duration == 86400
    assert shadow.on_timeout is OnTimeout.ROLLBACK
    assert fifty.promote_margin_scale == 2
    assert five.on_timeout is OnTimeout.HOLD_AND_ALERT
    # min_samples merges key by key: the stage sets labelled, requests comes from defaults
    assert (five.min_samples.requests, five.min_samples.labelled) == (5000, 50)


def test_stage_defaults_null_is_ignored() -> None:
    doc = base()
    doc["stage_defaults"] = None
    assert len(policy_from_dict(doc).stages) == 4


def test_all_kinds_valid() -> None:
    doc = base()
    doc["kpis"] += [
        {"name": "lat", "kind": "mean", "source": "latency", "margin": "10%"},
        {"name": "basket", "kind": "mean", "source": "basket_value", "direction": "higher",
         "margin": 2.5, "role": "info"},
        {"name": "p99", "kind": "quantile", "q": 0.99, "margin": 0.05, "limit": 0.5},
        {"name": "auc", "kind": "auc", "role": "success"},
        {"name": "fair", "kind": "fairness", "metric": "recall", "segment_by": "country",
         "margin": "5%", "limit": 0.8},
        {"name": "revenue", "kind": "business", "numerator": "approved_amount",
         "denominator": "count", "direction": "higher", "margin": "3%"},
        {"name": "custom", "kind": "proportion", "metric": "custom", "numerator": "refunds",
         "denominator": "orders", "direction": "lower", "margin": 0.01},
    ]
    doc["control_limits"] = {"k": 3}
    doc["evaluation"] = {"interval": "1m", "maturity": "2h", "alpha_rollback": 0.01,
                         "alpha_promote": 0.1, "power": 0.9}
    doc["name"] = "shop-ranker"
    policy = policy_from_dict(doc)
    assert policy.name == "shop-ranker"
    assert policy.kpi("lat").log is True
    assert policy.kpi("lat").direction is Direction.LOWER
    assert not policy.kpi("lat").needs_labels
    assert policy.kpi("basket").log is False
    assert policy.kpi("p99").source == "latency"
    assert not policy.kpi("p99").needs_labels
    assert policy.kpi("fair").direction is Direction.HIGHER
    assert policy.kpi("errors").needs_labels is False
    assert policy.kpi("precision").needs_labels is True
    assert policy.value_names == ("basket_value", "approved_amount", "refunds", "orders")
    assert policy.control_limits.k == 3
    assert policy.evaluation.maturity == 7200
    assert not policy.kpi("auc").decides


def test_explicit_direction_overrides_default() -> None:
    doc = with_kpi({"name": "x", "kind": "proportion", "metric": "accuracy",
                    "direction": "lower", "margin": 0.01})
    assert policy_from_dict(doc).kpi("x").direction is Direction.LOWER


def test_null_limit_and_null_control_k_are_ignored() -> None:
    doc = with_kpi({"name": "x", "kind": "auc", "margin": 0.01, "limit": None})
    doc["control_limits"] = {"k": None}
    policy = policy_from_dict(doc)
    assert policy.kpi("x").limit is None
    assert not policy.control_limits.enabled


def test_load_policy_override_edits_document(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text((EXAMPLES / "minimal.yaml").read_text())

    def override(doc: dict[str, Any]) -> None:
        doc["evaluation"] = {"interval": "30s"}

    assert load_policy(path, override=override).evaluation.interval == 30


def test_margin_strings() -> None:
    assert parse_margin("10%") == Margin(0.1, relative=True)
    assert parse_margin(" 2.5% ") == Margin(0.025, relative=True)
    assert parse_margin(3) == Margin(3.0, relative=False)
    assert str(Margin(0.1, relative=True)) == "10%"
    assert str(Margin(0.02, relative=False)) == "0.02"


def test_policy_error_is_usage_error_with_exit_code_2() -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_dict({"stages": "5,100"}, source="p.yaml")
    err = info.value
    assert isinstance(err, UsageError)
    assert err.exit_code == USAGE_EXIT_CODE == 2
    assert err.source == "p.yaml"
    assert str(err).startswith("p.yaml: kpis: is required")


def test_every_problem_is_reported_at_once() -> None:
    doc = base()
    doc["evaluation"] = {"interval": "soon"}
    doc["kpis"][0]["margin"] = -1
    doc["kpis"][1]["role"] = "blocker"
    found = problems(doc)
    assert len(found) == 3
    assert "3 problems:" in str(PolicyError(found, "x.yaml"))


# --------------------------------------------------------------------------------------
# Top level
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [[1, 2], "text", 5])
def test_document_must_be_mapping(data: Any) -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_dict(data)
    assert info.value.problems[0].startswith("the policy must be a YAML mapping")


def test_unknown_top_level_key_with_suggestion() -> None:
    doc = base()
    doc["stagez"] = []
    assert_problem(doc, "stagez", "unknown field; did you mean 'stages'?")


def test_unknown_top_level_key_lists_allowed() -> None:
    doc = base()
    doc["zzz"] = 1
    assert_problem(doc, "zzz", "unknown field; allowed: version, name, evaluation")


@pytest.mark.parametrize("version", [2, "1", True])
def test_version(version: Any) -> None:
    doc = base()
    doc["version"] = version
    assert_problem(doc, "version", "only version 1 is supported")


@pytest.mark.parametrize(("name", "fragment"), [
    ("", "must be a non-empty name"),
    (7, "must be a non-empty name"),
    ("my policy", "use letters, digits, '_', '-' or '.' only"),
    ("a/b", "use letters, digits"),
])
def test_policy_name(name: Any, fragment: str) -> None:
    doc = base()
    doc["name"] = name
    assert_problem(doc, "name", fragment)


def test_stages_required() -> None:
    doc = base()
    del doc["stages"]
    assert_problem(doc, "stages", "is required (e.g. 'shadow,5,25,50,100'")


def test_kpis_required() -> None:
    doc = base()
    del doc["kpis"]
    assert_problem(doc, "kpis", "is required: a list of KPIs")


@pytest.mark.parametrize("kpis", [[], {"a": 1}, "precision"])
def test_kpis_must_be_non_empty_list(kpis: Any) -> None:
    doc = base()
    doc["kpis"] = kpis
    assert_problem(doc, "kpis", "must be a non-empty list of KPIs")


def test_at_least_one_decisive_kpi() -> None:
    doc = base()
    doc["kpis"] = [{"name": "auc", "kind": "auc", "role": "success"},
                   {"name": "acc", "kind": "proportion", "metric": "accuracy", "role": "info"}]
    assert_problem(doc, "kpis", "at least one KPI must have role critical or guardrail")


def test_duplicate_kpi_names() -> None:
    doc = with_kpi({"name": "precision", "kind": "auc", "margin": 0.01})
    assert_problem(doc, "kpis[2].name", "'precision' is already used by kpis[0]")


# --------------------------------------------------------------------------------------
# evaluation and control_limits
# --------------------------------------------------------------------------------------


def test_evaluation_must_be_mapping() -> None:
    doc = base()
    doc["evaluation"] = 5
    assert_problem(doc, "evaluation", "must be a mapping (key: value lines), got a number")


def test_evaluation_null_means_defaults() -> None:
    doc = base()
    doc["evaluation"] = None
    assert policy_from_dict(doc).evaluation.interval == 300


def test_evaluation_unknown_key() -> None:
    doc = base()
    doc["evaluation"] = {"intervall": "5m"}
    assert_problem(doc, "evaluation.intervall", "did you mean 'interval'?")


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("interval", 0, "must be > 0, e.g. 5m"),
    ("interval", "0s", "must be > 0, e.g. 5m"),
    ("interval", "soon", "'soon' is not a duration: use e.g. 30s, 15m, 2h or 1h30m"),
    ("interval", -5, "must be a non-negative duration"),
    ("interval", True, "not a boolean"),
    ("interval", "", "not empty"),
    ("interval", [5], "must be a duration such as 30s, 15m or 2h"),
    ("maturity", "5 minutes", "is not a duration"),
    ("alpha_rollback", 0, "must be > 0, got 0"),
    ("alpha_rollback", 0.6, "must be <= 0.5, got 0.6"),
    ("alpha_rollback", "5%", "must be a number, got text"),
    ("alpha_promote", -0.1, "must be > 0"),
    ("alpha_promote", True, "must be a number, got a boolean"),
    ("power", 1, "must be < 1, got 1"),
    ("power", 0.4, "must be >= 0.5, got 0.4"),
    ("power", float("nan"), "must be a finite number"),
    ("power", None, "must be a number, got nothing"),
])
def test_evaluation_values(key: str, value: Any, fragment: str) -> None:
    doc = base()
    doc["evaluation"] = {key: value}
    assert_problem(doc, f"evaluation.{key}", fragment)


def test_control_limits_must_be_mapping() -> None:
    doc = base()
    doc["control_limits"] = 2
    assert_problem(doc, "control_limits", "must be a mapping")


def test_control_limits_unknown_key() -> None:
    doc = base()
    doc["control_limits"] = {"sigma": 2}
    assert_problem(doc, "control_limits.sigma", "unknown field; allowed: k")


@pytest.mark.parametrize(("k", "fragment"), [
    (0, "must be > 0, got 0"),
    (-1, "must be > 0"),
    ("2", "must be a number, got text"),
    (float("inf"), "must be a finite number"),
])
def test_control_limits_k(k: Any, fragment: str) -> None:
    doc = base()
    doc["control_limits"] = {"k": k}
    assert_problem(doc, "control_limits.k", fragment)


# --------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------


def with_stages(stages: Any, defaults: Any = None) -> dict[str, Any]:
    doc = base()
    doc["stages"] = stages
    if defaults is not None:
        doc["stage_defaults"] = defaults
    return doc


@pytest.mark.parametrize("stages", [[], 5, {"traffic": 5}, None])
def test_stages_must_be_non_empty_list(stages: Any) -> None:
    assert_problem(with_stages(stages), "stages", "must be a non-empty list of stages ending")


def test_shortcut_empty_item() -> None:
    assert_problem(with_stages("shadow,,100"), "stages",
                   "item 2 is empty; write e.g. 'shadow,5,25,50,100'")


def test_shortcut_bad_item() -> None:
    assert_problem(with_stages("shadow,five,100"), "stages",
                   "item 2 ('five') is neither 'shadow' nor a percentage")


def test_shortcut_values_are_range_checked() -> None:
    assert_problem(with_stages("5,150"), "stages[1].traffic", "must be <= 100, got 150")


def test_boolean_stage_item() -> None:
    assert_problem(with_stages([True, 100]), "stages[0]", "must be a mapping or a percentage")


def test_text_stage_item() -> None:
    assert_problem(with_stages(["half", 100]), "stages[0]", "must be a mapping (key: value "
                   "lines), got text")


def test_unknown_stage_key_with_suggestion() -> None:
    assert_problem(with_stages([{"trafic": 5}, 100]), "stages[0].trafic",
                   "did you mean 'traffic'?")


def test_stage_needs_traffic_or_shadow() -> None:
    assert_problem(with_stages([{"min_dwell": "1h"}, 100]), "stages[0]",
                   "needs 'traffic' (percent of requests to the candidate) or 'shadow: true'")


@pytest.mark.parametrize(("traffic", "fragment"), [
    (0, "must be > 0, got 0"),
    (-5, "must be > 0"),
    (120, "must be <= 100, got 120"),
    ("5%", "must be a number, got text"),
    (True, "must be a number, got a boolean"),
])
def test_stage_traffic_range(traffic: Any, fragment: str) -> None:
    assert_problem(with_stages([{"traffic": traffic}, 100]), "stages[0].traffic", fragment)


def test_shadow_must_be_boolean() -> None:
    assert_problem(with_stages([{"shadow": "yes", "traffic": 5}, 100]), "stages[0].shadow",
                   "must be true or false, got text")


def test_shadow_stage_serves_no_traffic() -> None:
    assert_problem(with_stages([{"shadow": True, "traffic": 5}, 100]), "stages[0].traffic",
                   "a shadow stage serves no traffic: remove 'traffic'")


def test_shadow_stage_with_traffic_zero_is_fine() -> None:
    policy = policy_from_dict(with_stages([{"shadow": True, "traffic": 0}, 100]))
    assert policy.stages[0].shadow


def test_only_first_stage_may_be_shadow() -> None:
    assert_problem(with_stages([5, "shadow", 100]), "stages[1].shadow",
                   "only the first stage can be a shadow stage")


@pytest.mark.parametrize("stages", [[25, 5, 100], [5, 5, 100]])
def test_traffic_must_increase(stages: list[int]) -> None:
    assert_problem(with_stages(stages), "stages[1].traffic",
                   "must be greater than the previous stage's")


def test_last_stage_must_be_100() -> None:
    assert_problem(with_stages(["shadow", 5, 50]), "stages[2]",
                   "the last stage must be traffic: 100 (full rollout)")


def test_shadow_only_has_no_full_stage() -> None:
    found = assert_problem(with_stages(["shadow"]), "stages[0]", "the last stage must be "
                           "traffic: 100")
    assert any(p.startswith("stages: needs at least one evaluated stage") for p in found)


def test_needs_an_evaluated_stage() -> None:
    assert_problem(with_stages("100"), "stages",
                   "needs at least one evaluated stage before the final 100% stage")


@pytest.mark.parametrize("key", ["min_samples", "min_dwell", "max_duration", "on_timeout",
                                 "promote_margin_scale"])
def test_final_stage_takes_no_stage_settings(key: str) -> None:
    values = {"min_samples": {"requests": 5}, "min_dwell": "1h", "max_duration": "2h",
              "on_timeout": "rollback", "promote_margin_scale": 2}
    stages = [5, {"traffic": 100, key: values[key]}]
    assert_problem(with_stages(stages), f"stages[1].{key}",
                   "the final 100% stage is the promotion itself and is not evaluated")


def test_stage_defaults_do_not_trip_the_final_stage() -> None:
    doc = with_stages([5, 100], defaults={"min_dwell": "1h", "max_duration": "2h"})
    assert policy_from_dict(doc).stages[0].max_duration == 7200


def test_stage_names_and_duplicates() -> None:
    doc = with_stages([{"traffic": 5, "name": "pilot"}, {"traffic": 10, "name": "pilot"}, 100])
    assert_problem(doc, "stages[1].name", "'pilot' is already used by stages[0]")


def test_stage_name_characters() -> None:
    assert_problem(with_stages([{"traffic": 5, "name": "first step"}, 100]), "stages[0].name",
                   "use letters, digits")


def test_min_samples_must_be_mapping() -> None:
    assert_problem(with_stages([{"traffic": 5, "min_samples": 1000}, 100]),
                   "stages[0].min_samples", "must be a mapping (key: value lines), got a number")


def test_min_samples_unknown_key() -> None:
    assert_problem(with_stages([{"traffic": 5, "min_samples": {"labeled": 10}}, 100]),
                   "stages[0].min_samples.labeled", "did you mean 'labelled'?")


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("requests", 10.5, "must be a whole number, got 10.5"),
    ("requests", -1, "must be >= 0, got -1"),
    ("labelled", "many", "must be a number, got text"),
])
def test_min_samples_values(key: str, value: Any, fragment: str) -> None:
    stages = [{"traffic": 5, "min_samples": {key: value}}, 100]
    assert_problem(with_stages(stages), f"stages[0].min_samples.{key}", fragment)


def test_min_samples_whole_float_is_accepted() -> None:
    policy = policy_from_dict(with_stages([{"traffic": 5, "min_samples": {"requests": 2e3}},
                                           100]))
    assert policy.stages[0].min_samples.requests == 2000


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("min_dwell", "an hour", "'an hour' is not a duration"),
    ("min_dwell", None, "must be a duration such as 30s, 15m or 2h"),
    ("max_duration", "1 day", "is not a duration"),
    ("max_duration", 0, "must be > 0 (or omit it for no time limit)"),
    ("on_timeout", "rolback", "must be one of hold_and_alert, rollback, "
     "promote_if_no_guardrail_fails; got 'rolback'. did you mean 'rollback'?"),
    ("on_timeout", "panic", "must be one of hold_and_alert"),
    ("promote_margin_scale", 0.5, "must be >= 1, got 0.5"),
    ("promote_margin_scale", "3x", "must be a number, got text"),
])
def test_stage_values(key: str, value: Any, fragment: str) -> None:
    assert_problem(with_stages([{"traffic": 5, key: value}, 100]), f"stages[0].{key}",
                   fragment)


def test_enum_without_close_match_has_no_hint() -> None:
    found = assert_problem(with_stages([{"traffic": 5, "on_timeout": "panic"}, 100]),
                           "stages[0].on_timeout", "got 'panic'.")
    assert not any("did you mean" in p for p in found)


def test_max_duration_shorter_than_min_dwell() -> None:
    stages = [{"traffic": 5, "min_dwell": "2h", "max_duration": "1h"}, 100]
    assert_problem(with_stages(stages), "stages[0].max_duration",
                   "(1h) is shorter than min_dwell (2h); raise max_duration or lower min_dwell")


def test_max_duration_null_means_no_limit() -> None:
    policy = policy_from_dict(with_stages([{"traffic": 5, "max_duration": None}, 100]))
    assert policy.stages[0].max_duration is None


def test_stage_defaults_must_be_mapping() -> None:
    assert_problem(with_stages([5, 100], defaults=["1h"]), "stage_defaults",
                   "must be a mapping")


@pytest.mark.parametrize(("key", "fragment"), [
    ("traffic", "unknown field; allowed: min_samples, min_dwell"),
    ("min_dwel", "did you mean 'min_dwell'?"),
])
def test_stage_defaults_unknown_keys(key: str, fragment: str) -> None:
    assert_problem(with_stages([5, 100], defaults={key: 5}), f"stage_defaults.{key}",
                   fragment)


def test_stage_defaults_values_are_checked_per_stage() -> None:
    found = problems(with_stages([5, 100], defaults={"on_timeout": "later"}))
    assert any(p.startswith("stages[0].on_timeout: must be one of") for p in found), found


# --------------------------------------------------------------------------------------
# KPIs: common fields
# --------------------------------------------------------------------------------------


def test_kpi_must_be_mapping() -> None:
    assert_problem(with_kpi("precision"), "kpis[2]", "must be a mapping")  # type: ignore[arg-type]


def test_kpi_unknown_key_with_suggestion() -> None:
    assert_problem(with_kpi({"name": "x", "kind": "auc", "margin": 0.01, "marginn": 1}),
                   "kpis[2].marginn", "unknown field; did you mean 'margin'?")


def test_kpi_needs_name() -> None:
    assert_problem(with_kpi({"kind": "auc", "margin": 0.01}), "kpis[2]", "needs a 'name'")


@pytest.mark.parametrize(("name", "fragment"), [
    ("", "must be a non-empty name"),
    (None, "must be a non-empty name"),
    ("p 95", "use letters, digits"),
])
def test_kpi_name_rules(name: Any, fragment: str) -> None:
    assert_problem(with_kpi({"name": name, "kind": "auc", "margin": 0.01}), "kpis[2].name",
                   fragment)


def test_kpi_needs_kind() -> None:
    assert_problem(with_kpi({"name": "x", "margin": 0.01}), "kpis[2]",
                   "needs a 'kind' (proportion, mean, quantile, auc, fairness, business)")


@pytest.mark.parametrize(("kind", "fragment"), [
    ("proportoin", "did you mean 'proportion'?"),
    ("ratio", "must be one of proportion, mean, quantile, auc, fairness, business; got "
     "'ratio'"),
    (["auc"], "got ['auc']"),
])
def test_kpi_unknown_kind(kind: Any, fragment: str) -> None:
    assert_problem(with_kpi({"name": "x", "kind": kind}), "kpis[2].kind", fragment)


@pytest.mark.parametrize(("kind", "key", "extra"), [
    ("auc", "q", {}),
    ("auc", "metric", {}),
    ("proportion", "source", {"metric": "recall"}),
    ("proportion", "segment_by", {"metric": "recall"}),
    ("mean", "q", {"source": "latency"}),
    ("quantile", "log", {"q": 0.9}),
    ("fairness", "numerator", {"metric": "recall", "segment_by": "country"}),
    ("business", "metric", {"numerator": "a", "denominator": "count", "direction": "higher"}),
])
def test_field_not_for_kind(kind: str, key: str, extra: dict[str, Any]) -> None:
    kpi = {"name": "x", "kind": kind, "margin": "5%", key: "latency", **extra}
    assert_problem(with_kpi(kpi), f"kpis[2].{key}", f"does not apply to kind {kind}; remove it")


@pytest.mark.parametrize(("direction", "fragment"), [
    ("up", "must be one of higher, lower; got 'up'"),
    ("Higher", "did you mean 'higher'?"),
])
def test_kpi_direction_values(direction: str, fragment: str) -> None:
    kpi = {"name": "x", "kind": "auc", "margin": 0.01, "direction": direction}
    assert_problem(with_kpi(kpi), "kpis[2].direction", fragment)


@pytest.mark.parametrize("role", ["blocker", "Critical"])
def test_kpi_role_values(role: str) -> None:
    assert_problem(with_kpi({"name": "x", "kind": "auc", "margin": 0.01, "role": role}),
                   "kpis[2].role", "must be one of critical, guardrail, success, info")


@pytest.mark.parametrize("role", ["guardrail", "critical"])
def test_decisive_kpi_needs_margin(role: str) -> None:
    assert_problem(with_kpi({"name": "x", "kind": "auc", "role": role}), "kpis[2]",
                   f"a {role} KPI needs a 'margin' (the non-inferiority margin")


@pytest.mark.parametrize("role", ["success", "info"])
def test_reporting_kpi_needs_no_margin(role: str) -> None:
    policy = policy_from_dict(with_kpi({"name": "x", "kind": "auc", "role": role}))
    assert policy.kpi("x").margin is None


@pytest.mark.parametrize(("margin", "fragment"), [
    (0, "must be > 0, got 0"),
    (-0.01, "must be > 0, got -0.01"),
    (float("inf"), "must be > 0, got inf"),
    (True, "must be a number (absolute) or a percentage such as '10%'"),
    ("0.02", "must be a number (absolute) or a percentage such as '10%'"),
    ([1], "must be a number (absolute) or a percentage"),
    ("abc%", "'abc%' is not a percentage such as '10%'"),
    ("0%", "a relative margin must be above 0% and at most 1000%, got '0%'"),
    ("1001%", "a relative margin must be above 0% and at most 1000%"),
    ("-5%", "a relative margin must be above 0% and at most 1000%"),
])
def test_margin_values(margin: Any, fragment: str) -> None:
    kpi = {"name": "x", "kind": "mean", "source": "rows", "direction": "higher",
           "margin": margin}
    assert_problem(with_kpi(kpi), "kpis[2].margin", fragment)


@pytest.mark.parametrize("kpi", [
    {"name": "x", "kind": "proportion", "metric": "recall", "margin": 2},
    {"name": "x", "kind": "auc", "margin": 1},
])
def test_absolute_margin_of_a_fraction_must_be_below_1(kpi: dict[str, Any]) -> None:
    assert_problem(with_kpi(kpi), "kpis[2].margin",
                   "is not below 1; proportions are fractions (write 0.02 for two points")


def test_relative_margin_on_proportion_is_fine() -> None:
    kpi = {"name": "x", "kind": "proportion", "metric": "recall", "margin": "2%"}
    assert policy_from_dict(with_kpi(kpi)).kpi("x").margin == Margin(0.02, relative=True)


def test_fairness_needs_relative_margin() -> None:
    kpi = {"name": "x", "kind": "fairness", "metric": "recall", "segment_by": "country",
           "margin": 0.05}
    assert_problem(with_kpi(kpi), "kpis[2].margin",
                   "a fairness ratio needs a relative margin such as '10%'")


@pytest.mark.parametrize("extra", [{"source": "latency"}, {"source": "x", "log": True,
                                                            "direction": "lower"}])
def test_log_mean_needs_relative_margin(extra: dict[str, Any]) -> None:
    kpi = {"name": "x", "kind": "mean", "margin": 0.01, **extra}
    assert_problem(with_kpi(kpi), "kpis[2].margin",
                   "a log-scale mean needs a relative margin such as '10%'")


def test_latency_mean_is_always_on_the_log_scale() -> None:
    kpi = {"name": "x", "kind": "mean", "source": "latency", "log": False, "margin": 0.01}
    with pytest.raises(PolicyError) as err:
        policy_from_dict(with_kpi(kpi))
    assert any(p.startswith("kpis[2].log: latency means are compared on the log scale")
               for p in err.value.problems)


def test_logged_values_are_not_log_transformed() -> None:
    kpi = {"name": "x", "kind": "mean", "source": "amount", "direction": "higher",
           "log": True, "margin": "5%"}
    with pytest.raises(PolicyError) as err:
        policy_from_dict(with_kpi(kpi))
    assert any(p.startswith("kpis[2].log: only latency is compared on the log scale")
               for p in err.value.problems)
    plain = {**kpi, "log": False, "margin": 0.5}
    assert policy_from_dict(with_kpi(plain)).kpi("x").log is False


@pytest.mark.parametrize(("kpi", "fragment"), [
    ({"kind": "proportion", "metric": "recall", "limit": 1.5},
     "must be between 0 and 1 for a proportion KPI"),
    ({"kind": "auc", "limit": -0.1}, "must be between 0 and 1 for a auc KPI"),
    ({"kind": "fairness", "metric": "recall", "segment_by": "c", "margin": "5%", "limit": 2},
     "must be between 0 and 1 for a fairness KPI"),
    ({"kind": "quantile", "q": 0.95, "limit": 0}, "must be > 0 seconds"),
    ({"kind": "auc", "limit": "high"}, "must be a number, got text"),
])
def test_limit_values(kpi: dict[str, Any], fragment: str) -> None:
    full = {"name": "x", "margin": 0.01, **kpi}
    assert_problem(with_kpi(full), "kpis[2].limit", fragment)


def test_limit_on_mean_is_unbounded() -> None:
    kpi = {"name": "x", "kind": "mean", "source": "rows", "direction": "higher",
           "margin": 3, "limit": -20}
    assert policy_from_dict(with_kpi(kpi)).kpi("x").limit == -20


def test_registry_metric_must_be_text() -> None:
    kpi = {"name": "x", "kind": "auc", "margin": 0.01, "registry_metric": 3}
    assert_problem(with_kpi(kpi), "kpis[2].registry_metric",
                   "must be the name of a metric in the MLflow run")


def test_registry_metric_and_description_are_kept() -> None:
    kpi = {"name": "x", "kind": "auc", "margin": 0.01, "registry_metric": "val_auc",
           "description": "ranking quality"}
    spec = policy_from_dict(with_kpi(kpi)).kpi("x")
    assert (spec.registry_metric, spec.description) == ("val_auc", "ranking quality")


def test_description_must_be_text() -> None:
    kpi = {"name": "x", "kind": "auc", "margin": 0.01, "description": ["a"]}
    assert_problem(with_kpi(kpi), "kpis[2].description", "must be text")


# --------------------------------------------------------------------------------------
# KPIs: kind-specific fields
# --------------------------------------------------------------------------------------


def test_proportion_needs_metric() -> None:
    assert_problem(with_kpi({"name": "x", "kind": "proportion", "margin": 0.01}), "kpis[2]",
                   "needs 'metric' (one of precision, recall, f1")


def test_proportion_unknown_metric_with_hint() -> None:
    kpi = {"name": "x", "kind": "proportion", "metric": "precison", "margin": 0.01}
    found = assert_problem(with_kpi(kpi), "kpis[2].metric",
                           "got 'precison'. Did you mean 'precision'?")
    # the typo is the one problem: no knock-on demand for a direction
    assert not any("direction" in p for p in found), found


@pytest.mark.parametrize("metric", [["precision"], {"a": 1}, 5])
def test_proportion_metric_of_wrong_type(metric: Any) -> None:
    kpi = {"name": "x", "kind": "proportion", "metric": metric, "margin": 0.01}
    assert_problem(with_kpi(kpi), "kpis[2].metric", "must be one of precision, recall")


@pytest.mark.parametrize("missing", ["numerator", "denominator"])
def test_custom_proportion_needs_counters(missing: str) -> None:
    kpi = {"name": "x", "kind": "proportion", "metric": "custom", "numerator": "a",
           "denominator": "b", "direction": "lower", "margin": 0.01}
    del kpi[missing]
    assert_problem(with_kpi(kpi), "kpis[2]",
                   f"a custom proportion needs '{missing}' (a counter name)")


def test_custom_proportion_counter_names_are_checked() -> None:
    kpi = {"name": "x", "kind": "proportion", "metric": "custom", "numerator": "a b",
           "denominator": "b", "direction": "lower", "margin": 0.01}
    assert_problem(with_kpi(kpi), "kpis[2].numerator", "use letters, digits")


def test_custom_proportion_needs_direction() -> None:
    kpi = {"name": "x", "kind": "proportion", "metric": "custom", "numerator": "a",
           "denominator": "b", "margin": 0.01}
    assert_problem(with_kpi(kpi), "kpis[2]",
                   "needs 'direction' (higher or lower is better) for this metric")


def test_counters_only_for_custom_proportion() -> None:
    kpi = {"name": "x", "kind": "proportion", "metric": "recall", "numerator": "a",
           "margin": 0.01}
    assert_problem(with_kpi(kpi), "kpis[2].numerator", "only for metric: custom; remove it")


def test_mean_needs_source() -> None:
    assert_problem(with_kpi({"name": "x", "kind": "mean", "direction": "lower",
                             "margin": 1}), "kpis[2]",
                   "needs 'source': 'latency' or the name of a logged value")


def test_mean_source_name_is_checked() -> None:
    kpi = {"name": "x", "kind": "mean", "source": "basket value", "direction": "higher",
           "margin": 1}
    assert_problem(with_kpi(kpi), "kpis[2].source", "use letters, digits")


def test_mean_log_must_be_boolean() -> None:
    kpi = {"name": "x", "kind": "mean", "source": "rows", "direction": "higher",
           "margin": "5%", "log": "yes"}
    assert_problem(with_kpi(kpi), "kpis[2].log", "must be true or false")


def test_mean_of_logged_value_needs_direction() -> None:
    kpi = {"name": "x", "kind": "mean", "source": "rows", "margin": 1}
    assert_problem(with_kpi(kpi), "kpis[2]", "needs 'direction' (higher or lower is better)")


def test_quantile_only_on_latency() -> None:
    kpi = {"name": "x", "kind": "quantile", "source": "basket", "q": 0.9, "margin": "5%"}
    assert_problem(with_kpi(kpi), "kpis[2].source",
                   "quantile KPIs are measured on 'latency' only")


def test_quantile_needs_q() -> None:
    assert_problem(with_kpi({"name": "x", "kind": "quantile", "margin": "5%"}), "kpis[2]",
                   "needs 'q', the quantile as a fraction (0.95 for p95)")


@pytest.mark.parametrize(("q", "fragment"), [
    (95, "must be < 1, got 95"),
    (1, "must be < 1, got 1"),
    (0.3, "must be >= 0.5, got 0.3"),
    ("p95", "must be a number, got text"),
])
def test_quantile_q_range(q: Any, fragment: str) -> None:
    kpi = {"name": "x", "kind": "quantile", "q": q, "margin": "5%"}
    assert_problem(with_kpi(kpi), "kpis[2].q", fragment)


def test_fairness_needs_metric_and_segment() -> None:
    found = assert_problem(with_kpi({"name": "x", "kind": "fairness", "margin": "5%"}),
                           "kpis[2]", "needs 'metric', the rate compared across segments "
                           "(false_positive_rate")
    assert "kpis[2]: needs 'segment_by', the field whose values are the segments" in found


def test_fairness_unknown_rate() -> None:
    kpi = {"name": "x", "kind": "fairness", "metric": "f1", "segment_by": "c", "margin": "5%"}
    assert_problem(with_kpi(kpi), "kpis[2].metric",
                   "must be one of false_positive_rate, false_negative_rate")


def test_fairness_segment_name_is_checked() -> None:
    kpi = {"name": "x", "kind": "fairness", "metric": "recall", "segment_by": "",
           "margin": "5%"}
    assert_problem(with_kpi(kpi), "kpis[2].segment_by", "must be a non-empty name")


def test_fairness_index_is_higher_is_better() -> None:
    kpi = {"name": "x", "kind": "fairness", "metric": "recall", "segment_by": "c",
           "margin": "5%", "direction": "lower"}
    assert_problem(with_kpi(kpi), "kpis[2].direction",
                   "a fairness index (min/max ratio) is always higher-is-better")


@pytest.mark.parametrize(("missing", "fragment"), [
    ("numerator", "needs 'numerator' (a logged value such as approved_amount)"),
    ("denominator", "needs 'denominator' (a logged value, or 'count' for per prediction)"),
])
def test_business_needs_numerator_and_denominator(missing: str, fragment: str) -> None:
    kpi = {"name": "x", "kind": "business", "numerator": "a", "denominator": "count",
           "direction": "higher", "margin": "5%"}
    del kpi[missing]
    assert_problem(with_kpi(kpi), "kpis[2]", fragment)


@pytest.mark.parametrize("key", ["numerator", "denominator"])
def test_business_value_names_are_checked(key: str) -> None:
    kpi = {"name": "x", "kind": "business", "numerator": "a", "denominator": "count",
           "direction": "higher", "margin": "5%", key: "two words"}
    assert_problem(with_kpi(kpi), f"kpis[2].{key}", "use letters, digits")


def test_business_needs_direction() -> None:
    kpi = {"name": "x", "kind": "business", "numerator": "a", "denominator": "count",
           "margin": "5%"}
    assert_problem(with_kpi(kpi), "kpis[2]", "needs 'direction'")


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def load_problems(path: Path) -> tuple[PolicyError, list[str]]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value, info.value.problems


def test_missing_file(tmp_path: Path) -> None:
    err, found = load_problems(tmp_path / "nope.yaml")
    assert found == ["file not found; check the path"]
    assert err.source == str(tmp_path / "nope.yaml")
    assert err.exit_code == 2


def test_directory(tmp_path: Path) -> None:
    _, found = load_problems(tmp_path)
    assert found == ["is a directory; give the policy YAML file"]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    _, found = load_problems(path)
    assert found == ["is empty; see examples/policies/fraud.yaml"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    _, found = load_problems(path)
    assert found == ["is not a text (UTF-8) file; give the policy YAML file"]


def test_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("stages: shadow,5,100\nevaluation: {interval: 1m}\nkpis: []\n"
                    "evaluation:\n  interval: 5m\n")
    _, found = load_problems(path)
    assert found == ["line 4: duplicate key 'evaluation' (first on line 2); keep one of them"]


def test_duplicate_key_inside_a_kpi(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("stages: shadow,5,100\nkpis:\n  - name: a\n    kind: auc\n"
                    "    name: b\n")
    _, found = load_problems(path)
    assert found == ["line 5: duplicate key 'name' (first on line 3); keep one of them"]


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("stage_defaults: &d {min_dwell: 1m}\nstages:\n"
                    "  - {<<: *d, traffic: 5, min_dwell: 2m}\n  - 100\n"
                    "kpis: [{name: e, kind: proportion, metric: error_rate, margin: 0.01}]\n")
    policy = load_policy(path)
    assert policy.stages[0].min_dwell == 120


@pytest.mark.parametrize("text", [
    "stages:\n" + "".join("  " * i + "- a:\n" for i in range(1, 5001)),
    "stages: " + "[" * 5000 + "]" * 5000 + "\n",
    "stages: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
])
def test_deep_nesting_is_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    _, found = load_problems(path)
    assert len(found) == 1
    assert found[0].startswith("line ")
    assert found[0].endswith("nested more than 64 levels deep; a policy needs only a few "
                             "(see docs/policy.md)")


def test_a_file_that_is_not_a_policy_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "passwd.yaml"
    path.write_text("".join(f"user{i}: x:{i}:{i}::/home/u{i}:/bin/sh\n" for i in range(29)))
    _, found = load_problems(path)
    assert found == ["is not a rollout policy (none of its 29 top-level keys is a policy "
                     "field such as stages or kpis); give a policy YAML, see docs/policy.md"]


def test_misspelt_policy_keys_still_get_hints(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("stagse: shadow,5,100\nkpi: []\n")
    _, found = load_problems(path)
    assert "stagse: unknown field; did you mean 'stages'?" in found


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("stages: shadow,5,100\nkpis:\n  - name: x\n   kind: auc\n")
    _, found = load_problems(path)
    assert len(found) == 1
    assert found[0].startswith("line 4, column 4: not valid YAML (")


def test_yaml_unclosed_bracket(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("stages: [shadow, 5, 100\nkpis: []\n")
    _, found = load_problems(path)
    assert found[0].startswith("line ")
    assert "not valid YAML" in found[0]


def test_yaml_list_document(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- traffic: 5\n")
    err, found = load_problems(path)
    assert found == ["the policy must be a YAML mapping, got a list"]
    assert str(err) == f"{path}: the policy must be a YAML mapping, got a list"


def test_file_problems_carry_source(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stages: shadow,5,100\nkpis:\n  - name: x\n    kind: auc\n")
    err, found = load_problems(path)
    assert found == ["kpis[0]: a guardrail KPI needs a 'margin' (the non-inferiority margin: "
                     "an absolute number in the KPI's units or a percentage such as '5%')"]
    assert err.source == str(path)
    assert str(err).startswith(f"{path}: kpis[0]: a guardrail KPI needs a 'margin'")


def test_unquoted_percent_margin_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("stages: shadow,5,100\nkpis:\n  - name: lat\n    kind: quantile\n"
                    "    q: 0.95\n    margin: 10%\n")
    assert load_policy(path).kpi("lat").margin == Margin(0.1, relative=True)


def test_policy_is_frozen() -> None:
    policy = policy_from_dict(base())
    with pytest.raises(AttributeError):
        policy.stages[0].traffic = 50  # type: ignore[misc]
    assert copy.deepcopy(policy) == policy


def test_alerts_section_parses_env_names() -> None:
    doc = base()
    doc["alerts"] = {"slack": {"webhook_url_env": "KPIGATE_SLACK"},
                     "pagerduty": {"routing_key_env": "PD_KEY", "url": "http://127.0.0.1:9/x"},
                     "min_severity": "critical", "allow_custom_hosts": True}
    alerts = policy_from_dict(doc).alerts
    assert alerts is not None
    assert (alerts.slack_webhook_env, alerts.pagerduty_key_env) == ("KPIGATE_SLACK", "PD_KEY")
    assert alerts.pagerduty_url == "http://127.0.0.1:9/x"
    assert alerts.min_severity == "critical"
    assert alerts.allow_custom_hosts is True
    assert policy_from_dict(base()).alerts is None
    default = policy_from_dict({**base(), "alerts": {"pagerduty": {"routing_key_env": "K"}}})
    assert default.alerts is not None
    assert default.alerts.pagerduty_url == "https://events.pagerduty.com/v2/enqueue"
    assert default.alerts.allow_custom_hosts is False


OFFICIAL_ONLY = ("must be an https:// URL on events.pagerduty.com or events.eu.pagerduty.com "
                 "(the alert's secret is sent there); for another host set "
                 "alerts.allow_custom_hosts: true")
LOOPBACK_ONLY = ("http:// is allowed only for a loopback test endpoint (127.0.0.1, ::1, "
                 "localhost); use https://")
METADATA = ("169.254.169.254 is a link-local address (a cloud metadata service); alerts are "
            "never sent there")


@pytest.mark.parametrize(("url", "custom", "problem"), [
    ("https://events.pagerduty.com/v2/enqueue", False, None),
    ("https://events.eu.pagerduty.com/v2/enqueue", False, None),
    ("https://EVENTS.PagerDuty.com:443/v2/enqueue", False, None),
    ("http://events.pagerduty.com/v2/enqueue", False, OFFICIAL_ONLY),
    ("https://events.pagerduty.com.evil.example/v2/enqueue", False, OFFICIAL_ONLY),
    ("https://proxy.corp.example/pd", False, OFFICIAL_ONLY),
    ("http://127.0.0.1:9/x", False, OFFICIAL_ONLY),
    ("http://169.254.169.254/latest/meta-data/", False, METADATA),
    ("http://169.254.169.254/latest/meta-data/", True, METADATA),
    ("https://169.254.169.254/", True, METADATA),
    ("http://[fe80::1]/x", True, "fe80::1 is a link-local address (a cloud metadata "
                                 "service); alerts are never sent there"),
    ("https://proxy.corp.example/pd", True, None),
    ("http://proxy.corp.example/pd", True, LOOPBACK_ONLY),
    ("http://10.0.0.7/pd", True, LOOPBACK_ONLY),
    ("http://events.pagerduty.com/v2/enqueue", True, LOOPBACK_ONLY),
    ("http://127.0.0.1:9/x", True, None),
    ("http://localhost:9/x", True, None),
    ("http://[::1]:9/x", True, None),
    ("ftp://events.pagerduty.com/x", True, "must be an https:// URL"),
    ("https://", True, "must be an https:// URL"),
    ("https://events.pagerduty.com:port/x", False, "is not a valid URL"),
])
def test_pagerduty_url_hosts(url: str, custom: bool, problem: str | None) -> None:
    doc = base()
    doc["alerts"] = {"pagerduty": {"routing_key_env": "K", "url": url},
                     "allow_custom_hosts": custom}
    if problem is None:
        alerts = policy_from_dict(doc).alerts
        assert alerts is not None
        assert alerts.pagerduty_url == url
        return
    with pytest.raises(PolicyError) as info:
        policy_from_dict(doc)
    assert info.value.problems == [f"alerts.pagerduty.url: {problem}"]
    assert str(info.value) == f"alerts.pagerduty.url: {problem}"  # one line, the field named


@pytest.mark.parametrize(("alerts", "path", "fragment"), [
    ({"slack": {"webhook_url_env": "https://hooks.example/x"}}, "alerts.slack.webhook_url_env",
     "NAME of an environment variable"),
    ({"slack": {}}, "alerts.slack", "needs 'webhook_url_env'"),
    ({"pagerduty": {"routing_key_env": "K", "url": "ftp://x"}}, "alerts.pagerduty.url",
     "must be an https:// URL"),
    ({"pagerduty": {"routing_key_env": "K", "url": 7}}, "alerts.pagerduty.url",
     "must be an https:// URL"),
    ({"pagerduty": {"url": "https://events.pagerduty.com/x"}}, "alerts.pagerduty",
     "needs 'routing_key_env'"),
    ({"allow_custom_hosts": "yes"}, "alerts.allow_custom_hosts",
     "must be true or false, got text"),
    ({"min_severity": "loud"}, "alerts.min_severity", "must be info, warning or critical"),
    ({"email": {}}, "alerts.email", "unknown field"),
    ("slack", "alerts", "must be a mapping"),
])
def test_alerts_errors(alerts: Any, path: str, fragment: str) -> None:
    doc = base()
    doc["alerts"] = alerts
    assert_problem(doc, path, fragment)


def test_large_relative_margins_only_for_lower_is_better() -> None:
    slow = {"name": "p95", "kind": "quantile", "q": 0.95, "margin": "150%"}
    assert policy_from_dict(with_kpi(slow)).kpi("p95").margin == Margin(1.5, relative=True)
    recall = {"name": "r", "kind": "proportion", "metric": "recall", "margin": "100%"}
    assert_problem(with_kpi(recall), "kpis[2].margin", "needs a relative margin under 100%")
    fair = {"name": "f", "kind": "fairness", "metric": "recall", "segment_by": "s",
            "margin": "120%"}
    assert_problem(with_kpi(fair), "kpis[2].margin", "needs a relative margin under 100%")


# --------------------------------------------------------------------------------------
# metrics and readiness sections (cluster rollouts)
# --------------------------------------------------------------------------------------

SESSIONS = 'sum(increase(shop_sessions_total{predictor="{role}"}[{window}]))'
CONVERSIONS = 'sum(increase(shop_conversions_total{predictor="{role}"}[{window}]))'
REVENUE = 'sum(increase(shop_revenue_sum{predictor="{role}"}[{window}]))'
REVENUE_SQ = 'sum(increase(shop_revenue_squares{predictor="{role}"}[{window}]))'


def with_query_kpis() -> dict[str, Any]:
    """``base()`` plus a custom proportion and a business KPI fed by custom queries."""
    doc = base()
    doc["kpis"] += [
        {"name": "conversion_rate", "kind": "proportion", "metric": "custom",
         "numerator": "conversions", "denominator": "sessions", "direction": "higher",
         "margin": "5%"},
        {"name": "revenue_per_session", "kind": "business", "numerator": "revenue",
         "denominator": "count", "direction": "higher", "margin": "5%"},
    ]
    doc["metrics"] = {
        "prometheus": {"url": "http://prometheus-operated.monitoring.svc:9090/",
                       "timeout": "5s", "retries": 2, "max_wait": "30s",
                       "requests_from": "kpigate"},
        "queries": {
            "conversion_rate": {"count": SESSIONS, "sum": CONVERSIONS},
            "revenue_per_session": {"count": SESSIONS, "sum": REVENUE,
                                    "sum_squares": REVENUE_SQ},
        },
    }
    doc["readiness"] = {"timeout": "5m", "on_timeout": "abort"}
    return doc


def test_metrics_and_readiness_default_when_absent() -> None:
    policy = policy_from_dict(base())
    assert policy.metrics == MetricsConfig()
    prom = policy.metrics.prometheus
    assert (prom.url, prom.timeout, prom.retries, prom.max_wait, prom.requests_from) == (
        None, 10.0, 3, 60.0, None)
    assert policy.metrics.queries == ()
    assert policy.readiness == Readiness(600.0, ReadinessAction.HOLD)
    assert str(policy.readiness.on_timeout) == "hold"


def test_metrics_and_readiness_sections_parse() -> None:
    policy = policy_from_dict(with_query_kpis())
    prom = policy.metrics.prometheus
    assert prom == PrometheusSettings("http://prometheus-operated.monitoring.svc:9090", 5.0, 2,
                                      30.0, RequestsFrom.KPIGATE)
    assert policy.metrics.query("conversion_rate") == KpiQuery(
        "conversion_rate", SESSIONS, CONVERSIONS, None)
    assert policy.metrics.query("revenue_per_session").sum_squares == REVENUE_SQ
    assert policy.metrics.query("precision") is None
    assert policy.readiness == Readiness(300.0, ReadinessAction.ABORT)
    assert str(policy.readiness.on_timeout) == "abort"


def test_new_sections_survive_the_frozen_copy(tmp_path: Path) -> None:
    """The rollout freezes ``policy.raw`` as YAML; reloading it gives the same policy."""
    import yaml

    policy = policy_from_dict(with_query_kpis())
    frozen = tmp_path / "policy.yaml"
    frozen.write_text(yaml.safe_dump(dict(policy.raw), sort_keys=False))
    again = load_policy(frozen)
    assert again == replace(policy, source=str(frozen))
    assert again.metrics == policy.metrics
    assert again.readiness == policy.readiness


@pytest.mark.parametrize(("section", "path", "fragment"), [
    ({"prometheus": {"urll": "http://x"}}, "metrics.prometheus.urll", "did you mean 'url'"),
    ({"prometheus": {"url": "prometheus:9090"}}, "metrics.prometheus.url",
     "must be an http(s) URL"),
    ({"prometheus": {"url": "http://"}}, "metrics.prometheus.url", "must be an http(s) URL"),
    ({"prometheus": {"timeout": 0}}, "metrics.prometheus.timeout", "must be > 0"),
    ({"prometheus": {"timeout": "soon"}}, "metrics.prometheus.timeout", "is not a duration"),
    ({"prometheus": {"retries": -1}}, "metrics.prometheus.retries", "must be >= 0"),
    ({"prometheus": {"retries": 1.5}}, "metrics.prometheus.retries", "whole number"),
    ({"prometheus": {"retries": 11}}, "metrics.prometheus.retries", "must be <= 10"),
    ({"prometheus": {"timeout": "30s", "max_wait": "10s"}}, "metrics.prometheus.max_wait",
     "shorter than timeout"),
    ({"prometheus": {"requests_from": "seldom"}}, "metrics.prometheus.requests_from",
     "did you mean 'seldon'"),
    ({"prometheus": "http://x"}, "metrics.prometheus", "must be a mapping"),
    ({"promethus": {}}, "metrics.promethus", "did you mean 'prometheus'"),
    ("yes", "metrics", "must be a mapping"),
])
def test_metrics_prometheus_errors(section: Any, path: str, fragment: str) -> None:
    doc = base()
    doc["metrics"] = section
    assert_problem(doc, path, fragment)


@pytest.mark.parametrize(("section", "path", "fragment"), [
    ({"timeout": 0}, "readiness.timeout", "must be > 0"),
    ({"timeout": "ten minutes"}, "readiness.timeout", "is not a duration"),
    ({"on_timeout": "rollback"}, "readiness.on_timeout", "must be one of hold, abort"),
    ({"on_timeout": "abrt"}, "readiness.on_timeout", "did you mean 'abort'"),
    ({"timeout": "1m", "wait": "1m"}, "readiness.wait", "unknown field"),
    ("10m", "readiness", "must be a mapping"),
])
def test_readiness_errors(section: Any, path: str, fragment: str) -> None:
    doc = base()
    doc["readiness"] = section
    assert_problem(doc, path, fragment)


def queries_doc(**queries: Any) -> dict[str, Any]:
    doc = with_query_kpis()
    doc["metrics"]["queries"].update(queries)
    return doc


@pytest.mark.parametrize(("entry", "path", "fragment"), [
    ({"count": SESSIONS, "sum": 'sum(x{r="{rol}"}[{window}])'},
     "metrics.queries.conversion_rate.sum", "unknown placeholder {rol}; did you mean {role}?"),
    ({"count": SESSIONS, "sum": "sum(increase(shop_conversions_total[{window}]))"},
     "metrics.queries.conversion_rate.sum", "must select one role's series with {role}"),
    ({"count": SESSIONS, "sum": 'sum(shop_conversions_total{predictor="{role}"})'},
     "metrics.queries.conversion_rate.sum", "must limit the query to one stage"),
    ({"sum": CONVERSIONS}, "metrics.queries.conversion_rate", "needs 'count'"),
    ({"count": SESSIONS, "sum": 42}, "metrics.queries.conversion_rate.sum",
     "must be a PromQL query"),
    ({"count": SESSIONS, "sum": CONVERSIONS, "sum_squares": CONVERSIONS},
     "metrics.queries.conversion_rate.sum_squares", "does not apply to a proportion"),
    ({"count": SESSIONS, "sum": CONVERSIONS, "avg": CONVERSIONS},
     "metrics.queries.conversion_rate.avg", "unknown field"),
    ("sum(x)", "metrics.queries.conversion_rate", "must be a mapping"),
])
def test_query_template_errors(entry: Any, path: str, fragment: str) -> None:
    assert_problem(queries_doc(conversion_rate=entry), path, fragment)


def test_query_errors_name_the_kpi_and_the_fix() -> None:
    ok = {"count": SESSIONS, "sum": REVENUE, "sum_squares": REVENUE_SQ}
    assert_problem(queries_doc(revenue_per_sesion=ok), "metrics.queries.revenue_per_sesion",
                   "is not the name of a KPI in 'kpis'; did you mean 'revenue_per_session'?")
    assert_problem(queries_doc(precision=ok), "metrics.queries.precision",
                   "custom queries feed only custom proportions")
    assert_problem(queries_doc(revenue_per_session={"count": SESSIONS, "sum": REVENUE}),
                   "metrics.queries.revenue_per_session", "needs 'sum_squares'")
    other_units = 'sum(increase(shop_visits_total{predictor="{role}"}[{window}]))'
    assert_problem(queries_doc(revenue_per_session={**ok, "count": other_units}),
                   "metrics.queries.revenue_per_session.count",
                   "differs from metrics.queries.conversion_rate.count")
    # whitespace outside label values does not make a count query different
    spaced = SESSIONS.replace("(", "( ", 1).replace("[", " [ ")
    assert policy_from_dict(queries_doc(revenue_per_session={**ok, "count": spaced}))


def test_queries_and_logged_values_must_share_one_unit_count() -> None:
    doc = with_query_kpis()
    doc["kpis"].append({"name": "basket", "kind": "mean", "source": "basket_size",
                        "direction": "higher", "role": "info"})
    assert_problem(doc, "metrics.queries", "KPI 'basket' uses the logged value 'basket_size' "
                   "but has no query")
    doc = with_query_kpis()
    doc["kpis"].append({"name": "revenue_info", "kind": "mean", "source": "revenue",
                        "direction": "higher", "role": "info"})
    doc["metrics"]["queries"]["revenue_info"] = {"count": SESSIONS, "sum": REVENUE,
                                                 "sum_squares": REVENUE_SQ}
    assert_problem(doc, "metrics.queries", "the value 'revenue' is used by KPIs")
    doc = with_query_kpis()
    doc["kpis"].append({"name": "margin_rate", "kind": "business", "numerator": "profit",
                        "denominator": "revenue_total", "direction": "higher", "margin": "5%"})
    doc["metrics"]["queries"]["margin_rate"] = {"count": SESSIONS, "sum": REVENUE,
                                                "sum_squares": REVENUE_SQ}
    assert_problem(doc, "metrics.queries.margin_rate", "use 'denominator: count'")


def test_two_custom_proportions_may_share_their_unit() -> None:
    doc = with_query_kpis()
    doc["kpis"].append({"name": "signup_rate", "kind": "proportion", "metric": "custom",
                        "numerator": "signups", "denominator": "sessions",
                        "direction": "higher", "role": "info"})
    doc["metrics"]["queries"]["signup_rate"] = {
        "count": SESSIONS, "sum": 'sum(increase(signups_total{predictor="{role}"}[{window}]))'}
    assert len(policy_from_dict(doc).metrics.queries) == 3


def test_an_invalid_kpi_is_not_reported_again_under_queries() -> None:
    doc = with_query_kpis()
    doc["kpis"][2]["margin"] = 0  # conversion_rate is now invalid
    found = problems(doc)
    assert any(p.startswith("kpis[2].margin") for p in found), found
    assert not any(p.startswith("metrics.queries.conversion_rate") for p in found), found


def test_a_kpi_name_that_is_not_a_string_is_a_problem_not_a_crash_with_queries():
    doc = {"stages": "5,100",
           "kpis": [{"name": ["not", "a", "name"], "kind": "proportion",
                     "metric": "error_rate", "role": "critical", "margin": 0.01}],
           "metrics": {"prometheus": {"url": "http://127.0.0.1:9090"}}}
    with pytest.raises(PolicyError) as info:
        policy_from_dict(doc)
    assert any(problem.startswith("kpis[0].name:") for problem in info.value.problems)


# --------------------------------------------------------------------------------------
# detect, alpha_weight and the last canary stage's on_timeout
# --------------------------------------------------------------------------------------


def test_detect_and_alpha_weight_are_read() -> None:
    doc = base()
    doc["kpis"][0].update(detect=0.05, alpha_weight=2)
    doc["kpis"][1].update(detect=0.004)  # critical: any detect > 0, even below the margin
    policy = policy_from_dict(doc)
    assert policy.kpi("precision").detect == Margin(0.05, relative=False)
    assert policy.kpi("precision").alpha_weight == 2
    assert policy.kpi("errors").detect == Margin(0.004, relative=False)
    assert policy.kpi("errors").alpha_weight == 1
    pct = with_kpi({"name": "p95", "kind": "quantile", "q": 0.95, "margin": "10%",
                    "detect": "20%"})
    assert policy_from_dict(pct).kpi("p95").detect == Margin(0.2, relative=True)


@pytest.mark.parametrize(("detect", "fragment"), [
    (0.02, "0.02 must exceed the margin 0.02: a guardrail rolls back only beyond its margin"),
    (0.01, "must exceed the margin 0.02"),
    ("5%", "must be written like the margin (0.02), as an absolute number"),
    (0, "must be > 0, got 0"),
    ("x", "must be a number (absolute) or a percentage such as '10%'"),
    (1.5, "is not below 1; proportions are fractions"),
])
def test_detect_problems(detect: Any, fragment: str) -> None:
    doc = base()
    doc["kpis"][0]["detect"] = detect
    found = assert_problem(doc, "kpis[0].detect", fragment)
    assert len(found) == 1, found


def test_detect_of_a_relative_margin_and_of_reporting_kpis() -> None:
    kpi = {"name": "p95", "kind": "quantile", "q": 0.95, "margin": "10%", "detect": 0.02}
    assert_problem(with_kpi(kpi), "kpis[2].detect",
                   "must be written like the margin (10%), as a percentage")
    kpi = {"name": "p95", "kind": "quantile", "q": 0.95, "margin": "10%", "detect": "8%"}
    assert_problem(with_kpi(kpi), "kpis[2].detect", "8% must exceed the margin 10%")
    kpi = {"name": "auc", "kind": "auc", "role": "success", "detect": 0.02}
    assert_problem(with_kpi(kpi), "kpis[2].detect",
                   "a success KPI never rolls back on its comparison with the baseline")
    kpi = {"name": "f", "kind": "fairness", "metric": "recall", "segment_by": "region",
           "margin": "20%", "detect": "100%"}
    assert_problem(with_kpi(kpi), "kpis[2].detect", "would allow the KPI to drop to zero")


@pytest.mark.parametrize(("weight", "fragment"), [
    (0, "must be > 0, got 0"),
    (-1, "must be > 0, got -1"),
    ("2", "must be a number, got text"),
    (float("inf"), "must be a finite number"),
])
def test_alpha_weight_problems(weight: Any, fragment: str) -> None:
    doc = base()
    doc["kpis"][1]["alpha_weight"] = weight
    assert_problem(doc, "kpis[1].alpha_weight", fragment)


def test_alpha_weight_needs_a_rollback_check() -> None:
    kpi = {"name": "auc", "kind": "auc", "role": "info", "alpha_weight": 2}
    assert_problem(with_kpi(kpi), "kpis[2].alpha_weight",
                   "an info KPI without a 'limit' has no rollback check to weight")
    with_limit = {**kpi, "limit": 0.6}
    assert policy_from_dict(with_kpi(with_limit)).kpi("auc").alpha_weight == 2


def test_last_canary_stage_defaults_to_rollback_on_timeout() -> None:
    policy = policy_from_dict(base())  # shadow, 5, 50, 100
    assert [s.on_timeout for s in policy.gated_stages] == [
        OnTimeout.HOLD_AND_ALERT, OnTimeout.HOLD_AND_ALERT, OnTimeout.ROLLBACK]
    # Set on the stage, or in stage_defaults: as written.
    doc = base()
    doc["stages"][2]["on_timeout"] = "hold_and_alert"
    assert policy_from_dict(doc).stages[2].on_timeout is OnTimeout.HOLD_AND_ALERT
    doc = base()
    doc["stage_defaults"] = {"on_timeout": "promote_if_no_guardrail_fails"}
    assert {s.on_timeout for s in policy_from_dict(doc).gated_stages} == {
        OnTimeout.PROMOTE_IF_NO_GUARDRAIL_FAILS}
    # The shortcut forms too; a shadow stage right before 100% keeps holding.
    assert policy_from_dict({**base(), "stages": "5,25,100"}).stages[1].on_timeout is \
        OnTimeout.ROLLBACK
    assert policy_from_dict({**base(), "stages": "shadow,100"}).stages[0].on_timeout is \
        OnTimeout.HOLD_AND_ALERT
