"""A fairness KPI during the bake: confidence sequences on the cumulative estimate.

The fairness test's baseline index is the min/max of estimated segment rates, re-chosen
at every evaluation, so its score is not a sum of independent increments; the change
detector on it raised false alarms for most equal candidates in a day-long bake (the
benchmark's simulation). These runs go through ``judge_bake`` on growing stage samples,
the arithmetic the controller runs.
"""

from __future__ import annotations

import math

import numpy as np

from mlflow_kpigate.core.decision import Action, Verdict
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate import bake_streams, judge_bake
from mlflow_kpigate.gate import change_detector as cd
from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.policy import Policy, policy_from_dict

REGIONS = np.array(["eu", "us", "apac"])
SHARES = [0.5, 0.3, 0.2]
LOOKS = 240  # a bake of 8 h at 2-minute looks


def policy() -> Policy:
    return policy_from_dict({
        "version": 1, "name": "fair-bake",
        "evaluation": {"interval": "2m", "alpha_rollback": 0.05, "alpha_promote": 0.05},
        "stages": [{"traffic": 50}, {"traffic": 100}],
        "kpis": [{"name": "fpr_fairness", "kind": "fairness",
                  "metric": "false_positive_rate", "segment_by": "region",
                  "role": "critical", "margin": "25%"}],
        "bake": {"duration": "8h", "arl": "30d"}})


def add(agg: RoleAggregate, rng: np.random.Generator, n: int, fpr: dict[str, float]) -> None:
    region = rng.choice(REGIONS, n, p=SHARES)
    rate = np.array([fpr.get(r, 0.02) for r in region])
    y = np.zeros(n, dtype=bool)
    pred = rng.random(n) < rate
    agg.add_labelled(y, pred, np.where(pred, 0.9, 0.1), segments={"region": region})


def bake(seed: int, candidate_fpr: dict[str, float], looks: int = LOOKS,
         per_look: int = 1_500) -> tuple[int | None, str]:
    """Look at which the bake rolled back (None: promoted), and its reason."""
    pol = policy()
    rng = np.random.default_rng(seed)
    spec = AggregateSpec.from_policy(pol)
    base, cand = RoleAggregate(spec), RoleAggregate(spec)
    previous = None
    for look in range(1, looks + 1):
        add(base, rng, per_look, {})
        add(cand, rng, per_look, candidate_fpr)
        d = judge_bake(pol, 1, look * 120.0, [StageSample(1, base, cand)],
                       bake_streams(previous, 1))
        if d.action is Action.ROLLBACK:
            return look, d.reason
        if d.action is Action.PROMOTE:
            return None, d.reason
        previous = d
    return None, "holding"


def test_equal_candidates_are_not_rolled_back_during_the_bake():
    """The bake's false-alarm bound for this KPI is N/A = 240 / 21,600 ≈ 1.1% per bake: 8
    equal candidates (fixed seeds) are all promoted."""
    outcomes = [bake(seed, {}) for seed in range(8)]
    assert [o for o in outcomes if o[0] is not None] == []
    assert all("no regression" in reason for _, reason in outcomes)


def test_a_segment_whose_rate_rises_is_caught_and_named():
    look, reason = bake(99, {"eu": 0.04})
    assert look is not None
    assert look < LOOKS
    assert "fpr_fairness regressed during the bake" in reason
    assert "eu" in reason
    assert "confidence sequence" in reason


def test_the_sequence_alarms_exactly_where_the_gate_bound_crosses():
    """log M ≥ log(1/α) ⇔ δ̂ + r(v) < θ₀ (the gate's one-sided bound at the same α, τ²)."""
    for alpha, scale, v in ((0.01, 0.3, 0.004), (1e-5, 0.29, 0.0007), (0.2, 0.05, 1e-4)):
        tau2 = tau2_for_radius(scale, alpha)
        r = one_sided_radius(v, tau2, alpha)
        for delta, alarm in ((-r * 1.001, True), (-r * 0.999, False)):
            s = cd.sequence_stream(None, "x", delta, v, 0.0, scale, alpha)
            assert s is not None
            assert (s.log_statistic >= math.log(1 / alpha)) is alarm


def test_the_first_look_only_starts_the_sequences():
    pol = policy()
    rng = np.random.default_rng(3)
    spec = AggregateSpec.from_policy(pol)
    base, cand = RoleAggregate(spec), RoleAggregate(spec)
    add(base, rng, 3000, {})
    add(cand, rng, 3000, {"eu": 0.2})
    d = judge_bake(pol, 1, 120.0, [StageSample(1, base, cand)], {})
    assert d.action is Action.HOLD
    assert d.evidence_for("fpr_fairness").verdict is Verdict.INSUFFICIENT_DATA
    streams = bake_streams(d, 1)
    assert streams
    assert all(s.steps == 0 for s in streams.values())


def test_the_benchmark_streams_equal_candidates_bake_without_false_rollbacks():
    """The case that found it: the benchmark's fraud stream (3 regions, FPR 0.12%, 200k
    requests per 2-minute look) and policy with an 8-hour bake. With a change detector on
    the fairness increments 4 of these 6 equal candidates were rolled back after
    promotion (their baseline index's variance shrank and grew as its segments switched,
    and the increment after a skipped span carried the whole span's score change)."""
    from pathlib import Path

    import yaml

    from mlflow_kpigate.simulate.rules import KpigateRule
    from mlflow_kpigate.simulate.runner import run_rollout
    from mlflow_kpigate.simulate.scenarios import builtin

    doc = yaml.safe_load((Path(__file__).resolve().parent.parent / "benchmarks" / "policies"
                          / "fraud_benchmark.yaml").read_text())
    pol = policy_from_dict({**doc, "bake": {"duration": "8h", "arl": "30d"}})
    stream = builtin("equal", {"requests_per_interval": 200_000, "horizon": "10h"}
                     ).per_interval(pol.evaluation.interval)
    outcomes = [run_rollout(pol, stream, KpigateRule(), seed=1, rep=rep) for rep in range(6)]
    assert all(o.promoted_look is not None for o in outcomes)
    assert [o.looks[-1].reason for o in outcomes if o.rolled_back_in_bake] == []
    assert all(o.status == "promoted" for o in outcomes)
