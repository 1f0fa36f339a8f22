"""The anytime-valid boundaries: their defining equations, and their error rates in simulation.

The simulations are the statistical heart of the gate's guarantee: the fraction of
simulated paths on which the true value *ever* leaves the confidence sequence, over many
looks, must stay at or below α (up to Monte Carlo error), while a fixed z-bound re-checked
at every look must not (which shows the simulation can detect a violation).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.boundaries import (
    one_sided_radius,
    tau2_for_radius,
    two_sided_radius,
    variance_for_radius,
)
from mlflow_kpigate.gate.estimators import Strata, measure
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.policy import policy_from_dict

ALPHAS = [0.01, 0.05, 0.1]
VARIANCES = [1e-6, 1e-4, 1e-2, 0.3, 1.0, 30.0]
TAU2S = [1e-4, 0.05, 1.0]

PATHS = 4000
LOOKS = 500


def _mixture(r: float, v: float, tau2: float) -> float:
    """The one-sided (half-normal) mixture martingale at deviation ``r``."""
    z = r * math.sqrt(tau2) / math.sqrt(v * (v + tau2))
    return 2 * math.sqrt(v / (v + tau2)) * math.exp(z * z / 2) * float(ndtr(z))


def _limit(alpha: float) -> float:
    """α plus three Monte Carlo standard errors of a crossing rate over ``PATHS`` paths."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / PATHS)


def _radius_of(fn, v: np.ndarray, tau2: float, alpha: float) -> np.ndarray:
    """``fn`` (a library radius) at every entry of ``v``, interpolated on a fine log grid.

    The radius is smooth in log v; linear interpolation of log r on 3000 grid points is
    checked against the exact function before it is used.
    """
    finite = v[np.isfinite(v)]
    lo, hi = math.log(finite.min()) - 0.01, math.log(finite.max()) + 0.01
    grid = np.linspace(lo, hi, 3000)
    log_r = np.log([fn(math.exp(g), tau2, alpha) for g in grid])
    probe = np.exp(np.linspace(lo + 0.003, hi - 0.003, 37))
    approx = np.exp(np.interp(np.log(probe), grid, log_r))
    exact = np.array([fn(p, tau2, alpha) for p in probe])
    assert np.max(np.abs(approx / exact - 1)) < 1e-5
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.interp(np.log(v), grid, log_r))


# --- the defining equations -------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("v", VARIANCES)
@pytest.mark.parametrize("tau2", TAU2S)
def test_one_sided_radius_solves_the_mixture_equation(alpha, v, tau2):
    r = one_sided_radius(v, tau2, alpha)
    assert r > 0
    assert _mixture(r, v, tau2) == pytest.approx(1 / alpha, rel=1e-7)
    # The martingale increases in r, so any smaller radius stays below 1/α.
    assert _mixture(0.999 * r, v, tau2) < 1 / alpha


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("v", VARIANCES)
@pytest.mark.parametrize("tau2", TAU2S)
def test_two_sided_radius_is_the_closed_form(alpha, v, tau2):
    r = two_sided_radius(v, tau2, alpha)
    # The normal mixture sqrt(v/(v+τ²)) exp(z²/2) equals 1/α at the radius.
    z = r * math.sqrt(tau2) / math.sqrt(v * (v + tau2))
    assert math.sqrt(v / (v + tau2)) * math.exp(z * z / 2) == pytest.approx(1 / alpha, rel=1e-9)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("v", VARIANCES)
@pytest.mark.parametrize("tau2", TAU2S)
def test_one_sided_radius_is_close_to_two_sided_at_twice_alpha(alpha, v, tau2):
    # z²/2 + ln Φ(z) = ln(1/(2α)) + ½ ln(1 + τ²/v) is the two-sided equation at 2α except
    # for ln Φ(z) < 0, which is small at the z these levels give: slightly wider, by a few
    # per cent at most (most when τ² << v, where z is smallest).
    one = one_sided_radius(v, tau2, alpha)
    two = two_sided_radius(v, tau2, 2 * alpha)
    assert two <= one <= 1.03 * two


