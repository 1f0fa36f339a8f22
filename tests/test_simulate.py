"""Synthetic streams, scenarios and simulated rollouts."""

import math

import numpy as np
import pytest

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.gate import Action, Verdict
from mlflow_kpigate.gate.estimators import kpi_value
from mlflow_kpigate.kpis import AggregateSpec, Confusion, RoleAggregate
from mlflow_kpigate.policy import load_policy, policy_from_dict
from mlflow_kpigate.simulate import (
    BUILTIN,
    GOOD,
    KpigateRule,
    OracleRule,
    PaperRule,
    RunRecord,
    StreamGenerator,
    builtin,
    load_scenarios,
    oracle_tests,
    registry_from_stream,
    run_rollout,
    scenario_from_dict,
    should_promote,
    summarise,
    with_shadow_stage,
)
from mlflow_kpigate.simulate.oracle import Bernoulli, Gaussian
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
        ({"stream": {"requests_per_interval": 10, "requests_per_second": 2}},
         r"scenario\.stream\.requests_per_second: give either"),
        ({"stream": {"requests_per_second": "fast"}},
         r"scenario\.stream\.requests_per_second: must be a number"),
        ({"stream": {"horizon": "a month"}}, r"scenario\.stream\.horizon: .*not a duration"),
        ({"stream": {"horizon": "0s"}}, r"scenario\.stream\.horizon: must be longer"),
        ({"candidate": {"drift_start": "1h"}},
         r"scenario\.candidate\.drift_start: only applies with a recall_drift"),
        ({"candidate": {"recall_drift": -0.05, "drift_start": "later"}},
         r"scenario\.candidate\.drift_start: .*'promotion'"),
        ({"candidate": {"recall_drift": -0.05, "drift_duration": "long"}},
         r"scenario\.candidate\.drift_duration: .*not a duration"),
        ({"candidate": {"recall_drift": -0.9}},
         r"scenario\.candidate\.recall_drift: recall after the drift"),
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


# -- time-based stream settings and drift timing ------------------------------------------

def test_rate_and_horizon_in_time_resolve_per_interval():
    stream = scenario_from_dict({"stream": {"requests_per_second": 2, "horizon": "30d",
                                            "label_delay": "1h"}})
    hourly = stream.per_interval(3600)
    assert (hourly.requests_per_interval, hourly.horizon_intervals) == (7200, 720)
    assert hourly.per_interval(3600) == hourly  # resolving again changes nothing
    quarter = stream.per_interval(900)
    assert (quarter.requests_per_interval, quarter.horizon_intervals) == (1800, 2880)
    # A file without the new fields means what it meant before.
    old = scenario_from_dict({"stream": {"requests_per_interval": 5000, "horizon": 7}})
    assert old.per_interval(120) == old


def test_drift_timed_in_seconds_and_after_promotion():
    timed = scenario_from_dict({"stream": {"horizon": 500},
                                "candidate": {"recall_drift": -0.05, "drift_start": "1h",
                                              "drift_duration": "4h"}})
    at = [timed.candidate_at(t, 120).recall for t in (0, 30, 30 + 60, 30 + 120, 400)]
    assert at == pytest.approx([0.876, 0.876, 0.851, 0.826, 0.826])
    with pytest.raises(ValueError, match="needs the evaluation interval"):
        timed.candidate_at(40)
    bake = builtin("drift-after-promotion", {"horizon": 400})
    assert bake.drift_after_promotion
    assert should_promote(bake)
    assert bake.candidate_at(300, 120, promoted_at=None).recall == pytest.approx(0.876)
    assert bake.candidate_at(100, 120, promoted_at=100).recall == pytest.approx(0.876)
    assert bake.candidate_at(130, 120, promoted_at=100).recall == pytest.approx(0.8635)
    assert bake.candidate_at(399, 120, promoted_at=100).recall == pytest.approx(0.826)
    assert bake.drifted().recall == pytest.approx(0.826)


