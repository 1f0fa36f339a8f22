"""The policy's ``bake`` section and ``evaluation.window_share``: defaults, the values the
bake runs with, and one-line problems naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlflow_kpigate.core.errors import PolicyError
from mlflow_kpigate.policy import DEFAULT_BAKE_ARL, Bake, load_policy, policy_from_dict

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "evaluation": {"interval": "5m"},
    "stages": [5, 50, 100],
    "kpis": [
        {"name": "recall", "kind": "proportion", "metric": "recall", "role": "critical",
         "margin": 0.02},
        {"name": "precision", "kind": "proportion", "metric": "precision", "role": "guardrail",
         "margin": 0.02},
        {"name": "auc", "kind": "auc", "role": "success"},
    ],
}


def with_(**sections):
    return {**BASE, **sections}


def problems(doc) -> list[str]:
    with pytest.raises(PolicyError) as info:
        policy_from_dict(doc)
    return info.value.problems


def test_no_bake_section_means_no_bake_and_no_window_check():
    policy = policy_from_dict(BASE)
    assert policy.bake == Bake()
    assert not policy.bake.enabled
    assert policy.evaluation.window_share == 0.0
    assert not policy_from_dict(with_(bake={"duration": "0s"})).bake.enabled


def test_bake_values_and_watched_kpis():
    policy = policy_from_dict(with_(bake={"duration": "24h"}))
    assert policy.bake == Bake(86400.0, DEFAULT_BAKE_ARL, ())
    assert [k.name for k in policy.baked_kpis] == ["recall", "precision"]
    chosen = policy_from_dict(with_(bake={"duration": "2h", "arl": "60d", "kpis": ["recall"]}))
    assert chosen.bake == Bake(7200.0, 60 * 86400.0, ("recall",))
    assert [k.name for k in chosen.baked_kpis] == ["recall"]
    window = policy_from_dict(with_(evaluation={"interval": "5m", "window_share": 0.25}))
    assert window.evaluation.window_share == 0.25


@pytest.mark.parametrize(("bake", "evaluation", "expected"), [
    ({"duration": "1d", "arl": "12h"}, None,
     "bake.arl: (12h) is not longer than bake.duration (1d): a false alarm would be expected "
     "within every bake; raise it (e.g. 30d)"),
    ({"duration": "1h", "arl": "1m"}, None,
     "bake.arl: (1m) is shorter than evaluation.interval (5m)"),
    ({"duration": "1h", "arl": 0}, None, "bake.arl: must be > 0"),
    ({"duration": "soon"}, None, "bake.duration: 'soon' is not a duration"),
    ({"duration": -1}, None, "bake.duration: must be a non-negative duration"),
    ({"duration": "1h", "kpis": ["recal"]}, None,
     "bake.kpis[0]: 'recal' is not a KPI of this policy; did you mean 'recall'?"),
    ({"duration": "1h", "kpis": ["auc"]}, None,
     "bake.kpis[0]: 'auc' is a success KPI; the bake watches critical and guardrail KPIs"),
    ({"duration": "1h", "kpis": ["recall", "recall"]}, None,
     "bake.kpis[1]: 'recall' is listed twice"),
    ({"duration": "1h", "kpis": "recall"}, None, "bake.kpis: must be a non-empty list"),
    ({"duration": "1h", "window": 3}, None, "bake.window: unknown field"),
    ("24h", None, "bake: must be a mapping"),
    (None, {"window_share": 1}, "evaluation.window_share: must be < 1, got 1"),
    (None, {"window_share": -0.1}, "evaluation.window_share: must be >= 0"),
])
def test_problems_name_the_field(bake, evaluation, expected):
    doc = dict(BASE)
    if bake is not None:
        doc["bake"] = bake
    if evaluation is not None:
        doc["evaluation"] = {"interval": "5m", **evaluation}
    found = problems(doc)
    assert any(p.startswith(expected) for p in found), found


def test_a_bake_needs_a_kpi_to_watch():
    doc = {**BASE, "kpis": [BASE["kpis"][2]], "bake": {"duration": "1h"}}
    assert any(p.startswith("bake: has no critical or guardrail KPI to watch")
               for p in problems(doc))


@pytest.mark.parametrize(("path", "duration"), [
    ("examples/policies/fraud.yaml", 86400.0),
    ("examples/policies/fraud_demo.yaml", 45.0),
    ("mlflow_kpigate/policies/default.yaml", 3600.0),
])
def test_the_shipped_policies_bake(path, duration):
    policy = load_policy(REPO / path)
    assert policy.bake.duration == duration
    assert policy.bake.arl == DEFAULT_BAKE_ARL
    assert policy.evaluation.window_share == 0.2
    # a false alarm is expected less than once in 30 bakes (docs/statistics.md)
    assert policy.bake.duration / policy.bake.arl <= 1 / 30
    assert yaml.safe_load((REPO / path).read_text())["bake"]["arl"] == "30d"