def test_radii_are_infinite_without_a_usable_variance():
    for v in (0.0, -1.0, math.inf, math.nan):
        assert one_sided_radius(v, 1.0, 0.05) == math.inf
        assert two_sided_radius(v, 1.0, 0.05) == math.inf


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("tau2", TAU2S)
def test_radius_shrinks_as_the_variance_shrinks(alpha, tau2):
    vs = np.geomspace(1e-8, 1e3, 200)
    for fn in (one_sided_radius, two_sided_radius):
        radii = np.array([fn(v, tau2, alpha) for v in vs])
        assert np.all(np.diff(radii) > 0)
        # ... but never faster than the standard error: the bound stays above a fixed z.
        assert np.all(radii / np.sqrt(vs) > 1.6)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_a_smaller_alpha_gives_a_wider_radius(alpha):
    assert one_sided_radius(0.01, 1.0, alpha / 2) > one_sided_radius(0.01, 1.0, alpha)
    assert two_sided_radius(0.01, 1.0, alpha / 2) > two_sided_radius(0.01, 1.0, alpha)


@pytest.mark.parametrize("alpha", [0.005, 0.05, 0.1])
@pytest.mark.parametrize("one_sided", [True, False])
@pytest.mark.parametrize("radius", [0.003, 0.02, 1.0])
def test_tau2_for_radius_minimises_the_information_needed(alpha, one_sided, radius):
    tau2 = tau2_for_radius(radius, alpha, one_sided)
    best = variance_for_radius(radius, tau2, alpha, one_sided)
    assert best > 0
    # Any other τ² reaches the same radius only at a smaller variance (more samples).
    for factor in (0.25, 0.5, 0.8, 1.25, 2.0, 4.0):
        other = variance_for_radius(radius, tau2 * factor, alpha, one_sided)
        assert other < best
    # Scale invariance: τ² = κ(α) R².
    assert tau2_for_radius(2 * radius, alpha, one_sided) == pytest.approx(4 * tau2, rel=1e-9)


def test_tau2_for_radius_rejects_a_non_positive_radius():
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="radius"):
            tau2_for_radius(bad, 0.05)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("one_sided", [True, False])
@pytest.mark.parametrize("radius", [0.001, 0.02, 0.5, 5.0])
def test_variance_for_radius_inverts_the_radius(alpha, one_sided, radius):
    fn = one_sided_radius if one_sided else two_sided_radius
    for tau2 in (0.1 * radius**2, tau2_for_radius(radius, alpha, one_sided), 10 * radius**2):
        v = variance_for_radius(radius, tau2, alpha, one_sided)
        assert v > 0
        assert fn(v, tau2, alpha) == pytest.approx(radius, rel=1e-7)


# --- anytime validity in simulation -----------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_walks():
    """Running means of N(0, 1) observations on PATHS paths, seen at LOOKS looks.

    The number of observations at look k grows geometrically from 1 to 10⁴ (so the
    information spans four decades, as a rollout's does from shadow to 50%); the sum over
    n_k observations is simulated exactly as a Gaussian random walk with increments of
    variance n_k − n_(k−1). Returns (running mean, its variance 1/n) per path and look.
    """
    rng = np.random.default_rng(20240611)
    n = np.geomspace(1.0, 1e4, LOOKS)
    steps = np.diff(n, prepend=0.0)
    sums = np.cumsum(rng.standard_normal((PATHS, LOOKS)) * np.sqrt(steps), axis=1)
    return sums / n, 1.0 / n


def _ever(condition: np.ndarray) -> float:
    """Fraction of paths (rows) on which ``condition`` holds at some look."""
    return float(np.mean(condition.any(axis=1)))