def test_should_promote_agrees_with_the_builtin_good_scenarios():
    for name in BUILTIN:
        assert should_promote(builtin(name)) == (name in GOOD), name
    # An equal candidate that drifts down during the rollout is a worse one.
    assert not should_promote(scenario_from_dict({"candidate": {"recall_drift": -0.05}}))


# -- exposure ------------------------------------------------------------------------------

def test_exposure_counts_requests_served_while_labels_are_pending(bench_policy):
    stream = builtin("recall-minus-10", {"requests_per_interval": 200_000, "horizon": 60,
                                         "label_delay": "15m"})
    delay = maturity_intervals(bench_policy, stream)
    assert delay == 8
    out = run_rollout(bench_policy, stream, OracleRule(stream), seed=2, rep=0)
    assert out.status == "rolled_back"
    last = out.looks[-1]
    assert last.interval >= delay  # nothing was labelled before
    # Every candidate answer served counts, those of the last `delay` intervals included.
    assert out.exposed_requests == last.candidate_requests
    assert out.exposed_requests > 0.045 * 200_000 * (last.interval + 1)


# -- the oracle ----------------------------------------------------------------------------

def test_oracle_tests_only_kpis_whose_truth_is_worse(bench_policy):
    assert oracle_tests(bench_policy, builtin("equal")) == ()
    assert oracle_tests(bench_policy, builtin("recall-plus-3.2")) == ()
    (recall,) = oracle_tests(bench_policy, builtin("recall-minus-5"))
    assert recall.kpi == "recall"
    assert recall.alpha == pytest.approx(0.05 / 4)  # the gate's per-KPI rollback share
    assert recall.threshold == pytest.approx(math.log(0.8 / 0.0125))
    assert recall.parts == (Bernoulli("recall", None, 0.876, pytest.approx(0.826)),)
    fpr = {t.kpi: t for t in oracle_tests(bench_policy, builtin("segment-fpr-x1.5"))}
    assert set(fpr) == {"precision", "fpr_fairness"}
    (eu,) = fpr["fpr_fairness"].parts
    assert eu.segment == "eu"
    assert eu.p1 == pytest.approx(1.5 * eu.p0)
    (latency,) = oracle_tests(bench_policy, builtin("latency-plus-10ms"))
    assert isinstance(latency.parts[0], Gaussian)
    drift = oracle_tests(bench_policy, builtin("recall-drift"))
    assert drift[0].parts[0].p1 == pytest.approx(0.826)  # the drift's end


def test_oracle_llrs_follow_the_formulas():
    agg = RoleAggregate()
    agg.confusion.merge(Confusion(tp=80, fn=20, fp=5, tn=895))
    part = Bernoulli("recall", None, 0.876, 0.826)
    expected = 80 * math.log(0.826 / 0.876) + 20 * math.log(0.174 / 0.124)
    assert part.llr(agg, "region") == pytest.approx(expected)
    agg.latency.update(np.exp(np.random.default_rng(0).normal(-2.5, 0.35, 5000)))
    g = Gaussian(-2.5, 0.35, -2.4, 0.35)
    assert g.llr(agg, "region") < 0  # the data are at the baseline's log-mean
    assert Gaussian(-2.6, 0.35, -2.5, 0.35).llr(agg, "region") > 0


def test_oracle_detects_recall_minus_5_near_its_expected_exposure(bench_policy):
    stream = builtin("recall-minus-5", {"requests_per_interval": 200_000, "horizon": 60})
    outs = [run_rollout(bench_policy, stream, OracleRule(stream), seed=5, rep=r)
            for r in range(30)]
    assert all(o.status == "rolled_back" for o in outs)
    assert not any(lk.action is Action.PROMOTE for o in outs for lk in o.looks)
    mean = float(np.mean([o.exposed_requests for o in outs]))
    # One-sided SPRT at α = 0.0125, 10k candidate requests per look: ~36k on average.
    assert 20_000 < mean < 60_000


