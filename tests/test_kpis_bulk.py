"""Bulk (pre-binned) entry points of the aggregators agree with per-sample updates."""

import numpy as np
import pytest

from mlflow_kpigate.kpis import LatencyHistogram, ScoreHistogram


def test_latency_add_binned_matches_update():
    rng = np.random.default_rng(3)
    x = rng.lognormal(np.log(0.085), 0.35, 20_000)
    per_sample = LatencyHistogram()
    per_sample.update(x)
    lx = np.log(x)
    binned = LatencyHistogram()
    binned.add_binned(per_sample.counts.copy(), lx.mean(), ((lx - lx.mean()) ** 2).sum(), x.sum())
    assert binned.n == per_sample.n
    np.testing.assert_array_equal(binned.counts, per_sample.counts)
    for q in (0.5, 0.95, 0.99):
        assert binned.quantile(q) == per_sample.quantile(q)
    assert binned.mean_log() == pytest.approx(per_sample.mean_log(), rel=1e-12)
    assert binned.var_log() == pytest.approx(per_sample.var_log(), rel=1e-9)
    assert binned.mean() == pytest.approx(per_sample.mean(), rel=1e-12)


def test_latency_add_binned_rejects_bad_counts():
    h = LatencyHistogram()
    with pytest.raises(ValueError, match="bucket counts"):
        h.add_binned(np.ones(3), 0.0, 1.0, 1.0)
    bad = np.zeros_like(h.counts)
    bad[5] = -1
    with pytest.raises(ValueError, match="bucket counts"):
        h.add_binned(bad, 0.0, 1.0, 1.0)
    assert h.n == 0


def test_score_add_counts_matches_update():
    rng = np.random.default_rng(4)
    y = rng.random(5000) < 0.1
    s = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    per_sample = ScoreHistogram()
    per_sample.update(y, s)
    bulk = ScoreHistogram()
    bulk.add_counts(per_sample.pos.copy(), per_sample.neg.copy())
    assert bulk.auc() == per_sample.auc()
    assert bulk.auc_variance() == per_sample.auc_variance()
    with pytest.raises(ValueError, match="non-negative counts"):
        bulk.add_counts(np.ones(2), np.ones(2))
