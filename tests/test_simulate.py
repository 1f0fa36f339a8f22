"""Synthetic streams, scenarios and simulated rollouts."""

import math

import numpy as np
import pytest

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.gate import Action, Verdict
from mlflow_kpigate.gate.estimators import kpi_value
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.policy import load_policy, policy_from_dict
from mlflow_kpigate.simulate import (
    KpigateRule,
    PaperRule,
    StreamGenerator,
    builtin,
    load_scenarios,
    registry_from_stream,
    run_rollout,
    scenario_from_dict,
)
from mlflow_kpigate.simulate.runner import maturity_intervals
from mlflow_kpigate.simulate.stream import rng_for

BENCH = "benchmarks/policies/fraud_benchmark.yaml"
STREAM = {"requests_per_interval": 200_000, "horizon": 120}


@pytest.fixture(scope="module")
def bench_policy():
    return load_policy(BENCH)


def _draw_total(policy, stream, model, n, draws=5):
    gen = StreamGenerator(stream, AggregateSpec.from_policy(policy))
    total = None
    for i in range(draws):
        data = gen.draw(np.random.default_rng(i), model, n)
        part = data.requests.copy()
        part.merge(data.labelled)
        if total is None:
            total = part
        else:
            total.merge(part)
    return total


def test_stream_reproduces_configured_truth(bench_policy):
    stream = builtin("segment-fpr-x1.5")
    agg = _draw_total(bench_policy, stream, stream.baseline, 2_000_000)
    c = agg.confusion
    assert c.recall() == pytest.approx(0.876, abs=0.005)
    assert c.precision() == pytest.approx(0.918, abs=0.005)
    assert c.positives / c.n == pytest.approx(0.015, rel=0.02)
    assert agg.latency.mean() == pytest.approx(0.085, rel=0.01)
    assert agg.errors / agg.requests == pytest.approx(0.001, rel=0.1)
    # The candidate's EU false-positive rate is 1.5 times the baseline's, other regions equal.
    cand = _draw_total(bench_policy, stream, stream.candidate, 2_000_000)
    base_fpr = {k: v.false_positive_rate() for k, v in agg.segments["region"].items()}
    cand_fpr = {k: v.false_positive_rate() for k, v in cand.segments["region"].items()}
    assert cand_fpr["eu"] / base_fpr["eu"] == pytest.approx(1.5, rel=0.08)
    assert cand_fpr["us"] / base_fpr["us"] == pytest.approx(1.0, rel=0.1)


def test_candidate_latency_and_recall_effects(bench_policy):
    slow = builtin("latency-plus-10ms")
    agg = _draw_total(bench_policy, slow, slow.candidate, 500_000, draws=2)
    assert agg.latency.mean() == pytest.approx(0.095, rel=0.01)
    worse = builtin("recall-minus-5")
    agg = _draw_total(bench_policy, worse, worse.candidate, 2_000_000)
    assert agg.confusion.recall() == pytest.approx(0.826, abs=0.006)


def test_draws_are_keyed_for_common_random_numbers(bench_policy):
    stream = builtin("equal")
    gen = StreamGenerator(stream, AggregateSpec.from_policy(bench_policy))
    a = gen.draw(rng_for(1, 2, 3, 0, 1), stream.baseline, 10_000)
    b = gen.draw(rng_for(1, 2, 3, 0, 1), stream.baseline, 10_000)
    c = gen.draw(rng_for(1, 2, 4, 0, 1), stream.baseline, 10_000)
    assert a.labelled.to_dict() == b.labelled.to_dict()
    assert a.labelled.to_dict() != c.labelled.to_dict()


def test_drift_moves_recall_over_the_horizon():
    stream = scenario_from_dict({"stream": {"horizon": 11},
                                 "candidate": {"recall_drift": -0.1}})
    assert stream.candidate_at(0).recall == pytest.approx(0.876)
    assert stream.candidate_at(10).recall == pytest.approx(0.776)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"stream": {"prevalance": 0.01}}, r"scenario\.stream\.prevalance: unknown field"),
        ({"baseline": {"recall": "high"}}, r"scenario\.baseline\.recall: must be a number"),
        ({"stream": {"prevalence": 0.9}}, r"scenario\.stream\.prevalence: must be between"),
        ({"candidate": {"fpr_multiplier": {"mars": 2}}},
         r"fpr_multiplier\.mars: not one of the stream's segments"),
        ({"candidate": {"recall_delta": -0.9}}, r"recall/precision after the change"),
        ({"stream": {"label_delay": "soon"}}, r"scenario\.stream\.label_delay: .*not a duration"),
        ({"bogus": 1}, r"scenario\.bogus: unknown field"),
    ],
)
def test_scenario_errors_name_the_field(data, match):
    with pytest.raises(UsageError, match=match):
        scenario_from_dict(data)