def test_oracle_never_promotes_and_wald_accepts_an_equal_candidate(bench_policy):
    equal = builtin("equal", {"requests_per_interval": 200_000, "horizon": 20})
    claims_worse = builtin("recall-minus-5", {"requests_per_interval": 200_000,
                                              "horizon": 20})
    out = run_rollout(bench_policy, equal, OracleRule(claims_worse), seed=1)
    assert out.status == "holding"
    assert {lk.action for lk in out.looks} == {Action.HOLD}
    rule = OracleRule(claims_worse, accept_h0=True)
    out = run_rollout(bench_policy, equal, rule, seed=1)
    assert out.status == "holding"
    assert "nothing (left) to test" in out.looks[-1].reason


# -- shadow stage first --------------------------------------------------------------------

def test_with_shadow_stage_prepends_a_shadow_copy_of_the_first_stage(bench_policy):
    shadow = with_shadow_stage(bench_policy)
    first, rest = shadow.stages[0], shadow.stages[1:]
    assert first.shadow
    assert first.name == "shadow"
    assert first.traffic == 0
    canary = bench_policy.stages[0]
    assert (first.min_samples, first.min_dwell, first.max_duration, first.on_timeout,
            first.promote_margin_scale) == (canary.min_samples, canary.min_dwell,
                                            canary.max_duration, canary.on_timeout,
                                            canary.promote_margin_scale)
    assert rest == bench_policy.stages
    assert shadow.kpis == bench_policy.kpis
    assert policy_from_dict(shadow.raw).stages == shadow.stages  # a valid document
    assert with_shadow_stage(shadow) is shadow
    short = policy_from_dict({"stages": "5,100", "kpis": [
        {"name": "recall", "kind": "proportion", "metric": "recall", "margin": 0.02}]})
    assert [s.describe() for s in with_shadow_stage(short).stages] == [
        "shadow", "5%", "100%"]


def test_shadow_first_rollout_catches_a_bad_candidate_without_exposure(bench_policy):
    shadow = with_shadow_stage(bench_policy)
    bad = builtin("recall-minus-10", STREAM)
    out = run_rollout(shadow, bad, KpigateRule(), seed=3, rep=0)
    assert (out.status, out.final_stage, out.exposed_requests) == ("rolled_back", 0, 0)
    assert out.looks[-1].candidate_requests == len(out.looks) * STREAM["requests_per_interval"]
    good = run_rollout(shadow, builtin("equal", STREAM), KpigateRule(), seed=3, rep=0)
    assert good.status == "promoted"
    assert next(lk.stage for lk in good.looks if lk.action is Action.PROMOTE) == "shadow"


# -- after promotion (bake) ----------------------------------------------------------------

def test_runner_keeps_evaluating_through_the_bake(bench_policy):
    """With a bake the controller goes on after 100%: the baseline scores a shadow copy of
    every request, the change detector watches, and a candidate that collapses once it
    serves everything is rolled back after promotion."""
    policy = policy_from_dict({**bench_policy.raw, "bake": {"duration": "2h"}})
    stream = scenario_from_dict({
        "name": "bake", "stream": {"requests_per_interval": 200_000, "horizon": 90},
        "candidate": {"recall_drift": -0.2, "drift_start": "promotion",
                      "drift_duration": "0s"}})
    out = run_rollout(policy, stream, KpigateRule(), seed=1)
    assert out.promoted_look is not None
    assert out.status == "rolled_back"
    assert out.rolled_back_in_bake
    assert out.bake_looks >= 1
    assert out.decided_look == out.promoted_look
    last = out.looks[-1]
    assert last.stage == "full"
    assert last.reason.startswith("rollback after promotion: recall regressed during the bake")
    # At 100% every request is the candidate's answer.
    assert last.exposed_requests - out.exposed_at_promotion == 200_000 * out.bake_looks
    assert isinstance(last.decision, Decision)
    assert last.decision.stage_index == len(policy.stages) - 1
    figures = summarise([RunRecord.of(out)], should_promote(stream), 120.0)
    assert figures["bake_rollback_rate"] == 1.0
    assert figures["false_rollback_rate"] == 0.0
    assert figures["promote_rate"] == 1.0


