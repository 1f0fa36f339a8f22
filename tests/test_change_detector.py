"""The bake's change detector (gate/change_detector.py) in simulation: its false-alarm run
length, and how fast it catches a regression.

Seeded and vectorised: many paths run at once through the detector's own array functions
(``log_likelihood_ratios``, ``sr_update``, ``log_mixture``). One path is also run through
the rollout's arithmetic (``judge_bake`` on stage samples) and must match the vectorised
one to the last digit, so the simulations speak for the code the controller runs.

Every check can fail: the same ARL check is shown to reject a detector whose threshold is
a third of what it should be.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlflow_kpigate.core.decision import Action
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate import bake_streams, judge_bake
from mlflow_kpigate.gate import change_detector as cd
from mlflow_kpigate.kpis import AggregateSpec, Confusion, RoleAggregate
from mlflow_kpigate.policy import policy_from_dict

K = len(cd.SHIFTS)
RECALL = 0.876


def gaussian_run_lengths(rng, paths: int, steps: int, log_threshold: float, *,
                         drift: float = 0.0, info: float = 1000.0, scale: float = 0.02
                         ) -> np.ndarray:
    """Steps until the first alarm (``steps + 1`` if none): increments N(drift·g, g) of
    the score against θ₀ = 0, exactly the detector's model."""
    log_r = np.full((paths, K), -np.inf)
    alarm = np.full(paths, steps + 1)
    for n in range(1, steps + 1):
        x = rng.normal(drift * info, math.sqrt(info), size=paths)
        log_r = cd.sr_update(log_r, cd.log_likelihood_ratios(x, np.full(paths, info),
                                                             np.full(paths, scale)))
        hit = (cd.log_mixture(log_r) >= log_threshold) & (alarm > steps)
        alarm[hit] = n
    return alarm


def arl_lower_bound(run_lengths: np.ndarray) -> tuple[float, float]:
    """Mean of the run lengths censored at the horizon (≤ the true ARL), and its SE."""
    return float(run_lengths.mean()), float(run_lengths.std(ddof=1) / math.sqrt(len(run_lengths)))


def test_false_alarm_run_length_is_at_least_the_target():
    rng = np.random.default_rng(20260101)
    a = 200.0
    lengths = gaussian_run_lengths(rng, 4000, 2000, math.log(a))
    mean, se = arl_lower_bound(np.minimum(lengths, 2000))
    assert mean + 3 * se >= a, f"ARL {mean:.0f} ± {se:.0f} below the target {a:.0f}"
    # P(false alarm within N steps) <= N / A (Ville on M_n - n + N)
    n = 50
    early = float(np.mean(lengths <= n))
    assert early <= n / a + 3 * math.sqrt(n / a * (1 - n / a) / len(lengths))
    # The same check rejects a detector alarming at a third of the threshold.
    broken = gaussian_run_lengths(rng, 4000, 2000, math.log(a / 3))
    mean_b, se_b = arl_lower_bound(np.minimum(broken, 2000))
    assert mean_b + 3 * se_b < a, "the ARL check cannot tell a broken detector"


def _recall_samples(xb: int, nb: int, xc: int, nc: int) -> list[StageSample]:
    spec = AggregateSpec()
    base, cand = RoleAggregate(spec), RoleAggregate(spec)
    base.confusion.merge(Confusion(tp=xb, fn=nb - xb))
    cand.confusion.merge(Confusion(tp=xc, fn=nc - xc))
    base.requests, cand.requests = nb, nc
    return [StageSample(2, base, cand)]


POLICY = policy_from_dict({
    "evaluation": {"interval": "5m"},
    "stages": [5, 50, 100],
    "kpis": [{"name": "recall", "kind": "proportion", "metric": "recall", "role": "critical",
              "margin": 0.02}],
    "bake": {"duration": "24h", "arl": "30d"},
})


def _null_score(xb, nb, xc, nc):
    """(information, score) of the gate's rollback statistic for a critical proportion:
    adjusted counts x + 2p̄, n + 2 (p̄ pooled), variance p₀(1 − p₀)(1/ñ_c + 1/ñ_b) at the
    Δ = 0 null with p₀ the adjusted pooled proportion (gate/null_variance.py)."""
    pbar = (xc + xb + 1) / (nc + nb + 2)
    ac, ab, mc, mb = xc + 2 * pbar, xb + 2 * pbar, nc + 2, nb + 2
    p0 = (ac + ab) / (mc + mb)
    info = 1 / (p0 * (1 - p0) * (1 / mc + 1 / mb))
    return info, (ac / mc - ab / mb) * info