def test_scenario_file_with_shared_settings(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "stream: {requests_per_interval: 5000, horizon: 7}\n"
        "scenarios:\n"
        "  - {name: a}\n"
        "  - {name: b, candidate: {recall_delta: -0.1}, stream: {horizon: 9}}\n"
    )
    a, b = load_scenarios(path)
    assert (a.name, a.requests_per_interval, a.horizon_intervals) == ("a", 5000, 7)
    assert (b.requests_per_interval, b.horizon_intervals) == (5000, 9)
    assert b.candidate.recall == pytest.approx(0.776)
    (tmp_path / "bad.yaml").write_text("scenarios: [")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_scenarios(tmp_path / "bad.yaml")
    with pytest.raises(UsageError, match="cannot read"):
        load_scenarios(tmp_path / "missing.yaml")


def test_equal_candidate_is_promoted_and_bad_one_rolled_back(bench_policy):
    equal = builtin("equal", STREAM)
    out = run_rollout(bench_policy, equal, KpigateRule(), seed=3, rep=0)
    assert out.status == "promoted"
    assert [lk.stage for lk in out.looks if lk.action is Action.PROMOTE] == [
        "canary-5", "canary-25", "canary-50"]
    bad = builtin("recall-minus-10", STREAM)
    out = run_rollout(bench_policy, bad, KpigateRule(), seed=3, rep=0)
    assert out.status == "rolled_back"
    assert out.final_stage == 0
    last = out.looks[-1].decision
    assert last.evidence_for("recall").verdict is Verdict.WORSE
    # Rolled back at 5%: users saw only the 5% stage's candidate responses.
    assert out.exposed_requests < 0.06 * len(out.looks) * STREAM["requests_per_interval"]


def test_paper_rule_rolls_back_an_equal_candidate(bench_policy):
    # The control-chart rule compares a 5% window against the baseline's full-traffic σ.
    equal = builtin("equal", STREAM)
    registry = registry_from_stream(bench_policy, equal, seed=0)
    out = run_rollout(bench_policy, equal, PaperRule(), seed=3, rep=0, registry=registry)
    assert out.status == "rolled_back"


def test_labels_count_only_once_mature():
    policy = policy_from_dict({
        "evaluation": {"interval": "5m", "maturity": "15m"},
        "stages": "5,100",
        "kpis": [{"name": "recall", "kind": "proportion", "metric": "recall",
                  "margin": 0.02}],
    })
    stream = builtin("equal", {"requests_per_interval": 20_000, "horizon": 5})
    assert maturity_intervals(policy, stream) == 3
    out = run_rollout(policy, stream, KpigateRule(), seed=1)
    first = [lk.decision.evidence_for("recall").verdict for lk in out.looks[:3]]
    assert first == [Verdict.INSUFFICIENT_DATA] * 3
    assert out.looks[3].decision.evidence_for("recall").samples > 0
    assert all(lk.action is not Action.PROMOTE for lk in out.looks[:3])


def test_registry_from_stream_summarises_full_traffic_windows(bench_policy):
    stream = builtin("equal", STREAM)
    reg = registry_from_stream(bench_policy, stream, seed=0, windows=20)
    recall = reg.get("recall")
    assert recall.mean == pytest.approx(0.876, abs=0.005)
    # σ of recall over one 200k-request window: about sqrt(p(1-p)/positives).
    expected = math.sqrt(0.876 * 0.124 / (200_000 * 0.015))
    assert recall.std == pytest.approx(expected, rel=0.5)
    fair = reg.get("fpr_fairness")
    assert 0.5 < fair.mean <= 1.0
    agg = _draw_total(bench_policy, stream, stream.baseline, 200_000, draws=1)
    assert kpi_value(bench_policy.kpi("latency_p95"), agg) == pytest.approx(0.1422, rel=0.02)