def test_runner_stops_at_promotion_without_a_bake(bench_policy):
    out = run_rollout(bench_policy, builtin("drift-after-promotion", STREAM), KpigateRule(),
                      seed=3)
    assert out.status == "promoted"
    assert out.bake_looks == 0
    assert out.decided_look == out.promoted_look == out.looks[-1].interval
    figures = summarise([RunRecord.of(out)], True, 120.0)
    assert figures["bake_rollback_rate"] is None  # no bake period: null, not 0


def test_summarise_figures():
    records = [
        RunRecord("rolled_back", 30_000, None, 2, 0, False),
        RunRecord("rolled_back", 50_000, None, 4, 0, False),
        RunRecord("promoted", 1_000_000, 1_000_000, 29, 0, False),
        RunRecord("holding", 2_000_000, None, None, 0, False),
    ]
    worse = summarise(records, False, 120.0)
    assert worse["power"] == 0.5
    assert worse["false_rollback_rate"] is None
    assert worse["exposure_mean"] == 40_000
    assert worse["exposure_median"] == 40_000
    assert (worse["promote_rate"], worse["hold_rate"]) == (0.25, 0.25)
    assert worse["requests_to_promote_mean"] == 1_000_000
    assert worse["time_to_decision_hours_mean"] == pytest.approx((3 + 5 + 30) * 120 / 3600 / 3)
    assert worse["bake_rollback_rate"] is None
    assert worse["reps"] == 4
    good = summarise(records, True, 120.0)
    assert good["false_rollback_rate"] == 0.5
    assert good["power"] is None
    none = summarise([RunRecord("holding", 5, None, None, 0, False)], True, 120.0)
    assert none["time_to_decision_hours_mean"] is None
    baked = [RunRecord("rolled_back", 9, 5, 3, 4, True), RunRecord("promoted", 9, 5, 3, 9, False)]
    figures = summarise(baked, True, 120.0)
    assert figures["bake_rollback_rate"] == 0.5
    assert figures["false_rollback_rate"] == 0.0
    assert figures["promote_rate"] == 1.0


# --- shadow stages: both models on the same requests ---------------------------------------


def _paired_draws(policy, stream, rho, n=200_000, draws=4):
    from mlflow_kpigate.simulate.paired_stream import PairedGenerator

    gen = PairedGenerator(StreamGenerator(stream, AggregateSpec.from_policy(policy)))
    return [gen.draw(np.random.default_rng(i), stream.baseline, stream.candidate, n, rho)
            for i in range(draws)]


def test_paired_draw_has_each_roles_law_and_consistent_margins(bench_policy):
    """The joint draw's margins are the roles' own aggregates (what the independent
    estimators see) with the configured truth; its paired part is a valid record."""
    from mlflow_kpigate.kpis import PairedAggregate

    stream = builtin("recall-minus-5")
    b, c = Confusion(), Confusion()
    for d in _paired_draws(bench_policy, stream, 0.8):
        b.merge(d.baseline.labelled.confusion)
        c.merge(d.candidate.labelled.confusion)
        paired = d.labelled
        # Each role's labelled data are the margins of the outcome table.
        m_b, m_c = paired.outcomes.sum(axis=2), paired.outcomes.sum(axis=1)
        assert d.baseline.labelled.confusion.to_dict() == {
            "tp": m_b[1, 1], "fp": m_b[0, 1], "tn": m_b[0, 0], "fn": m_b[1, 0]}
        assert d.candidate.labelled.confusion.to_dict() == {
            "tp": m_c[1, 1], "fp": m_c[0, 1], "tn": m_c[0, 0], "fn": m_c[1, 0]}
        assert np.array_equal(paired.candidate_scores.pos, d.candidate.labelled.scores.pos)
        assert PairedAggregate.from_dict(paired.to_dict()).labelled == paired.labelled
        assert d.requests.errors.sum() == d.baseline.requests.requests
        assert d.requests.errors[1].sum() == d.baseline.requests.errors
        assert d.requests.log_latency.mean == pytest.approx(
            d.candidate.requests.latency.mean_log() - d.baseline.requests.latency.mean_log())
        segments = d.candidate.labelled.segments["region"]
        assert sum(s.n for s in segments.values()) == d.candidate.labelled.confusion.n
    assert b.recall() == pytest.approx(0.876, abs=0.01)
    assert c.recall() == pytest.approx(0.826, abs=0.01)
    assert c.precision() == pytest.approx(b.precision(), abs=0.01)