def test_one_sided_sequence_is_anytime_valid_for_gaussian_walks(gaussian_walks):
    alpha = 0.05
    mean, v = gaussian_walks
    tau2 = tau2_for_radius(0.2, alpha)  # tightest around n = 100
    r = np.array([one_sided_radius(x, tau2, alpha) for x in v])
    # The true mean is 0: it leaves (-∞, mean + r] when mean + r < 0 ...
    upper = _ever(mean + r < 0)
    # ... and [mean - r, ∞) when mean - r > 0.
    lower = _ever(mean - r > 0)
    print(f"one-sided crossing rates: upper {upper:.4f}, lower {lower:.4f} (alpha {alpha})")
    assert upper <= _limit(alpha)
    assert lower <= _limit(alpha)
    # Power of this check: a boundary at twice the level (too narrow by a factor-2 error
    # in its threshold 1/α) is caught.
    loose = np.array([one_sided_radius(x, tau2, 2 * alpha) for x in v])
    assert _ever(mean + loose < 0) > _limit(alpha)


def test_two_sided_sequence_is_anytime_valid_for_gaussian_walks(gaussian_walks):
    alpha = 0.05
    mean, v = gaussian_walks
    tau2 = tau2_for_radius(0.2, alpha, one_sided=False)
    r = np.array([two_sided_radius(x, tau2, alpha) for x in v])
    rate = _ever(np.abs(mean) > r)
    print(f"two-sided crossing rate: {rate:.4f} (alpha {alpha})")
    assert rate <= _limit(alpha)


def test_naive_fixed_z_bound_fails_under_peeking(gaussian_walks):
    """A one-sided z-test at 5% re-checked at every look: the simulation must catch it."""
    alpha = 0.05
    mean, v = gaussian_walks
    rate = _ever(mean + 1.645 * np.sqrt(v) < 0)
    print(f"naive z = 1.645 crossing rate over {LOOKS} looks: {rate:.4f}")
    assert rate > 4 * _limit(alpha)
    # At a single, pre-planned look the same bound is fine, so the excess is the peeking.
    assert np.mean(mean[:, -1] + 1.645 * np.sqrt(v[-1]) < 0) <= _limit(alpha)


def test_one_sided_sequence_with_plug_in_variance():
    """Unknown variance: the sample variance plugged in (asymptotic CS), batches of 10."""
    alpha, batch = 0.05, 10
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 2.0, (PATHS, LOOKS, batch)).astype(np.float64)
    s1 = np.cumsum(x.sum(axis=2), axis=1)
    s2 = np.cumsum((x * x).sum(axis=2), axis=1)
    n = batch * np.arange(1, LOOKS + 1, dtype=float)
    mean = s1 / n
    v = (s2 - n * mean * mean) / (n - 1) / n
    tau2 = tau2_for_radius(0.25, alpha)
    r = _radius_of(one_sided_radius, v, tau2, alpha)
    rate = _ever(mean + r < 3.0)
    print(f"plug-in one-sided crossing rate: {rate:.4f}")
    assert rate <= _limit(alpha)


# --- Bernoulli: two arms, Agresti–Caffo, pooled over strata -----------------------------

P_EQUAL = 0.876  # recall of the case study's fraud model, both arms
STAGES = ((0.05, 150), (0.25, 150), (0.5, 200))  # candidate share, looks in the stage
BATCH = 40  # labelled positives arriving per look, split between the arms


