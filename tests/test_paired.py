"""Paired comparison in shadow: the paired aggregate, its round trips, and the paired
variances against brute-force simulation of correlated models (docs/statistics.md,
"Paired comparison in shadow")."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from _paired_data import Model, shadow_sample
from scipy.optimize import minimize_scalar
from scipy.stats import norm
from test_paired_sequential import joint_hits

from mlflow_kpigate.core.decision import Action, Decision, Verdict
from mlflow_kpigate.core.evaluation import Evaluation, decode_samples, encode_samples
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate import evaluate
from mlflow_kpigate.gate.bake import bake_streams, judge_bake
from mlflow_kpigate.gate.estimators import Strata, measure
from mlflow_kpigate.kpis import AggregateSpec, PairedAggregate, RoleAggregate
from mlflow_kpigate.policy import policy_from_dict

RHO = 0.8
REPS = 2000
N = 3000
BASELINE = Model()
CANDIDATE = Model(recall=0.82, fpr=0.11, log_latency=math.log(0.09), error_rate=0.025)
KPIS = [
    {"name": "recall", "kind": "proportion", "metric": "recall", "margin": 0.05},
    {"name": "precision", "kind": "proportion", "metric": "precision", "margin": 0.05},
    {"name": "accuracy", "kind": "proportion", "metric": "accuracy", "margin": 0.02},
    {"name": "f1", "kind": "proportion", "metric": "f1", "margin": 0.05},
    {"name": "errors", "kind": "proportion", "metric": "error_rate", "margin": 0.01},
    {"name": "latency", "kind": "mean", "source": "latency", "log": True, "margin": "10%"},
    {"name": "auc", "kind": "auc", "margin": 0.02},
]
SHADOW_FIRST = {"stages": [{"shadow": True}, {"traffic": 50}, {"traffic": 100}]}


def _policy(*kpis, **top):
    return policy_from_dict({**SHADOW_FIRST, "kpis": [copy.deepcopy(k) for k in kpis], **top})


# --- the aggregate ----------------------------------------------------------------------


def _sample(seed: int = 0, n: int = 2000, **kw) -> StageSample:
    return shadow_sample(np.random.default_rng(seed), n, BASELINE, CANDIDATE, **kw)


def test_paired_aggregate_round_trips_and_merges():
    a, b = _sample(1).paired, _sample(2).paired
    assert a is not None
    assert b is not None
    text = json.dumps(a.to_dict())
    back = PairedAggregate.from_dict(json.loads(text))
    assert back.to_dict() == a.to_dict()
    merged = a.copy()
    merged.merge(b)
    assert merged.requests == a.requests + b.requests
    assert np.array_equal(merged.outcomes, a.outcomes + b.outcomes)
    assert np.array_equal(merged.joint_neg, a.joint_neg + b.joint_neg)
    assert merged.log_latency.n == a.log_latency.n + b.log_latency.n
    # The copy is independent of the original.
    assert a.requests == 2000


def test_paired_aggregate_rejects_malformed_records():
    good = _sample(3).paired.to_dict()
    for key in ("errors", "outcomes", "joint_pos", "baseline_scores"):
        bad = copy.deepcopy(good)
        del bad[key]
        with pytest.raises(ValueError, match=key):
            PairedAggregate.from_dict(bad)
    bad = copy.deepcopy(good)
    bad["joint_pos"]["count"][0] += 1  # no longer the roles' scores
    with pytest.raises(ValueError, match="joint_pos"):
        PairedAggregate.from_dict(bad)
    with pytest.raises(ValueError, match="version"):
        PairedAggregate.from_dict({**good, "version": 99})
    with pytest.raises(ValueError, match="joint_bins"):
        PairedAggregate(joint_bins=1)


def test_auc_covariance_matches_delong_on_the_raw_scores():
    """The coarse joint histogram's covariance against DeLong's on every score (the
    components of each pair computed from the raw scores): a little smaller (the
    within-cell covariance is left out), never above Cauchy–Schwarz's bound."""
    rng = np.random.default_rng(4)
    n = 4000
    y = rng.random(n) < 0.1
    shared = rng.standard_normal(n)
    zb = 1.5 * y + 0.9 * shared + 0.44 * rng.standard_normal(n)
    zc = 1.4 * y + 0.9 * shared + 0.44 * rng.standard_normal(n)
    sb, sc = norm.cdf((zb - 1) / 2), norm.cdf((zc - 1) / 2)
    agg = PairedAggregate()
    agg.add_labelled(y, sb > 0.5, sc > 0.5, sb, sc)

    def components(s):  # DeLong's V10 (positives) and V01 (negatives), binned scores
        bins = np.minimum((s * 1000).astype(int), 999)
        pos, neg = bins[y], bins[~y]
        v10 = np.array([(np.sum(neg < p) + 0.5 * np.sum(neg == p)) / neg.size for p in pos])
        v01 = np.array([(np.sum(pos > q) + 0.5 * np.sum(pos == q)) / pos.size for q in neg])
        return v10, v01

    (b10, b01), (c10, c01) = components(sb), components(sc)
    exact = np.cov(b10, c10)[0, 1] / b10.size + np.cov(b01, c01)[0, 1] / b01.size
    cov = agg.auc_covariance()
    vb, vc = agg.baseline_scores.auc_variance(), agg.candidate_scores.auc_variance()
    assert vb == pytest.approx(np.var(b10, ddof=1) / b10.size + np.var(b01, ddof=1) / b01.size)
    assert 0.95 * exact <= cov <= exact * 1.001
    assert cov <= math.sqrt(vb * vc)


