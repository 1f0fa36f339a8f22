"""The time-to-decision forecast (gate/forecast*.py), on inputs small enough to check by hand.

One KPI, an error rate of 10% in the registry: its information per effective unit is
κ = 1/(p(1 − p)), and a stage at candidate share s brings R·s·(1 − s) effective units per
second (R·½ in shadow, where both models score every request). The thresholds are solved
here from the gate's boundary (:mod:`mlflow_kpigate.gate.boundaries`) independently of the
forecaster's own tables, so every expected time below is a line of arithmetic.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from scipy.optimize import brentq

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.forecast import MIN_DWELL, MIN_SAMPLES, Forecast, fmt_eta
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius
from mlflow_kpigate.gate.forecast import forecast, plan_forecast, project
from mlflow_kpigate.gate.forecast_bounds import equal_clears, info_to_promote
from mlflow_kpigate.gate.forecast_models import fairness_spread, kpi_models, total_effective
from mlflow_kpigate.gate.forecast_traffic import Observation, Traffic, measure_traffic
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.policy import Policy, policy_from_dict

MARGIN, P, RATE, MINUTE = 0.01, 0.1, 10.0, 60.0
KAPPA = 1.0 / (P * (1 - P))
ERRORS = {"name": "errors", "kind": "proportion", "metric": "error_rate", "role": "critical",
          "margin": MARGIN}
ACCURACY = {"name": "accuracy", "kind": "proportion", "metric": "accuracy",
            "role": "guardrail", "margin": MARGIN}
REGISTRY = RegistryBaseline.from_dict({"kpis": {"errors": {"mean": P},
                                                "accuracy": {"mean": 1 - P}}})
NOW = Traffic(RATE, 1.0, 0.0, "test")


def make_policy(*stages: Any, kpis: tuple[dict[str, Any], ...] = (ERRORS,)) -> Policy:
    """Minute looks, no maturity, no dwell or sample minimums unless a stage sets them."""
    defaults = {"min_dwell": "0s", "min_samples": {"requests": 0, "labelled": 0}}
    return policy_from_dict({
        "evaluation": {"interval": "1m", "maturity": "0s", "alpha_rollback": 0.05,
                       "alpha_promote": 0.05},
        "stage_defaults": defaults, "stages": [*stages, 100],
        "kpis": [copy.deepcopy(k) for k in kpis]})


def info_needed(distance: float, tau_scale: float, alpha: float) -> float:
    """1/v at which the gate's one-sided radius (τ² tuned to ``tau_scale``) is ``distance``."""
    tau2 = tau2_for_radius(tau_scale, alpha)
    log_v = brentq(lambda x: one_sided_radius(math.exp(x), tau2, alpha) - distance, -40, 5)
    return math.exp(-log_v)


def on_grid(seconds: float) -> float:
    """The first minute look at or after ``seconds``."""
    return MINUTE * math.ceil(seconds / MINUTE - 1e-9)


def run(policy: Policy, traffic: Traffic = NOW, registry: RegistryBaseline = REGISTRY
        ) -> Forecast:
    fc = plan_forecast(policy, registry, traffic.request_rate, traffic.label_lag_s, "test")
    return fc if traffic.labels_per_request == 1.0 else project(
        policy, 0, 0.0, kpi_models(policy, 0, [], registry, traffic)[0], traffic)


# -- one stage -------------------------------------------------------------------------------
def test_an_equal_candidate_and_one_at_minus_detect_in_a_canary_stage():
    fc = run(make_policy(50))
    assert fc.notes == ()
    (stage,) = fc.stages
    per_second = KAPPA * RATE * 0.5 * 0.5  # information per second at 50%
    equal = info_needed(MARGIN, MARGIN, 0.05) / per_second
    # Critical KPI: rolled back once the upper bound is below 0; detect = 1.75 × margin,
    # the mixture tuned to it, the whole α_rollback (one KPI, no other checks).
    detect = 1.75 * MARGIN
    caught = info_needed(detect, detect, 0.05) / per_second
    assert stage.equal_s == on_grid(equal)
    assert stage.at_margin_s == on_grid(caught)
    assert (stage.binds, stage.margin_binds) == ("errors", "errors")
    assert stage.duration_s == stage.equal_s  # the stage starts now
    eta = stage.kpi("errors")
    assert eta is not None
    assert eta.unit == "request"
    assert eta.unit_rate == pytest.approx(RATE * 0.5)  # candidate requests per second
    assert eta.more_units == pytest.approx(RATE * 0.5 * equal, rel=1e-3)
    assert fc.full_rollout_s == stage.equal_s
    assert fc.warnings() == []


