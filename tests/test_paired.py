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
from scipy.stats import norm

from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.evaluation import Evaluation, decode_samples, encode_samples
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import PairedAggregate

RHO = 0.8
BASELINE = Model()
CANDIDATE = Model(recall=0.82, fpr=0.11, log_latency=math.log(0.09), error_rate=0.025)


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