def test_stage_sample_round_trip_with_and_without_the_paired_part():
    shadow = _sample(5)
    split = StageSample(1, shadow.baseline, shadow.candidate)
    assert "paired" not in split.to_dict()  # split-traffic records keep their old form
    for sample in (shadow, split):
        back = StageSample.from_dict(json.loads(json.dumps(sample.to_dict())))
        assert back.to_dict() == sample.to_dict()
    # An evaluation recorded before pairing existed (no "paired" key) still loads.
    old = {k: v for k, v in shadow.to_dict().items() if k != "paired"}
    assert StageSample.from_dict(old).paired is None
    decision = Decision(Action.HOLD, "hold", stage_index=0, stage_name="shadow")
    ev = Evaluation(3, 10.0, 0, 60.0, decision, samples=(shadow, split),
                    policy_digest="sha256:x")
    back_ev = Evaluation.from_dict(json.loads(json.dumps(ev.to_dict())), decision)
    assert [s.to_dict() for s in back_ev.samples] == [shadow.to_dict(), split.to_dict()]
    assert decode_samples(encode_samples([split]))[0].paired is None


# --- paired variances against brute force --------------------------------------------------


@pytest.fixture(scope="module")
def repetitions():
    """The paired and the independent estimates of every KPI over REPS shadow strata."""
    policy = _policy(*KPIS)
    rng = np.random.default_rng(5)
    out: dict[str, list[tuple[float, float, float]]] = {k["name"]: [] for k in KPIS}
    for _ in range(REPS):
        s = shadow_sample(rng, N, BASELINE, CANDIDATE, rho=RHO)
        independent = Strata([StageSample(0, s.baseline, s.candidate)])
        for kpi in policy.kpis:
            paired = measure(kpi, Strata([s]), 1.0, 1.0).promote_tests[0]
            indep = measure(kpi, independent, 1.0, 1.0).promote_tests[0]
            # Every request is paired here, so only the variances differ.
            assert paired.delta == pytest.approx(indep.delta, abs=1e-9)
            out[kpi.name].append((paired.delta, paired.variance, indep.variance))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("kpi", [k["name"] for k in KPIS])
def test_paired_variance_matches_brute_force(repetitions, kpi):
    """Over REPS strata of N requests scored by two models whose latent scores correlate at
    0.8, the gate's mean paired variance equals the estimates' spread (ratio within ±12%;
    its Monte Carlo SE is ≈ 3.2%), and a nominal 95% interval covers the mean estimate
    within three SE; the independent variance is far too large, so the test can fail."""
    data = repetitions[kpi]
    spread = data[:, 0].var(ddof=1)
    ratio = data[:, 1].mean() / spread
    z = (data[:, 0] - data[:, 0].mean()) / np.sqrt(data[:, 1])
    coverage = float(np.mean(np.abs(z) < 1.959964))
    se = math.sqrt(0.05 * 0.95 / REPS)
    print(f"{kpi}: paired/actual variance {ratio:.3f}, coverage {coverage:.4f}, "
          f"independent/actual {data[:, 2].mean() / spread:.2f}")
    assert 0.88 <= ratio <= 1.12
    assert abs(coverage - 0.95) <= 3 * se
    assert data[:, 2].mean() / spread > 1.5


def test_paired_auc_variance_stays_conservative_when_models_nearly_agree():
    """At a correlation of 0.95 the coarse joint histogram misses part of the covariance:
    the paired AUC variance is then a little too large (conservative), never too small."""
    policy = _policy(KPIS[-1])
    rng = np.random.default_rng(6)
    est = []
    for _ in range(600):
        s = shadow_sample(rng, N, BASELINE, CANDIDATE, rho=0.95)
        t = measure(policy.kpis[0], Strata([s]), 1.0, 1.0).promote_tests[0]
        est.append((t.delta, t.variance))
    data = np.array(est)
    ratio = data[:, 1].mean() / data[:, 0].var(ddof=1)
    print(f"AUC at ρ = 0.95: paired/actual variance {ratio:.3f}")
    assert 0.9 <= ratio <= 1.45