def test_a_wider_promotion_threshold_and_more_traffic_shorten_the_stage():
    base = run(make_policy(50)).stages[0].equal_s
    scaled = run(make_policy({"traffic": 50, "promote_margin_scale": 2})).stages[0].equal_s
    per_second = KAPPA * RATE * 0.25
    assert scaled == on_grid(info_needed(2 * MARGIN, MARGIN, 0.05) / per_second)
    assert scaled < base / 3  # the radius shrinks like 1/√I, roughly: 2× wider, > 4× sooner
    faster = run(make_policy(50), Traffic(4 * RATE, 1.0, 0.0, "test")).stages[0].equal_s
    assert faster == on_grid(info_needed(MARGIN, MARGIN, 0.05) / (4 * per_second))


def test_shadow_brings_twice_the_information_of_a_half_split():
    """Both models score every request: n/2 effective units, against n/4 at 50%."""
    shadow = run(make_policy({"shadow": True})).stages[0]
    half = run(make_policy(50)).stages[0]
    assert shadow.equal_s == on_grid(info_needed(MARGIN, MARGIN, 0.05) / (KAPPA * RATE / 2))
    assert shadow.equal_s == pytest.approx(half.equal_s / 2, abs=MINUTE)
    assert shadow.stage == "shadow"


def test_min_dwell_and_min_samples_bind_when_they_come_last():
    dwell = run(make_policy({"traffic": 50, "min_dwell": "10h"})).stages[0]
    assert (dwell.equal_s, dwell.binds) == (36_000.0, MIN_DWELL)
    # 100,000 candidate requests at 5 per second: 20,000 s (the look after), later than
    # the KPI.
    samples = run(make_policy({"traffic": 50, "min_samples": {"requests": 100_000}})).stages[0]
    assert (samples.equal_s, samples.binds) == (on_grid(20_000.0 + 1), MIN_SAMPLES)
    kpi = samples.kpi("errors")
    assert kpi is not None
    assert kpi.equal_s < samples.equal_s  # the KPI itself would have been ready sooner
    assert "min samples bind" in Forecast(0, 0, RATE, 1, 0, "t", (samples,)).line()


def test_labelled_kpis_wait_for_the_label_lag_and_the_label_share():
    policy = make_policy({"traffic": 50, "min_samples": {"labelled": 50_000}},
                         kpis=(ACCURACY,))
    lag = 1800.0
    stage = run(policy, Traffic(RATE, 0.5, lag, "test")).stages[0]
    # Half the requests get a label, each 30 minutes after the request.
    kpi = stage.kpi("accuracy")
    assert kpi is not None
    assert kpi.unit == "labelled request"
    assert kpi.equal_s == on_grid(lag + info_needed(MARGIN, MARGIN, 0.05)
                                  / (KAPPA * RATE * 0.5 * 0.25))
    # min_samples.labelled: 50,000 labelled candidate predictions at 5 × 0.5 per second.
    assert (stage.equal_s, stage.binds) == (on_grid(lag + 50_000 / 2.5), MIN_SAMPLES)


def test_a_kpi_without_labels_never_decides_and_later_stages_are_not_forecast():
    policy = make_policy(10, 50, kpis=(ACCURACY,))
    fc = run(policy, Traffic(RATE, 0.0, 0.0, "test"))
    assert len(fc.stages) == 1
    assert math.isinf(fc.stages[0].equal_s)
    assert fc.notes == ("10% does not decide at this traffic; later stages are not forecast",)
    assert fmt_eta(fc.full_rollout_s) == "never at this traffic"
    # JSON has no infinity: null there, infinity again when read back.
    data = fc.to_dict()
    assert data["stages"][0]["equal_s"] is None
    assert Forecast.from_dict(data) == fc


