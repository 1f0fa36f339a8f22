"""The fairness KPI's tests: segment pairs and each segment against the pooled rest."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest

from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius
from mlflow_kpigate.gate.estimate_fairness import fairness_index, fairness_tests

SHARES = {"eu": 0.5, "us": 0.3, "apac": 0.2}
FPR = 0.01


def rates(counts: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    return {s: (float(x), float(n)) for s, (x, n) in counts.items()}


def test_every_ratio_tested_for_rollback_is_at_least_the_index():
    """The pooled rest's rate lies between the segments' rates, so a pooled ratio is never
    below min/max: a test on it rejects only what a test on the index would."""
    rng = np.random.default_rng(5)
    for _ in range(500):
        k = int(rng.integers(3, 7))
        c = {f"s{i}": (float(rng.integers(0, 300)), float(rng.integers(300, 5_000)))
             for i in range(k)}
        b = {s: (50.0, 5_000.0) for s in c}  # the baseline's index is 1: ln FI_b = 0
        pairs, pooled = fairness_tests("region", b, c)
        # The pairs' deltas are the log ratios of the ½-corrected rates; the pooled rest
        # gets one ½ in all (not one per segment), hence the small slack.
        index = fairness_index({s: (x + 0.5, n + 1.0) for s, (x, n) in c.items()})
        assert len(pairs) == k * (k - 1)
        assert len(pooled) == 2 * k
        assert min(t.delta for t in pairs) == pytest.approx(math.log(index))
        assert all(t.delta >= math.log(index) - 0.05 for t in pooled)


def test_two_segments_have_pairs_only():
    pairs, pooled = fairness_tests("region", rates({"a": (10, 1000), "b": (20, 1000)}),
                                   rates({"a": (10, 1000), "b": (20, 1000)}))
    assert [t.label for t in pairs] == ["region=a vs b", "region=b vs a"]
    assert pooled == ()


def test_a_shift_in_a_large_segment_is_measured_against_the_pooled_rest():
    """EU's rate ×1.5 beside a small APAC segment: the pooled comparison has about half the
    variance of the pair with APAC and the same expected effect."""
    n = 400_000
    base = {s: (FPR * n * 19 * w, n * 19 * w) for s, w in SHARES.items()}
    cand = {s: (FPR * n * w * (1.5 if s == "eu" else 1.0), n * w) for s, w in SHARES.items()}
    pairs, pooled = fairness_tests("region", rates(base), rates(cand))
    pair = next(t for t in pairs if t.label == "region=apac vs eu")
    rest = next(t for t in pooled if t.label == "region=the rest vs eu")
    assert rest.delta == pytest.approx(pair.delta, abs=0.01)
    assert rest.delta == pytest.approx(-math.log(1.5), abs=0.01)
    assert rest.variance < 0.6 * pair.variance


def _crossings(stream_rates: dict[str, float], runs: int, looks: int, seed: int,
               alpha: float, detect: float, per_look: int = 20_000
               ) -> tuple[np.ndarray, np.ndarray]:
    """First look (or -1) at which any rollback test's upper bound is below 0, per run,
    with the pair tests alone and with pairs and pooled tests (the gate's family, α split
    over its tests), on the same draws: sequential Binomial counts per segment, the
    baseline with 19 times the candidate's trials (a 5% stage)."""
    rng = np.random.default_rng(seed)
    first_pairs = np.full(runs, -1)
    first_all = np.full(runs, -1)
    segs = list(SHARES)
    k = len(segs)
    n_pairs, n_all = k * (k - 1), k * (k - 1) + 2 * k
    bounds = {m: (tau2_for_radius(detect, alpha / m), alpha / m) for m in (n_pairs, n_all)}
    for r in range(runs):
        xb = dict.fromkeys(segs, 0.0)
        xc = dict.fromkeys(segs, 0.0)
        nb = dict.fromkeys(segs, 0.0)
        nc = dict.fromkeys(segs, 0.0)
        for look in range(looks):
            for s in segs:
                m_c, m_b = per_look * SHARES[s], 19 * per_look * SHARES[s]
                xc[s] += rng.binomial(int(m_c), stream_rates[s])
                xb[s] += rng.binomial(int(m_b), FPR)
                nc[s] += m_c
                nb[s] += m_b
            pairs, pooled = fairness_tests("region", {s: (xb[s], nb[s]) for s in segs},
                                           {s: (xc[s], nc[s]) for s in segs})
            for tests, out, m in ((pairs, first_pairs, n_pairs),
                                  (pairs + pooled, first_all, n_all)):
                tau2, a = bounds[m]
                if out[r] < 0 and any(t.delta + one_sided_radius(t.variance, tau2, a) < 0
                                      for t in tests):
                    out[r] = look
            if first_pairs[r] >= 0 and first_all[r] >= 0:
                break
    return first_pairs, first_all


def test_false_rollback_of_an_equal_candidate_stays_within_alpha():
    """Sequential null simulation (α = 0.2 so that a wrong test would show): equal rates
    in every segment, 30 looks; rollbacks by any test within α + 3 standard errors. (The
    family is conservative: Bonferroni over 12 tests, and the baseline's estimated index is
    biased low, so the measured rate is far below α: 0.5% here.)"""
    runs, alpha = 400, 0.2
    _, first = _crossings(dict.fromkeys(SHARES, FPR), runs, 30, seed=11, alpha=alpha,
                          detect=-math.log(1 - 0.35))
    rate = float(np.mean(first >= 0))
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate


def test_pooled_tests_catch_one_segments_shift_sooner():
    harmful = {s: FPR * (1.5 if s == "eu" else 1.0) for s in SHARES}
    pairs_only, with_pooled = _crossings(harmful, 60, 60, seed=12, alpha=0.0125,
                                         detect=-math.log(1 - 0.35), per_look=1_000)
    assert (with_pooled >= 0).sum() >= (pairs_only >= 0).sum()
    caught = (pairs_only >= 0) & (with_pooled >= 0)
    assert caught.sum() >= 30
    assert with_pooled[caught].mean() < pairs_only[caught].mean()


def test_pairs_are_all_ordered_pairs():
    segs = ("a", "b", "c")
    b = rates({s: (10, 1000) for s in segs})
    pairs, _ = fairness_tests("g", b, b)
    assert [t.label for t in pairs] == [f"g={x} vs {y}" for x, y in permutations(segs, 2)]