def _tango_variance(cells: np.ndarray, d: float) -> float:
    """Tango's (1998) restricted-MLE null variance of the paired difference at Δ = d, by
    brute-force maximisation of the multinomial likelihood (cells 00, 01, 10, 11 of
    (baseline hit, candidate hit); Δ = q01 − q10)."""
    n00, n01, n10, n11 = (float(c) for c in cells)
    n = n00 + n01 + n10 + n11

    def negloglik(q: float) -> float:
        return -(n10 * math.log(q) + n01 * math.log(q + d)
                 + (n00 + n11) * math.log(1 - 2 * q - d))

    lo, hi = max(0.0, -d) + 1e-12, (1 - d) / 2 - 1e-12
    q = minimize_scalar(negloglik, bounds=(lo, hi), method="bounded",
                        options={"xatol": 1e-13}).x
    return (2 * q + d - d * d) / n


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.95])
@pytest.mark.parametrize("role", ["critical", "guardrail"])
def test_paired_null_variance_is_tangos_restricted_mle_asymptotically(rho, role):
    """On one paired stratum of 5000 positives at the null boundary, the rollback test's
    variance (null proportions from all strata, the arms correlated by ρ̂) agrees with
    Tango's restricted-MLE score variance within 2%."""
    margin = 0.02
    d = 0.0 if role == "critical" else -margin
    policy = _policy({**KPIS[0], "margin": margin, "role": role})
    rng = np.random.default_rng(int(rho * 100) + len(role))
    cells = rng.multinomial(5000, joint_hits(0.876, 0.876 + d, rho))
    paired = PairedAggregate()
    paired.outcomes[1] = [[cells[0], cells[1]], [cells[2], cells[3]]]
    n = int(cells.sum())
    roles = []
    for x in (cells[2] + cells[3], cells[1] + cells[3]):
        agg = RoleAggregate(AggregateSpec())
        agg.add_labelled(np.ones(n, dtype=bool), np.arange(n) < x)
        roles.append(agg)
    meas = measure(policy.kpis[0], Strata([StageSample(0, *roles, paired)]),
                   0.0 if role == "critical" else 1.0, 1.0)
    assert meas.rollback_tests[0].variance == pytest.approx(_tango_variance(cells, d),
                                                            rel=0.02)


# --- KPIs of the served answer ------------------------------------------------------------

LOSS = {"name": "loss", "kind": "business", "numerator": "loss", "denominator": "count",
        "direction": "lower", "margin": 1.0, "role": "guardrail"}


def _with_values(sample: StageSample, cand_shift: float, rng) -> StageSample:
    """The sample with a business value on every labelled row: in shadow both roles' rows
    carry the served role's value, so ``cand_shift`` is 0 there."""
    served = rng.normal(10.0, 3.0, sample.baseline.labelled)
    out = []
    for agg, shift in ((sample.baseline, 0.0), (sample.candidate, cand_shift)):
        with_values = RoleAggregate(AggregateSpec(value_names=("loss",)))
        with_values.requests, with_values.errors = agg.requests, agg.errors
        with_values.latency = agg.latency.copy()
        with_values.confusion = agg.confusion.copy()
        with_values.scores = agg.scores.copy()
        assert with_values.values is not None
        with_values.values.update({"loss": served + shift})
        out.append(with_values)
    return StageSample(sample.stage_index, out[0], out[1], sample.paired)


def test_business_kpi_is_not_measurable_in_shadow():
    """In a shadow stage a business KPI is reported as not measurable and neither blocks
    promotion nor rolls back; the next (split) stage measures it on its own stratum only,
    and the bake neither watches nor waits for it."""
    policy = _policy(KPIS[0], LOSS, bake={"duration": "1h"})
    rng = np.random.default_rng(9)
    shadow = _with_values(_sample(7, rho=RHO), 0.0, rng)
    decision = evaluate(policy, 0, 86400.0, [shadow])
    loss = next(e for e in decision.evidence if e.kpi == "loss")
    assert loss.verdict is Verdict.NOT_MEASURABLE
    assert "not measurable in shadow" in loss.reason
    assert "loss" not in decision.reason  # not among the reasons to hold
    # At 50% the candidate's loss is 5 higher: only the split stratum can show it.
    split = _with_values(StageSample(1, shadow.baseline, shadow.candidate), 5.0, rng)
    later = evaluate(policy, 1, 60.0, [shadow, split])
    loss = next(e for e in later.evidence if e.kpi == "loss")
    assert loss.verdict is Verdict.WORSE
    assert loss.delta == pytest.approx(-5.0, abs=0.5)
    # Bake (the final stage's stratum, paired): the KPI is left out, the bake can end.
    bake = _with_values(StageSample(2, shadow.baseline, shadow.candidate, shadow.paired), 0.0,
                        rng)
    first = judge_bake(policy, 2, 0.0, [bake])
    more = _sample(8, n=4000, rho=RHO)  # a later look: twice the requests
    bake2 = _with_values(StageSample(2, more.baseline, more.candidate, more.paired), 0.0, rng)
    done = judge_bake(policy, 2, 7200.0, [bake2], bake_streams(first, 2))
    loss = next(e for e in done.evidence if e.kpi == "loss")
    assert loss.verdict is Verdict.NOT_MEASURABLE
    assert done.action is Action.PROMOTE