# -- several stages ----------------------------------------------------------------------------
def test_evidence_pools_across_stages():
    policy = make_policy({"traffic": 10, "promote_margin_scale": 3}, 50)
    fc = run(policy)
    first, second = fc.stages
    i3 = info_needed(3 * MARGIN, MARGIN, 0.05)
    assert first.equal_s == on_grid(i3 / (KAPPA * RATE * 0.1 * 0.9))
    # The 50% stage starts with the first stage's stratum and adds R/4 per second.
    t1 = first.equal_s
    have = KAPPA * RATE * 0.1 * 0.9 * t1
    assert second.start_s == t1
    assert second.equal_s == on_grid(
        t1 + (info_needed(MARGIN, MARGIN, 0.05) - have) / (KAPPA * RATE * 0.25))
    assert fc.full_rollout_s == second.equal_s
    assert fc.path() == f"10% {fmt_eta(first.duration_s)} → 50% {fmt_eta(second.duration_s)}"
    # A candidate at −detect is not caught within the first stage; the second starts with
    # the first's information and catches it once the total reaches I*_r.
    detect = 1.75 * MARGIN
    need_r = info_needed(detect, detect, 0.05)
    assert first.at_margin_s == on_grid(need_r / (KAPPA * RATE * 0.1 * 0.9)) > t1
    assert second.at_margin_s == on_grid(t1 + (need_r - have) / (KAPPA * RATE * 0.25))


@pytest.mark.parametrize("on_timeout", ["hold_and_alert", "promote_if_no_guardrail_fails",
                                        "rollback"])
def test_a_stage_that_cannot_decide_within_max_duration_warns(on_timeout):
    policy = make_policy({"traffic": 50, "max_duration": "30m", "on_timeout": on_timeout}, 75)
    fc = run(policy)
    first = fc.stages[0]
    assert first.duration_s > 1800
    assert first.exceeds_max_duration
    (warning,) = fc.warnings()
    assert warning.startswith("50% cannot decide within its max_duration 30m at 10 "
                              "requests/s: an equal candidate needs")
    if on_timeout == "hold_and_alert":
        assert "it will hold and alert then" in warning
        assert fc.stages[1].start_s == first.equal_s  # it holds until the evidence is there
    elif on_timeout == "promote_if_no_guardrail_fails":
        assert "without having shown non-inferiority" in warning
        assert fc.stages[1].start_s == 1800.0  # promoted at its max_duration
    else:
        assert "it will be rolled back then" in warning
        assert len(fc.stages) == 1
        assert fc.notes == ("50% reaches its max_duration first and rolls back; later "
                            "stages are not reached",)
        assert first.at_margin_s <= 1800.0  # on_timeout rollback caps the −detect case
    assert "(exceeded)" in fc.rows()[0][-1]


def test_the_current_stage_counts_what_it_has_and_how_long_it_ran():
    policy = make_policy({"traffic": 50, "min_dwell": "2h"})
    fresh = run(policy).stages[0]
    models, _ = kpi_models(policy, 0, [], REGISTRY, NOW)
    later = project(policy, 0, 3600.0, models, NOW).stages[0]
    # An hour in: the dwell ends in an hour, the start lies an hour back.
    assert later.start_s == -3600.0
    assert later.equal_s == fresh.equal_s - 3600.0
    assert later.duration_s == fresh.duration_s


# -- the models ----------------------------------------------------------------------------------
def test_effective_units_and_the_fairness_spread():
    assert total_effective([(10.0, 90.0), (50.0, 50.0)], merged=False) == pytest.approx(
        9.0 + 25.0)
    assert total_effective([(10.0, 90.0), (50.0, 50.0)], merged=True) == pytest.approx(
        60 * 140 / 200)
    assert total_effective([(0.0, 90.0)], merged=False) == 0.0
    assert fairness_spread(1) == 0.0
    assert fairness_spread(3) == pytest.approx(1.693 / math.sqrt(2))


def _errors_sample(policy: Policy, stage: int, n_c: int, n_b: int, p_c: float, p_b: float,
                   seed: int) -> StageSample:
    rng = np.random.default_rng(seed)
    spec = AggregateSpec.from_policy(policy)
    roles = []
    for n, p in ((n_b, p_b), (n_c, p_c)):
        agg = RoleAggregate(spec)
        agg.add_requests(np.full(n, 0.05), rng.random(n) < p)
        roles.append(agg)
    return StageSample(stage, roles[0], roles[1])