def _ac(x: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = (x + 1.0) / (n + 2.0)
    return p, p * (1.0 - p) / (n + 2.0)


def _simulate_two_arm_proportions(seed: int):
    """Per path and look: pooled (δ, v) as the engine computes them, and the raw counts.

    Each stage is a stratum with its own traffic share. Within a stratum the arms'
    Agresti–Caffo estimates are differenced; strata are pooled with inverse-variance
    weights, a finished stage keeping its final counts.
    """
    rng = np.random.default_rng(seed)
    looks = sum(k for _, k in STAGES)
    num = np.zeros((PATHS, looks))
    info = np.zeros((PATHS, looks))
    counts = []  # per stratum: cumulative (xb, nb, xc, nc), each PATHS × looks-in-stage
    start = 0
    for share, k in STAGES:
        nc = rng.binomial(BATCH, share, (PATHS, k))
        nb = BATCH - nc
        xc, xb = rng.binomial(nc, P_EQUAL), rng.binomial(nb, P_EQUAL)
        cum = [np.cumsum(a, axis=1).astype(float) for a in (xb, nb, xc, nc)]
        counts.append(cum)
        sxb, snb, sxc, snc = cum
        pb, vb = _ac(sxb, snb)
        pc, vc = _ac(sxc, snc)
        ok = (snb > 0) & (snc > 0)
        w = np.where(ok, 1.0 / (vb + vc), 0.0)
        d = np.where(ok, pc - pb, 0.0)
        num[:, start:start + k] += w * d
        info[:, start:start + k] += w
        num[:, start + k:] += (w * d)[:, -1:]
        info[:, start + k:] += w[:, -1:]
        start += k
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(info > 0, num / info, np.nan)
        v = np.where(info > 0, 1.0 / info, np.nan)
    return delta, v, counts


def _aggregate(policy, x: int, n: int) -> RoleAggregate:
    agg = RoleAggregate(AggregateSpec.from_policy(policy))
    agg.add_labelled(np.ones(n, dtype=bool), np.arange(n) < x)
    return agg


@pytest.fixture(scope="module")
def bernoulli_paths():
    return _simulate_two_arm_proportions(seed=99)


def test_vectorised_arithmetic_matches_the_engine(bernoulli_paths):
    """The simulation's pooled (δ, v) equal what the engine's estimator computes."""
    delta, v, counts = bernoulli_paths
    policy = policy_from_dict({
        "stages": "5,25,50,100",
        "kpis": [{"name": "recall", "kind": "proportion", "metric": "recall",
                  "role": "critical", "margin": 0.02}],
    })
    kpi = policy.kpi("recall")
    rng = np.random.default_rng(5)
    lengths = [k for _, k in STAGES]
    for path in rng.integers(0, PATHS, 4):
        for look in (3, 149, 151, 320, 499):
            samples = []
            start = 0
            for index, ((xb, nb, xc, nc), k) in enumerate(zip(counts, lengths, strict=True)):
                if look < start:
                    break
                j = min(look - start, k - 1)
                samples.append(StageSample(
                    index,
                    _aggregate(policy, int(xb[path, j]), int(nb[path, j])),
                    _aggregate(policy, int(xc[path, j]), int(nc[path, j])),
                ))
                start += k
            test = measure(kpi, Strata(samples), 0.0, 1.0).rollback_tests[0]
            assert test.delta == pytest.approx(delta[path, look], rel=1e-9, abs=1e-12)
            assert test.variance == pytest.approx(v[path, look], rel=1e-9)


def test_two_arm_proportions_are_anytime_valid(bernoulli_paths):
    """Equal recall in both arms, staged traffic: the rollback bound is rarely ever crossed."""
    alpha = 0.05
    delta, v, _ = bernoulli_paths
    tau2 = tau2_for_radius(0.02, alpha)  # the gate's choice for a 2-point margin
    r = _radius_of(one_sided_radius, v, tau2, alpha)
    with np.errstate(invalid="ignore"):
        worse = _ever(np.nan_to_num(delta + r < 0))  # a false rollback at margin 0
        better = _ever(np.nan_to_num(delta - r > 0))  # a false "confidently better"
    print(f"Bernoulli crossing rates: rollback side {worse:.4f}, other side {better:.4f}")
    assert worse <= _limit(alpha)
    assert better <= _limit(alpha)
    # Peeking at a fixed z-bound on the same paths is detectably invalid.
    with np.errstate(invalid="ignore"):
        naive = _ever(np.nan_to_num(delta + 1.645 * np.sqrt(v) < 0))
    assert naive > 4 * _limit(alpha)