def proportion_run_lengths(rng, paths: int, steps: int, log_threshold: float, *,
                           per_step: int, p_before: float = RECALL, p_after: float = RECALL,
                           change_at: int = 0, threshold: float = 0.0, scale: float = 0.02,
                           trace: list | None = None) -> np.ndarray:
    """Run lengths of the detector on recall estimated as the gate's rollback test does
    (counts adjusted toward the pooled proportion, variance at the Δ = 0 null: a critical
    KPI), the baseline at RECALL, the candidate moving at ``change_at``."""
    xb = np.zeros(paths)
    xc = np.zeros(paths)
    n = 0
    anchor_s = anchor_i = None
    log_r = np.full((paths, K), -np.inf)
    alarm = np.full(paths, steps + 1)
    for k in range(steps):
        p = p_before if k < change_at else p_after
        xb += rng.binomial(per_step, RECALL, paths)
        xc += rng.binomial(per_step, p, paths)
        n += per_step
        if trace is not None:
            trace.append((int(xb[0]), n, int(xc[0]), n))
        info, score = _null_score(xb, n, xc, n)
        if anchor_s is None:  # the first look anchors
            anchor_s, anchor_i = score, info
            continue
        gain = info - anchor_i
        used = gain > 0
        x = (score - anchor_s) - threshold * gain
        step = cd.sr_update(log_r, cd.log_likelihood_ratios(x, np.where(used, gain, 0.0),
                                                            np.full(paths, scale)))
        log_r = np.where(used[:, None], step, log_r)
        anchor_s, anchor_i = np.where(used, score, anchor_s), np.where(used, info, anchor_i)
        hit = (cd.log_mixture(log_r) >= log_threshold) & (alarm > steps)
        alarm[hit] = k
    return alarm


def test_the_simulation_is_the_controllers_arithmetic():
    """One path through judge_bake on stage samples equals the vectorised simulation."""
    rng = np.random.default_rng(5)
    trace: list = []
    proportion_run_lengths(rng, 1, 12, math.inf, per_step=450, p_after=0.80, change_at=4,
                           trace=trace)
    rng = np.random.default_rng(5)
    log_r = np.full((1, K), -np.inf)
    previous = {}
    decision = None
    for k, (xb, nb, xc, nc) in enumerate(trace):
        decision = judge_bake(POLICY, 2, 300.0 * (k + 1), _recall_samples(xb, nb, xc, nc),
                              previous)
        previous = bake_streams(decision, 2)
    # replay the same counts through the array functions
    anchor = None
    for xb, nb, xc, nc in trace:
        info, score = _null_score(xb, nb, xc, nc)
        if anchor is not None and info > anchor[1]:
            x = np.array([score - anchor[0]])
            log_r = cd.sr_update(log_r, cd.log_likelihood_ratios(x, np.array([info - anchor[1]]),
                                                                 np.array([0.02])))
        if anchor is None or info > anchor[1]:
            anchor = (score, info)
    stream = previous[("recall", "recall")]
    assert stream.log_r == pytest.approx(tuple(log_r[0]), rel=1e-12, abs=1e-9)
    assert decision is not None
    assert decision.action is Action.ROLLBACK  # −7.6 points: caught within 8 looks


def test_false_alarm_run_length_with_plug_in_variances():
    """Recall equal in both arms, estimated as the gate does: still ARL >= A."""
    rng = np.random.default_rng(31)
    a = 100.0
    lengths = proportion_run_lengths(rng, 2000, 800, math.log(a), per_step=150)
    mean, se = arl_lower_bound(np.minimum(lengths, 800))
    assert mean + 3 * se >= a, f"ARL {mean:.0f} ± {se:.0f} below the target {a:.0f}"


def test_a_five_point_recall_drop_is_caught_within_the_documented_delay():
    """fraud.yaml's bake: 5-minute looks, ARL 30 days (A = 8640 looks) shared by 5 KPIs;
    ~100 requests/s at 1.5% fraud give 450 labelled positives per look in each arm (the
    baseline scores every request as a shadow). Recall 0.876 -> 0.826 after 2 hours."""
    rng = np.random.default_rng(47)
    a = cd.threshold_steps(30 * 86400, 300)
    log_threshold = math.log(a * 5)
    change_at = 24
    lengths = proportion_run_lengths(rng, 2000, 96, log_threshold, per_step=450,
                                     p_after=RECALL - 0.05, change_at=change_at)
    false = lengths < change_at
    delay = lengths[~false] - change_at + 1  # looks after the change, counting its own
    documented = cd.expected_delay(0.05, 450 / (2 * RECALL * (1 - RECALL)), log_threshold,
                                   scale=0.02)
    assert 3 < documented < 6  # docs/statistics.md: about 5 looks, 25 minutes
    assert false.mean() <= 0.01
    assert np.all(lengths <= 96)  # every path caught within the 8 hours simulated
    assert np.median(delay) <= documented + 1
    assert np.quantile(delay, 0.95) <= 2 * documented
