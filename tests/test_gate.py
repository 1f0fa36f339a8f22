"""Decision rules of the gate, end to end on role aggregates built from seeded random data."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlflow_kpigate.gate import (
    Action,
    BaselineKpi,
    Decision,
    RegistryBaseline,
    StageSample,
    Verdict,
    evaluate,
    planning,
)
from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius
from mlflow_kpigate.gate.estimators import Strata, measure
from mlflow_kpigate.gate.null_variance import (
    adjust_toward_pooled,
    pooled_variance,
    restricted_variance,
)
from mlflow_kpigate.gate.planning import plan, wald_asn
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.policy import Policy, load_policy, policy_from_dict

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"
HOUR = 3600.0
REGIONS = ("eu", "us", "apac")

RECALL = {"name": "recall", "kind": "proportion", "metric": "recall", "margin": 0.05}
PRECISION = {"name": "precision", "kind": "proportion", "metric": "precision",
             "margin": 0.05}
ERRORS = {"name": "error_rate", "kind": "proportion", "metric": "error_rate",
          "role": "critical", "margin": 0.01}
P95 = {"name": "latency_p95", "kind": "quantile", "q": 0.95, "margin": "10%"}
FAIRNESS = {"name": "fpr_fairness", "kind": "fairness", "metric": "false_positive_rate",
            "segment_by": "region", "margin": "20%"}


def make_policy(*kpis: dict[str, Any], stage: dict[str, Any] | None = None,
                **top: Any) -> Policy:
    """Stages 5% → 25% → 50% → 100%; ``stage`` overrides the settings of every stage."""
    settings = {"min_samples": {"requests": 5000, "labelled": 5000}, "min_dwell": "1h",
                "max_duration": "1d", **(stage or {})}
    doc = {
        "stages": [{"traffic": t, **settings} for t in (5, 25, 50)] + [{"traffic": 100}],
        "kpis": [copy.deepcopy(k) for k in kpis],
        **top,
    }
    return policy_from_dict(doc)


def role(policy: Policy, seed: int, n: int = 20_000, *, labelled: int | None = None,
         prevalence: float = 0.5, recall: float = 0.876, fpr: float = 0.05,
         fpr_by_region: dict[str, float] | None = None, error_rate: float = 0.002,
         latency_scale: float = 1.0, separation: float = 2.5) -> RoleAggregate:
    """One role's aggregate: ``n`` requests, of which ``labelled`` (default all) are labelled.

    Latency is lognormal (median 85 ms, log-sd 0.22) times ``latency_scale``; labels have
    the given prevalence; the prediction flags a positive with probability ``recall`` and a
    negative with probability ``fpr`` (per region if ``fpr_by_region``); scores separate
    the classes by ``separation`` logits.
    """
    rng = np.random.default_rng(seed)
    agg = RoleAggregate(AggregateSpec.from_policy(policy))
    latency = latency_scale * np.exp(rng.normal(math.log(0.085), 0.22, n))
    agg.add_requests(latency, rng.random(n) < error_rate)
    m = n if labelled is None else labelled
    y = rng.random(m) < prevalence
    region = rng.choice(np.array(REGIONS), m)
    neg_rate = np.full(m, fpr)
    for name, rate in (fpr_by_region or {}).items():
        neg_rate[region == name] = rate
    pred = np.where(y, rng.random(m) < recall, rng.random(m) < neg_rate)
    score = 1 / (1 + np.exp(-rng.normal(-1.5 + separation * y, 1.2)))
    agg.add_labelled(y, pred, score, segments={"region": region})
    return agg


def samples(policy: Policy, baseline: dict[str, Any] | None = None,
            candidate: dict[str, Any] | None = None, *, stage_index: int = 1,
            seed: int = 0) -> list[StageSample]:
    """One stage of data for both roles with the given ``role`` keyword arguments."""
    return [StageSample(stage_index,
                        role(policy, 1000 + seed, **(baseline or {})),
                        role(policy, 2000 + seed, **(candidate or {})))]


def strict_json(text: str) -> Any:
    def no_constants(name: str) -> Any:
        raise AssertionError(f"JSON contains {name}")
    return json.loads(text, parse_constant=no_constants)


def check_evidence(decision: Decision) -> None:
    """Every evidence entry is complete: estimate, bounds, samples, verdict, one-line reason."""
    assert decision.evidence
    assert "\n" not in decision.reason
    for ev in decision.evidence:
        assert isinstance(ev.verdict, Verdict)
        assert ev.reason
        assert "\n" not in ev.reason
        assert ev.reason.startswith(ev.kpi)
        assert ev.samples >= 0
        if not math.isfinite(ev.delta):
            # No estimate yet: allowed only with a verdict saying so (an info KPI is just
            # reported; a breach of the candidate's own limit needs no comparison).
            assert ev.verdict in (Verdict.INSUFFICIENT_DATA, Verdict.REPORTED,
                                  Verdict.LIMIT_BREACHED, Verdict.OUTSIDE_CONTROL_LIMITS)
            assert "not enough" in ev.reason or "no " in ev.reason or "needs" in ev.reason \
                or ev.verdict.blocks_rollout
            continue
        assert ev.samples > 0
        for value in (ev.delta, ev.lower, ev.upper, ev.baseline_value, ev.candidate_value):
            assert math.isfinite(value), ev
        assert ev.lower <= ev.delta <= ev.upper
        assert ev.statistic


# --- rollback on a confidently worse candidate --------------------------------------------


def test_clearly_worse_recall_rolls_back():
    policy = make_policy(RECALL, PRECISION, ERRORS)
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, {}, {"recall": 0.676}))
    assert d.action is Action.ROLLBACK
    assert d.alert
    ev = d.evidence_for("recall")
    assert ev.verdict is Verdict.WORSE
    assert ev.upper < ev.rollback_threshold == pytest.approx(-0.05)
    assert ev.candidate_value == pytest.approx(0.676, abs=0.02)
    assert "recall" in d.reason
    assert d.reason.startswith("rollback: recall is confidently worse")
    # The other KPIs are unaffected.
    assert d.evidence_for("precision").verdict is not Verdict.WORSE
    assert d.evidence_for("error_rate").verdict is not Verdict.WORSE
    check_evidence(d)


def test_critical_kpi_rolls_back_at_margin_zero_guardrail_does_not():
    # Recall 3 points lower, with a 5-point margin and plenty of data.
    data = {"baseline": {"n": 60_000}, "candidate": {"n": 60_000, "recall": 0.846}}
    critical = make_policy({**RECALL, "role": "critical"}, ERRORS)
    d = evaluate(critical, 1, 2 * HOUR, samples(critical, **data))
    ev = d.evidence_for("recall")
    assert d.action is Action.ROLLBACK
    assert ev.verdict is Verdict.WORSE
    assert ev.rollback_threshold == 0.0
    assert "worse than the baseline" in ev.reason

    guardrail = make_policy(RECALL, ERRORS)
    d = evaluate(guardrail, 1, 2 * HOUR, samples(guardrail, **data))
    ev = d.evidence_for("recall")
    assert d.action is not Action.ROLLBACK
    assert ev.verdict is Verdict.NON_INFERIOR
    assert -0.05 < ev.upper < 0  # confidently worse, but within the margin


# --- promote / hold -----------------------------------------------------------------------


def test_equal_candidate_with_enough_data_promotes_to_the_next_stage():
    policy = make_policy(RECALL, PRECISION, ERRORS, P95)
    d = evaluate(policy, 1, 2 * HOUR, samples(policy))
    assert d.action is Action.PROMOTE, d.reason
    assert d.next_stage_index == 2
    assert not d.timed_out
    assert not d.alert
    assert all(c.met for c in d.checks)
    for name in ("recall", "precision", "error_rate", "latency_p95"):
        assert d.evidence_for(name).verdict in (Verdict.NON_INFERIOR, Verdict.BETTER)
    assert d.reason.startswith("promote to 50%")
    check_evidence(d)


def test_equal_candidate_with_too_little_data_holds():
    policy = make_policy(RECALL, PRECISION, ERRORS,
                         stage={"min_samples": {"requests": 5000, "labelled": 5000}})
    small = {"n": 3000}
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, small, small))
    assert d.action is Action.HOLD
    assert d.next_stage_index is None
    assert "candidate requests in stage: 3,000 of 5,000" in d.reason
    assert "labelled candidate predictions in stage: 3,000 of 5,000" in d.reason
    check_evidence(d)


def test_enough_data_but_dwell_not_met_holds():
    policy = make_policy(RECALL, PRECISION, ERRORS)
    d = evaluate(policy, 1, 0.5 * HOUR, samples(policy))
    assert d.action is Action.HOLD
    assert "min dwell 1h not reached" in d.reason
    dwell = next(c for c in d.checks if c.name.startswith("dwell"))
    assert not dwell.met
    # The statistics alone would have allowed it.
    assert all(ev.verdict in (Verdict.NON_INFERIOR, Verdict.BETTER) for ev in d.evidence)


def test_zero_labelled_data_never_promotes():
    """Fail closed: no labels means no estimate, even with no sample minimum and dwell met."""
    policy = make_policy(RECALL, ERRORS, stage={"min_samples": {"requests": 0, "labelled": 0},
                                                "min_dwell": 0, "max_duration": None})
    no_labels = {"labelled": 0}
    d = evaluate(policy, 1, 10 * HOUR, samples(policy, no_labels, no_labels))
    assert d.action is Action.HOLD
    ev = d.evidence_for("recall")
    assert ev.verdict is Verdict.INSUFFICIENT_DATA
    assert ev.samples == 0
    assert "recall" in d.reason
    # Only the candidate unlabelled is enough to hold.
    d = evaluate(policy, 1, 10 * HOUR, samples(policy, {}, no_labels))
    assert d.action is Action.HOLD
    assert d.evidence_for("recall").verdict is Verdict.INSUFFICIENT_DATA
    # And with no samples at all.
    d = evaluate(policy, 1, 10 * HOUR, [])
    assert d.action is Action.HOLD
    assert {ev.verdict for ev in d.evidence} == {Verdict.INSUFFICIENT_DATA}
    check_evidence(d)


def test_evidence_is_pooled_over_stages_but_minimums_count_the_current_stage():
    policy = make_policy(RECALL, ERRORS)
    earlier = samples(policy, stage_index=0, seed=1)
    current = samples(policy, {"n": 1000}, {"n": 1000}, stage_index=1, seed=2)
    d = evaluate(policy, 1, 2 * HOUR, earlier + current)
    assert d.action is Action.HOLD
    assert "1,000 of 5,000" in d.reason
    # Recall's evidence counts both stages' labelled positives.
    assert d.evidence_for("recall").samples > 10_000
    # A later stage's data is ignored.
    later = samples(policy, {}, {"recall": 0.5}, stage_index=2, seed=3)
    assert evaluate(policy, 1, 2 * HOUR, earlier + current + later).to_dict() == d.to_dict()


# --- hard limits and registry control limits ----------------------------------------------


def test_hard_limit_breach_rolls_back():
    # Both roles have recall 0.70: no difference, but the candidate is below its 0.8 floor.
    policy = make_policy({**RECALL, "limit": 0.8}, ERRORS)
    low = {"recall": 0.70}
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, low, low))
    assert d.action is Action.ROLLBACK
    ev = d.evidence_for("recall")
    assert ev.verdict is Verdict.LIMIT_BREACHED
    assert "hard limit" in ev.reason
    assert "recall" in ev.reason
    check_evidence(d)


def test_hard_limit_not_yet_shown_blocks_promotion():
    # Recall 0.82 against a 0.80 floor with little data: no breach, but not proven either.
    policy = make_policy({**RECALL, "limit": 0.8}, ERRORS,
                         stage={"min_samples": {"requests": 100, "labelled": 100}})
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, {"recall": 0.82, "n": 800},
                                              {"recall": 0.82, "n": 800}))
    assert d.action is Action.HOLD
    assert "hard limit is not yet confidently respected" in d.reason


REGISTRY = RegistryBaseline(kpis={"recall": BaselineKpi(mean=0.876, std=0.01)})


def test_registry_control_limits_roll_back():
    policy = make_policy(RECALL, ERRORS, control_limits={"k": 2})
    # Live recall 0.80 in both roles: within the margin of the live baseline, but far
    # below the registry's μ − 2σ = 0.856.
    low = {"recall": 0.80}
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, low, low), REGISTRY)
    assert d.action is Action.ROLLBACK
    ev = d.evidence_for("recall")
    assert ev.verdict is Verdict.OUTSIDE_CONTROL_LIMITS
    assert "control limit" in ev.reason
    assert "0.856" in ev.reason
    assert d.rollback_tests == 3

    # Without a registry there is no such check (and no share of α for it).
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, low, low))
    assert d.action is not Action.ROLLBACK
    assert d.evidence_for("recall").verdict is not Verdict.OUTSIDE_CONTROL_LIMITS
    assert d.rollback_tests == 2
    # Nor without policy control limits.
    plain = make_policy(RECALL, ERRORS)
    d = evaluate(plain, 1, 2 * HOUR, samples(plain, low, low), REGISTRY)
    assert d.action is not Action.ROLLBACK
    assert d.rollback_tests == 2


def test_control_limits_need_a_registry_spread():
    policy = make_policy(RECALL, ERRORS, control_limits={"k": 2})
    no_spread = RegistryBaseline(kpis={"recall": BaselineKpi(mean=0.876)})
    low = {"recall": 0.80}
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, low, low), no_spread)
    assert d.action is not Action.ROLLBACK
    assert d.rollback_tests == 2


# --- latency ------------------------------------------------------------------------------


def test_slower_candidate_rolls_back_on_the_latency_quantile():
    policy = make_policy(P95, ERRORS)
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, {}, {"latency_scale": 1.3}))
    assert d.action is Action.ROLLBACK
    ev = d.evidence_for("latency_p95")
    assert ev.verdict is Verdict.WORSE
    assert "latency_p95" in d.reason
    assert ev.candidate_value / ev.baseline_value == pytest.approx(1.3, rel=0.05)
    check_evidence(d)


def test_equal_latency_is_non_inferior_not_better():
    policy = make_policy(P95, ERRORS)
    d = evaluate(policy, 1, 2 * HOUR, samples(policy))
    ev = d.evidence_for("latency_p95")
    # The margin is built into the exceedance statistic, so a positive lower bound shows
    # non-inferiority, not an improvement.
    assert ev.lower > 0
    assert ev.verdict is Verdict.NON_INFERIOR
    assert d.action is Action.PROMOTE


def test_latency_within_the_margin_does_not_roll_back():
    policy = make_policy(P95, ERRORS)
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, {}, {"latency_scale": 1.04}))
    assert d.action is not Action.ROLLBACK
    assert d.evidence_for("latency_p95").verdict is not Verdict.WORSE


def test_slower_geometric_mean_rolls_back():
    mean = {"name": "latency_mean", "kind": "mean", "source": "latency", "margin": "10%"}
    policy = make_policy(mean, ERRORS)
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, {}, {"latency_scale": 1.3}))
    assert d.action is Action.ROLLBACK
    assert d.evidence_for("latency_mean").verdict is Verdict.WORSE
    d = evaluate(policy, 1, 2 * HOUR, samples(policy))
    assert d.evidence_for("latency_mean").verdict is Verdict.NON_INFERIOR


# --- fairness -----------------------------------------------------------------------------


def test_fairness_rollback_names_the_segment_pair():
    policy = make_policy(FAIRNESS, ERRORS)
    big = {"n": 60_000, "prevalence": 0.1}
    unfair = {**big, "fpr_by_region": {"us": 0.15}}  # ×3 the others' 0.05
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, big, unfair))
    assert d.action is Action.ROLLBACK
    ev = d.evidence_for("fpr_fairness")
    assert ev.verdict is Verdict.WORSE
    assert ev.candidate_value == pytest.approx(1 / 3, rel=0.1)
    assert ev.baseline_value > 0.85
    pairs = ("[region=eu vs us]", "[region=apac vs us]")
    assert any(p in ev.reason for p in pairs), ev.reason
    assert any(p in d.reason for p in pairs)
    check_evidence(d)


def test_fairness_margin_is_a_relative_drop_of_the_index():
    # margin 20%: the candidate's index may be as low as 0.8 × the baseline's, so the
    # log-scale thresholds are ln(0.8) (rollback) and s·ln(0.8) (promotion at scale s).
    policy = make_policy(FAIRNESS, ERRORS, stage={"promote_margin_scale": 2})
    big = {"n": 20_000, "prevalence": 0.1}
    ev = evaluate(policy, 1, 2 * HOUR, samples(policy, big, big)).evidence_for("fpr_fairness")
    assert ev.rollback_threshold == pytest.approx(math.log(0.8))
    assert ev.promote_threshold == pytest.approx(2 * math.log(0.8))


def test_equal_fairness_does_not_roll_back():
    policy = make_policy(FAIRNESS, ERRORS)
    big = {"n": 60_000, "prevalence": 0.1}
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, big, big))
    assert d.action is not Action.ROLLBACK
    assert d.evidence_for("fpr_fairness").verdict is not Verdict.WORSE


# --- on_timeout ---------------------------------------------------------------------------


def _inconclusive(policy: Policy) -> list[StageSample]:
    """Equal roles, far too little data to show anything."""
    return samples(policy, {"n": 300}, {"n": 300})


def test_timeout_hold_and_alert():
    policy = make_policy(RECALL, ERRORS, stage={"on_timeout": "hold_and_alert",
                                                "min_samples": {"requests": 100,
                                                                "labelled": 100}})
    d = evaluate(policy, 1, 23 * HOUR, _inconclusive(policy))
    assert d.action is Action.HOLD
    assert not d.timed_out
    assert not d.alert
    d = evaluate(policy, 1, 24 * HOUR, _inconclusive(policy))
    assert d.action is Action.HOLD
    assert d.timed_out
    assert d.alert
    assert "max_duration 1d reached" in d.reason


def test_timeout_rollback():
    policy = make_policy(RECALL, ERRORS, stage={"on_timeout": "rollback"})
    d = evaluate(policy, 1, 24 * HOUR, _inconclusive(policy))
    assert d.action is Action.ROLLBACK
    assert d.timed_out
    assert d.alert
    assert "max_duration" in d.reason


def test_timeout_promote_if_no_guardrail_fails():
    met = make_policy(RECALL, ERRORS, stage={"on_timeout": "promote_if_no_guardrail_fails",
                                             "min_samples": {"requests": 100,
                                                             "labelled": 100}})
    d = evaluate(met, 1, 24 * HOUR, _inconclusive(met))
    assert d.evidence_for("recall").verdict is Verdict.INCONCLUSIVE
    assert d.action is Action.PROMOTE
    assert d.next_stage_index == 2
    assert d.timed_out
    assert d.alert
    assert "NOT shown" in d.reason

    unmet = make_policy(RECALL, ERRORS, stage={"on_timeout": "promote_if_no_guardrail_fails"})
    d = evaluate(unmet, 1, 24 * HOUR, _inconclusive(unmet))
    assert d.action is Action.HOLD
    assert d.timed_out
    assert d.alert
    assert "300 of 5,000" in d.reason


def test_last_canary_stage_rolls_back_on_timeout_by_default():
    doc = {"stages": [{"traffic": t, "max_duration": "1d",
                       "min_samples": {"requests": 100, "labelled": 100}}
                      for t in (5, 25, 50)] + [{"traffic": 100}],
           "kpis": [copy.deepcopy(RECALL), copy.deepcopy(ERRORS)]}
    policy = policy_from_dict(doc)
    d = evaluate(policy, 2, 24 * HOUR, _inconclusive(policy))
    assert d.action is Action.ROLLBACK
    assert d.timed_out
    # Earlier stages keep holding and alerting.
    d = evaluate(policy, 1, 24 * HOUR, _inconclusive(policy))
    assert d.action is Action.HOLD
    assert d.timed_out
    # Holding at the last stage is still possible, but must be asked for.
    doc["stages"][2]["on_timeout"] = "hold_and_alert"
    held = policy_from_dict(doc)
    assert evaluate(held, 2, 24 * HOUR, _inconclusive(held)).action is Action.HOLD


def test_timeout_never_overrides_a_rollback():
    policy = make_policy(RECALL, ERRORS, stage={"on_timeout": "promote_if_no_guardrail_fails"})
    d = evaluate(policy, 1, 24 * HOUR, samples(policy, {}, {"recall": 0.676}))
    assert d.action is Action.ROLLBACK
    assert not d.timed_out


# --- roles and the error budget -----------------------------------------------------------


def test_success_and_info_kpis_never_roll_back():
    success = {"name": "recall", "kind": "proportion", "metric": "recall", "role": "success"}
    info = {"name": "auc", "kind": "auc", "role": "info"}
    policy = make_policy(success, info, ERRORS)
    worse = {"recall": 0.5, "separation": 0.2}
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, {}, worse))
    assert d.action is Action.PROMOTE, d.reason
    rec, auc = d.evidence_for("recall"), d.evidence_for("auc")
    assert rec.upper < -0.3  # confidently much worse, yet not a rollback
    assert rec.verdict is Verdict.INCONCLUSIVE
    assert auc.verdict is Verdict.REPORTED
    assert auc.candidate_value < auc.baseline_value - 0.2
    assert math.isnan(rec.rollback_threshold)
    assert math.isnan(rec.alpha_rollback)
    assert d.rollback_tests == 1
    # A success KPI that does improve is reported as better.
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, worse, {}))
    assert d.evidence_for("recall").verdict is Verdict.BETTER
    check_evidence(d)


def test_bonferroni_counts_decisive_kpis_limits_and_control_limits():
    registry = RegistryBaseline(kpis={"recall": BaselineKpi(0.876, 0.01),
                                      "precision": BaselineKpi(0.9, 0.01),
                                      "error_rate": BaselineKpi(0.002)})  # no spread
    policy = make_policy({**RECALL, "limit": 0.8}, PRECISION, ERRORS,
                         {"name": "auc", "kind": "auc", "role": "success"},
                         control_limits={"k": 3}, evaluation={"alpha_rollback": 0.06})
    d = evaluate(policy, 1, 2 * HOUR, samples(policy), registry)
    # 3 decisive KPIs + 1 hard limit + 2 control limits (error_rate has no σ).
    assert d.rollback_tests == 6
    assert d.alpha_rollback_per_test == pytest.approx(0.01)
    for name in ("recall", "precision", "error_rate"):
        assert d.evidence_for(name).alpha_rollback == pytest.approx(0.01)
        assert d.evidence_for(name).alpha_promote == pytest.approx(0.05)
    d = evaluate(policy, 1, 2 * HOUR, samples(policy))
    assert d.rollback_tests == 4
    assert d.alpha_rollback_per_test == pytest.approx(0.015)


def test_promote_margin_scale_widens_the_promotion_margin_only():
    policy = make_policy(RECALL, ERRORS, stage={"promote_margin_scale": 3,
                                                "min_samples": {"requests": 100,
                                                                "labelled": 100}})
    d = evaluate(policy, 1, 2 * HOUR, samples(policy, {"n": 600}, {"n": 600}))
    ev = d.evidence_for("recall")
    assert ev.promote_threshold == pytest.approx(-0.15)
    assert ev.rollback_threshold == pytest.approx(-0.05)
    assert d.action is Action.PROMOTE
    plain = make_policy(RECALL, ERRORS, stage={"min_samples": {"requests": 100,
                                                               "labelled": 100}})
    d = evaluate(plain, 1, 2 * HOUR, samples(plain, {"n": 600}, {"n": 600}))
    assert d.evidence_for("recall").verdict is Verdict.INCONCLUSIVE
    assert d.action is Action.HOLD
    assert "more samples for an equal candidate" in d.evidence_for("recall").reason


def test_evaluate_refuses_the_final_stage_and_unknown_stages():
    policy = make_policy(RECALL)
    with pytest.raises(ValueError, match="final"):
        evaluate(policy, 3, 0.0, [])
    with pytest.raises(ValueError, match="outside"):
        evaluate(policy, 4, 0.0, [])


# --- rollback tests at the null ----------------------------------------------------------


FPR = {"name": "fpr", "kind": "proportion", "metric": "false_positive_rate", "margin": 0.01}


@pytest.mark.parametrize(("spec", "m_rollback", "diff"), [
    ({**RECALL, "role": "critical"}, 0.0, 0.0),   # pooled p̄ at Δ = 0
    (RECALL, 1.0, -0.05),                          # higher is better: p_c − p_b = −margin
    (FPR, 1.0, +0.01),                             # lower is better: p_c − p_b = +margin
])
def test_proportion_rollback_test_uses_the_variance_under_its_null(spec, m_rollback, diff):
    policy = make_policy(spec, ERRORS)
    kpi = policy.kpi(spec["name"])
    data = samples(policy, {"n": 4000, "fpr": 0.04}, {"n": 800, "recall": 0.8, "fpr": 0.06})
    meas = measure(kpi, Strata(data), m_rollback, 1.0)
    metric = spec["metric"]
    xb, nb = data[0].baseline.confusion.rate(metric)
    xc, nc = data[0].candidate.confusion.rate(metric)
    adjusted = adjust_toward_pooled(xc, nc, xb, nb)  # one stratum: its own null proportions
    roll, prom = meas.rollback_tests[0], meas.promote_tests[0]
    assert roll.variance == pytest.approx(restricted_variance(*adjusted, diff), rel=1e-12)
    if diff == 0:
        assert roll.variance == pytest.approx(pooled_variance(*adjusted), rel=1e-12)
    # The wrong side of the null would give another variance: the direction matters.
    assert roll.variance != pytest.approx(restricted_variance(*adjusted, -diff), rel=1e-3) \
        or diff == 0
    # The promotion test keeps the unrestricted Agresti–Caffo variance.
    pb, pc = (xb + 1) / (nb + 2), (xc + 1) / (nc + 2)
    assert prom.variance == pytest.approx(pb * (1 - pb) / (nb + 2) + pc * (1 - pc) / (nc + 2))
    assert roll.variance != pytest.approx(prom.variance, rel=1e-3)


def test_a_stage_without_events_does_not_mask_a_later_one():
    """No errors at all in a first stage, 5% candidate errors in the second: the null
    proportion comes from all strata, so the quiet stage's variance is not ~0 and its
    weight cannot swamp the second stage (with per-stage null proportions it did, and
    the pooled estimate stayed at ~0)."""
    policy = make_policy(ERRORS)
    quiet = {"n": 6000, "error_rate": 0.0}
    data = (samples(policy, quiet, quiet, stage_index=0)
            + samples(policy, quiet, {"n": 6000, "error_rate": 0.05}, stage_index=1, seed=1))
    meas = measure(policy.kpi("error_rate"), Strata(data), 0.0, 1.0)
    assert meas.rollback_tests[0].delta < -0.02
    d = evaluate(policy, 1, 2 * HOUR, data)
    assert d.action is Action.ROLLBACK
    assert d.evidence_for("error_rate").verdict is Verdict.WORSE


def test_quantile_rollback_test_uses_the_pooled_exceedance_variance():
    policy = make_policy(P95, ERRORS)
    kpi = policy.kpi("latency_p95")
    data = samples(policy, {}, {"n": 2000, "latency_scale": 1.2})
    meas = measure(kpi, Strata(data), 1.0, 1.0)
    hb, hc = data[0].baseline.latency, data[0].candidate.latency
    t = hb.quantile(0.95)
    adjusted = adjust_toward_pooled(hc.count_above(t * 1.1, "up")[0], hc.n,
                                    hb.count_above(t, "down")[0], hb.n)
    assert meas.rollback_tests[0].variance == pytest.approx(pooled_variance(*adjusted))
    # A slower candidate exceeds more often: the unpooled (promotion) variance is larger.
    assert meas.promote_tests[0].variance > meas.rollback_tests[0].variance


def test_means_keep_welch_for_the_rollback_test():
    mean = {"name": "latency_mean", "kind": "mean", "source": "latency", "margin": "10%"}
    policy = make_policy(mean, ERRORS)
    data = samples(policy, {}, {"n": 3000, "latency_scale": 1.1})
    meas = measure(policy.kpi("latency_mean"), Strata(data), 1.0, 1.0)
    hb, hc = data[0].baseline.latency, data[0].candidate.latency
    welch = hb.var_log() / hb.n + hc.var_log() / hc.n
    assert meas.rollback_tests[0].variance == pytest.approx(welch)


# --- detect: where the rollback boundary is tuned -----------------------------------------


@pytest.mark.parametrize(("role_name", "detect", "distance"), [
    ("critical", None, 1.75 * 0.05),      # default: 1.75 × margin
    ("guardrail", None, 0.75 * 0.05),     # detect − margin
    ("critical", 0.12, 0.12),
    ("guardrail", 0.12, 0.07),
    ("guardrail", 0.06, 0.25 * 0.05),     # floored at a quarter of the margin
])
def test_detect_tunes_the_rollback_boundary_and_not_the_promotion_one(role_name, detect,
                                                                         distance):
    spec = {**RECALL, "role": role_name, **({"detect": detect} if detect else {})}
    policy = make_policy(spec, ERRORS)
    data = samples(policy, {}, {"recall": 0.85})
    d = evaluate(policy, 1, 2 * HOUR, data)
    ev = d.evidence_for("recall")
    meas = measure(policy.kpi("recall"), Strata(data), 0.0 if role_name == "critical" else 1.0,
                   1.0)
    assert meas.rollback_tau_scale == pytest.approx(distance)
    assert meas.scale == pytest.approx(0.05)
    roll, prom = meas.rollback_tests[0], meas.promote_tests[0]
    a_r, a_p = ev.alpha_rollback, ev.alpha_promote
    upper = roll.delta + one_sided_radius(roll.variance, tau2_for_radius(distance, a_r), a_r)
    lower = prom.delta - one_sided_radius(prom.variance, tau2_for_radius(0.05, a_p), a_p)
    assert ev.upper == pytest.approx(upper, rel=1e-12)
    assert ev.lower == pytest.approx(lower, rel=1e-12)
    # Tuned at the margin instead, the rollback bound would be another one.
    at_margin = roll.delta + one_sided_radius(roll.variance, tau2_for_radius(0.05, a_r), a_r)
    assert ev.upper != pytest.approx(at_margin, rel=1e-6)


def test_detect_in_other_units_converts_like_the_margin():
    fair = {**FAIRNESS, "role": "critical", "detect": "40%"}
    mean = {"name": "latency_mean", "kind": "mean", "source": "latency", "margin": "10%",
            "detect": "30%"}
    policy = make_policy(fair, mean, ERRORS)
    data = samples(policy, {"prevalence": 0.1}, {"prevalence": 0.1})
    strata = Strata(data)
    assert measure(policy.kpi("fpr_fairness"), strata, 0.0, 1.0).rollback_tau_scale == \
        pytest.approx(-math.log(0.6))
    assert measure(policy.kpi("latency_mean"), strata, 1.0, 1.0).rollback_tau_scale == \
        pytest.approx(math.log(1.3) - math.log(1.1))


# --- alpha_weight: weighted Bonferroni ----------------------------------------------------


def test_alpha_weight_splits_alpha_rollback_in_proportion():
    registry = RegistryBaseline(kpis={"recall": BaselineKpi(0.876, 0.01),
                                      "precision": BaselineKpi(0.9, 0.01)})
    policy = make_policy({**RECALL, "limit": 0.8, "alpha_weight": 3}, PRECISION,
                         {**ERRORS, "alpha_weight": 0.5},
                         {"name": "auc", "kind": "auc", "role": "success", "limit": 0.6,
                          "alpha_weight": 2},
                         control_limits={"k": 3}, evaluation={"alpha_rollback": 0.05})
    d = evaluate(policy, 1, 2 * HOUR, samples(policy), registry)
    # Checks: recall ×3 (comparison, limit, control limit: weight 3 each), precision ×2
    # (comparison, control limit), error_rate (0.5), auc's limit (2).
    total = 3 * 3 + 2 * 1 + 0.5 + 2
    assert d.rollback_tests == 7
    assert d.alpha_rollback_per_test == pytest.approx(0.05 / total)
    expected = {"recall": 3, "precision": 1, "error_rate": 0.5, "auc": 2}
    for name, weight in expected.items():
        assert d.evidence_for(name).alpha_rollback == pytest.approx(0.05 * weight / total)
    # The shares of all checks add up to alpha_rollback exactly.
    assert 3 * d.evidence_for("recall").alpha_rollback \
        + 2 * d.evidence_for("precision").alpha_rollback \
        + d.evidence_for("error_rate").alpha_rollback \
        + d.evidence_for("auc").alpha_rollback == pytest.approx(0.05)
    # A bigger weight means a narrower rollback bound for the same data.
    light = make_policy({**RECALL, "limit": 0.8}, PRECISION, {**ERRORS, "alpha_weight": 0.5},
                        {"name": "auc", "kind": "auc", "role": "success", "limit": 0.6,
                         "alpha_weight": 2},
                        control_limits={"k": 3}, evaluation={"alpha_rollback": 0.05})
    e = evaluate(light, 1, 2 * HOUR, samples(light), registry).evidence_for("recall")
    assert d.evidence_for("recall").upper < e.upper


# --- the promotion guard ------------------------------------------------------------------


def test_promotion_needs_the_point_estimate_within_the_margin():
    """Lower bound above −3·margin (the stage's widened margin), but δ̂ below −margin: the
    candidate is probably worse than allowed, so the stage holds and says why."""
    policy = make_policy(RECALL, ERRORS, stage={"promote_margin_scale": 3,
                                                "min_samples": {"requests": 100,
                                                                "labelled": 100}})
    data = samples(policy, {"n": 1200}, {"n": 1200, "recall": 0.80})
    d = evaluate(policy, 1, 2 * HOUR, data)
    ev = d.evidence_for("recall")
    meas = measure(policy.kpi("recall"), Strata(data), 1.0, 3.0)
    assert ev.lower > ev.promote_threshold == pytest.approx(-0.15)
    assert meas.guard_estimate < -0.05
    assert ev.upper > ev.rollback_threshold  # not confidently worse than the margin either
    assert d.action is Action.HOLD
    assert ev.verdict is Verdict.INCONCLUSIVE
    assert ev.reason.startswith(f"recall is estimated worse than its margin: Δ̂ "
                                f"{meas.guard_estimate:+.4g} < -0.05 (promotion needs the "
                                f"estimate within the margin")
    assert ev.reason in d.reason
    check_evidence(d)
    # The same candidate estimated within the margin promotes on the widened interval.
    better = samples(policy, {"n": 1600}, {"n": 1600, "recall": 0.82})
    d = evaluate(policy, 1, 2 * HOUR, better)
    assert measure(policy.kpi("recall"), Strata(better), 1.0, 3.0).guard_estimate > -0.05
    assert d.action is Action.PROMOTE, d.reason


def test_promotion_guard_of_a_quantile_is_at_the_unscaled_margin():
    # p95 +14% against a 10% margin, promote_margin_scale 3: the interval condition at
    # t·1.3 holds, but the exceedance at t·1.1 is estimated worse (δ̂ < 0).
    policy = make_policy(P95, ERRORS, stage={"promote_margin_scale": 3})
    data = samples(policy, {}, {"n": 1000, "latency_scale": 1.14})
    d = evaluate(policy, 1, 2 * HOUR, data)
    ev = d.evidence_for("latency_p95")
    assert ev.lower > 0
    assert ev.verdict is Verdict.INCONCLUSIVE
    assert "estimated worse than its margin" in ev.reason
    assert "< +0 " in ev.reason
    assert d.action is Action.HOLD


# --- the Decision record ------------------------------------------------------------------


def _various_decisions() -> list[Decision]:
    policy = make_policy({**RECALL, "limit": 0.8}, PRECISION, ERRORS, P95, FAIRNESS,
                         {"name": "auc", "kind": "auc", "role": "info"},
                         control_limits={"k": 2})
    promoting = make_policy({**RECALL, "limit": 0.8}, PRECISION, ERRORS, P95,
                            {"name": "auc", "kind": "auc", "role": "success"},
                            control_limits={"k": 2})
    return [
        evaluate(promoting, 1, 2 * HOUR, samples(promoting), REGISTRY),
        evaluate(policy, 1, 2 * HOUR, samples(policy), REGISTRY),
        evaluate(policy, 1, 2 * HOUR, samples(policy, {}, {"recall": 0.676}), REGISTRY),
        evaluate(policy, 0, 30.0, samples(policy, {"n": 50}, {"n": 50}, stage_index=0)),
        evaluate(policy, 1, 25 * HOUR, samples(policy, {"labelled": 0}, {"labelled": 0})),
        evaluate(policy, 1, 0.0, []),
    ]


def test_decision_json_round_trip_is_strict():
    decisions = _various_decisions()
    assert {d.action for d in decisions} == {Action.PROMOTE, Action.ROLLBACK, Action.HOLD}
    for d in decisions:
        text = d.to_json()
        data = strict_json(text)
        assert data == d.to_dict()
        back = Decision.from_json(text)
        assert back.to_dict() == d.to_dict()
        assert back.action is d.action
        assert [e.verdict for e in back.evidence] == [e.verdict for e in d.evidence]
        check_evidence(d)


def test_evaluate_is_pure():
    policy = make_policy({**RECALL, "limit": 0.8}, PRECISION, ERRORS, P95, FAIRNESS,
                         control_limits={"k": 2})
    data = samples(policy, {}, {"recall": 0.85}, stage_index=0) + samples(policy, seed=5)
    before = [(s.baseline.to_dict(), s.candidate.to_dict()) for s in data]
    first = evaluate(policy, 1, 2 * HOUR, data, REGISTRY)
    second = evaluate(policy, 1, 2 * HOUR, data, REGISTRY)
    assert first == second
    assert first.to_json() == second.to_json()
    after = [(s.baseline.to_dict(), s.candidate.to_dict()) for s in data]
    assert after == before


# --- planning -----------------------------------------------------------------------------


FRAUD_BASELINE = {
    "prevalence": 0.015,
    "kpis": {
        "recall": {"mean": 0.876, "std": 0.01},
        "precision": {"mean": 0.918, "std": 0.012},
        "latency_p95": {"mean": 0.120, "std": 0.008, "unit_sd": 0.22},
        "fpr_fairness": {"mean": 0.91, "rate": 0.0012, "segments": 3},
        "error_rate": {"mean": 0.002},
    },
}


def test_wald_asn_matches_the_worked_example():
    assert wald_asn(0.876, 0.826, 0.05, 0.2) == pytest.approx(183, abs=2)


def test_plan_covers_every_gated_stage_and_decisive_kpi():
    policy = load_policy(EXAMPLES / "fraud.yaml")
    registry = RegistryBaseline.from_dict(FRAUD_BASELINE)
    rows = plan(policy, registry)
    decisive = [k.name for k in policy.kpis if k.decides]
    stages = [s.name for s in policy.gated_stages]
    assert [(r.stage, r.kpi) for r in rows] == [(s, k) for s in stages for k in decisive]
    for row in rows:
        assert row.note == "", row
        assert row.promote_requests
        assert row.promote_requests > 0
        assert row.detect_requests
        assert row.detect_requests > 0
    by = {(r.stage, r.kpi): r for r in rows}
    canaries = [s.name for s in policy.gated_stages if not s.shadow]
    for kpi in decisive:
        detect = [by[(s, kpi)].detect_requests for s in canaries]
        assert detect == sorted(detect, reverse=True), (kpi, detect)
        assert detect[0] > detect[-1]
    # Recall: labelled positives are 1.5% of requests, so Wald's bound in requests is the
    # ASN over the prevalence and the candidate's share, and no test beats it.
    for s in canaries:
        row = by[(s, "recall")]
        assert row.unit == "labelled positive"
        assert row.wald_requests < row.detect_requests


def test_plan_splits_alpha_like_the_gate():
    """Registry σ adds control-limit guards to the gate's α split, and so to the plan's."""
    policy = load_policy(EXAMPLES / "fraud.yaml")
    with_sigma = RegistryBaseline.from_dict(FRAUD_BASELINE)
    no_sigma = RegistryBaseline.from_dict({
        **FRAUD_BASELINE,
        "kpis": {name: {k: v for k, v in kpi.items() if k != "std"}
                 for name, kpi in FRAUD_BASELINE["kpis"].items()},
    })
    strict = {(r.stage, r.kpi): r.detect_requests for r in plan(policy, with_sigma)}
    loose = {(r.stage, r.kpi): r.detect_requests for r in plan(policy, no_sigma)}
    assert all(strict[key] >= loose[key] for key in strict)
    assert sum(strict.values()) > sum(loose.values())


def test_plan_fairness_margin_matches_the_gate():
    policy = load_policy(EXAMPLES / "fraud.yaml")
    registry = RegistryBaseline.from_dict(FRAUD_BASELINE)
    kpi = policy.kpi("fpr_fairness")
    unit = planning._unit(kpi, registry.get(kpi.name), registry)
    assert unit.margin == pytest.approx(-math.log1p(-kpi.margin.value))


def test_plan_reports_missing_baseline_figures():
    policy = load_policy(EXAMPLES / "fraud.yaml")
    rows = plan(policy, RegistryBaseline.from_dict({"kpis": {"recall": 0.876}}))
    recall = next(r for r in rows if r.kpi == "recall")
    assert recall.promote_requests is None
    assert "prevalence" in recall.note
    latency = next(r for r in rows if r.kpi == "latency_p95")
    assert "baseline" in latency.note


def test_a_role_that_returns_labels_gets_that_reason_for_auc_not_insufficient_data():
    from mlflow_kpigate.gate.estimate_auc import measure_auc
    from mlflow_kpigate.gate.strata import Strata

    policy = policy_from_dict({"stages": "5,100", "kpis": [
        {"name": "errors", "kind": "proportion", "metric": "error_rate", "role": "critical",
         "margin": 0.01},
        {"name": "auc", "kind": "auc", "role": "success"}]})
    spec = AggregateSpec.from_policy(policy)
    base, cand = RoleAggregate(spec), RoleAggregate(spec)
    base.add_labelled(y_true=[1, 0, 1, 0], y_pred=[1, 0, 0, 0], score=[0.9, 0.2, 0.4, 0.1])
    cand.add_labelled(y_true=[1, 0, 1, 0], y_pred=[1, 0, 0, 0])  # labels only
    meas = measure_auc(policy.kpis[1], Strata([StageSample(0, base, cand)]), 0.0, 1.0)
    assert meas.missing == ("the candidate returns labels, not scores: AUC needs scores (log "
                            "the model with pyfunc_predict_fn='predict_proba')")


@pytest.mark.parametrize(("outputs", "predict_fn", "kind"), [
    (None, None, "unknown"),
    ("tensor-int64", None, "labels"),
    ("col-long", "predict", "labels"),
    ("col-long", "predict_proba", "scores"),  # MLflow infers the signature from predict
    ("col-double", None, "scores"),
    ("tensor-float-2", None, "scores"),
])
def test_the_output_kind_is_read_from_the_signature(outputs, predict_fn, kind):
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    from mlflow_kpigate.registry.outputs import output_kind_of

    schemas = {
        "tensor-int64": Schema([TensorSpec(np.dtype("int64"), (-1,))]),
        "col-long": Schema([ColSpec("long")]),
        "col-double": Schema([ColSpec("double")]),
        "tensor-float-2": Schema([TensorSpec(np.dtype("float64"), (-1, 2))]),
    }
    inputs = Schema([ColSpec("double", "a")])
    signature = None if outputs is None else ModelSignature(inputs, schemas[outputs])
    assert output_kind_of(signature, predict_fn) == kind