def test_correlation_sets_how_often_the_models_disagree(bench_policy):
    """The discordant fractions of the positives are those of the binormal truth: latent
    scores N(Φ⁻¹(recall), 1) per role, correlated at ρ, flagged above 0."""
    from scipy.stats import multivariate_normal, norm

    stream = builtin("recall-minus-5")
    a_b, a_c = norm.ppf(stream.baseline.recall), norm.ppf(stream.candidate.recall)
    seen = {}
    for rho in (0.0, 0.8, 0.95):
        t = sum(d.labelled.outcomes for d in _paired_draws(bench_policy, stream, rho,
                                                           draws=2))[1]
        both = multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([a_b, a_c])
        n = t.sum()
        for got, p in ((t[1, 0], norm.cdf(a_b) - both), (t[0, 1], norm.cdf(a_c) - both)):
            assert abs(got / n - p) < 4 * math.sqrt(p * (1 - p) / n)
        seen[rho] = (t[1, 0] + t[0, 1]) / n
    # Independent models disagree on p_b(1 − p_c) + p_c(1 − p_b); correlated ones far less.
    assert seen[0.8] < 0.5 * seen[0.0]
    assert seen[0.95] < seen[0.8]


def test_paired_draw_margins_have_each_roles_score_law(bench_policy):
    """Each role's fine score histogram from the joint draw follows that role's own law
    (chi-square tests of the positives and of the negatives, whose law is the mixture of
    the segments' laws at the segments' drawn counts)."""
    from scipy.stats import chi2

    stream = builtin("segment-fpr-x1.5")
    gen = StreamGenerator(stream, AggregateSpec.from_policy(bench_policy))
    draws = _paired_draws(bench_policy, stream, 0.8, n=500_000, draws=2)
    for role, model in (("baseline", stream.baseline), ("candidate", stream.candidate)):
        pos_law, neg_laws = gen._score_probs(model)
        labelled = [getattr(d, role).labelled for d in draws]
        negatives = {name: sum(a.segments["region"][name].fp + a.segments["region"][name].tn
                               for a in labelled) for name in gen.segment_names}
        expected_neg = sum(negatives[name] * law
                           for name, law in zip(gen.segment_names, neg_laws, strict=True))
        for observed, expected in (
                (sum(a.scores.pos for a in labelled),
                 pos_law * sum(a.confusion.positives for a in labelled)),
                (sum(a.scores.neg for a in labelled), expected_neg)):
            big = expected >= 5
            obs = np.append(observed[big], observed[~big].sum())
            exp = np.append(expected[big], expected[~big].sum())
            stat = float(((obs - exp) ** 2 / exp).sum())
            assert chi2.sf(stat, obs.size - 1) > 1e-4, role


def test_scenario_correlation_field():
    assert scenario_from_dict({}).correlation == 0.8
    assert scenario_from_dict({"candidate": {"correlation": 0.3}}).correlation == 0.3
    with pytest.raises(UsageError, match=r"candidate\.correlation: must be between"):
        scenario_from_dict({"candidate": {"correlation": 1.5}})


def test_a_shadow_first_rollout_judges_paired_strata(bench_policy):
    """The simulated shadow stage carries its paired part to the gate, as the collector's
    does; the split stages carry none."""
    stream = scenario_from_dict({"name": "equal", "stream": STREAM})
    judged = []

    class Recording(KpigateRule):
        def __call__(self, policy, stage_index, elapsed, samples, window, registry):
            judged.append(list(samples))
            return super().__call__(policy, stage_index, elapsed, samples, window, registry)

    outcome = run_rollout(with_shadow_stage(bench_policy), stream, Recording(), seed=3)
    assert outcome.looks[0].stage == "shadow"
    assert outcome.final_stage > 1
    last = judged[-1]
    assert last[0].paired is not None
    assert last[0].paired.labelled == last[0].candidate.labelled > 0
    assert all(s.paired is None for s in last[1:])