def test_the_measured_model_takes_the_baselines_variance_per_unit():
    """An equal candidate's information per unit is the baseline's, measured: at 5% the
    baseline has 19 times the candidate's units, so a few candidate errors do not swing it."""
    policy = make_policy(5, 50)
    sample = _errors_sample(policy, 0, 2_000, 38_000, 0.0, P, seed=1)
    (model,), notes = kpi_models(policy, 0, [sample], REGISTRY, NOW)
    assert notes == []
    assert model.source == "measured"
    p_hat = sample.baseline.errors / sample.baseline.requests
    assert model.info_promote == pytest.approx(1 / (p_hat * (1 - p_hat)), rel=0.05)
    assert model.units == ((0, 2_000.0, 38_000.0),)
    assert model.per_request == (1.0, 1.0)


def test_a_candidate_estimated_worse_now_is_forecast_to_take_longer():
    """The current estimate is carried with the weight of the evidence it rests on."""
    policy = make_policy(50)
    equal = _errors_sample(policy, 0, 5_000, 5_000, P, P, seed=2)
    worse = _errors_sample(policy, 0, 5_000, 5_000, P + 0.6 * MARGIN, P, seed=2)
    t_equal = forecast(policy, 0, 600.0, [equal], REGISTRY, NOW).stages[0].equal_s
    t_worse = forecast(policy, 0, 600.0, [worse], REGISTRY, NOW).stages[0].equal_s
    assert t_worse > t_equal
    # With no estimate carried (and one test) the condition is the closed form r(v) ≤ s·m.
    (model,), _ = kpi_models(policy, 0, [], REGISTRY, NOW)
    stage = policy.stages[0]
    need = info_to_promote(model, stage)
    units = need / model.info_promote  # effective units that give exactly I*
    assert equal_clears(model, stage, [(2 * units * 1.001, 2 * units * 1.001)], need)
    assert not equal_clears(model, stage, [(2 * units * 0.999, 2 * units * 0.999)], need)


# -- the traffic ---------------------------------------------------------------------------------
def _observations(rate: float, share: float, coverage: float, lag: float, stage: int = 0,
                  every: float = 600.0, looks: int = 12) -> list[Observation]:
    out = []
    for k in range(1, looks + 1):
        t = k * every
        n = rate * t
        labelled = coverage * rate * max(t - lag, 0.0)
        out.append(Observation(t, stage, t, round(n * share), round(n * (1 - share)),
                               round(labelled * share), round(labelled * (1 - share))))
    return out


def test_request_rate_label_share_and_lag_are_measured():
    policy = make_policy(5, 50)
    fallback = Traffic(0.0, 1.0, 0.0, "none")
    got = measure_traffic(policy, _observations(2.0, 0.05, 0.5, 3600.0), 0, fallback)
    assert got.request_rate == pytest.approx(2.0, rel=1e-3)
    assert got.labels_per_request == pytest.approx(0.5, rel=1e-2)
    assert got.label_lag_s == pytest.approx(3600.0, abs=30)
    assert got.basis == "measured over 2.0 h of 5%"


def test_before_any_label_the_lag_is_at_least_the_time_served():
    policy = make_policy(5, 50)
    fallback = Traffic(0.0, 0.8, 0.0, "none")
    got = measure_traffic(policy, _observations(2.0, 0.05, 0.5, 9000.0, looks=6), 0, fallback)
    assert got.request_rate == pytest.approx(2.0, rel=1e-3)
    assert (got.labels_per_request, got.label_lag_s) == (0.8, 3600.0)
    assert got.basis.endswith("no label yet, label delay at least 1.0 h")
    # One labelled count: the lag it implies at the fallback's label share (0.5 here).
    one = _observations(2.0, 0.05, 0.5, 1800.0, looks=4)
    got = measure_traffic(policy, one, 0, replace(fallback, labels_per_request=0.5))
    assert got.label_lag_s == pytest.approx(1800.0, abs=30)
    # A later stage borrows the label share and lag of the last stage that measured them.
    history = _observations(2.0, 0.05, 0.5, 1800.0) + _observations(2.0, 0.5, 0.5, 1800.0,
                                                                    stage=1, looks=2)
    got = measure_traffic(policy, history, 1, fallback)
    assert got.labels_per_request == pytest.approx(0.5, rel=1e-2)
    assert got.label_lag_s == pytest.approx(1800.0, abs=30)
    assert got.basis.endswith("labels as in 5%")
