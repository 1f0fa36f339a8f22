"""The anytime-valid boundaries: their defining equations, and their error rates in simulation.

The simulations are the statistical heart of the gate's guarantee: the fraction of
simulated paths on which the true value *ever* leaves the confidence sequence, over many
looks, must stay at or below α (up to Monte Carlo error), while a fixed z-bound re-checked
at every look must not (which shows the simulation can detect a violation).

The rollback tests' variances are computed under their null (gate/null_variance.py): the
simulations below check each of them at its null boundary, with the gate's arithmetic
(checked against the engine on the same counts) and the gate's τ for the rollback check.
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
from mlflow_kpigate.gate.null_variance import (
    adjust_toward_pooled,
    pooled_variance,
    restricted_proportions,
    restricted_variance,
)
from mlflow_kpigate.gate.strata import rollback_distance
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


# --- the restricted (null) proportions --------------------------------------------------


def _brute_restricted(xc: float, nc: float, xb: float, nb: float, diff: float) -> float:
    """p_c maximising the two-binomial log-likelihood subject to p_c − p_b = diff (grid +
    golden-section refinement, no closed form)."""
    lo, hi = max(0.0, diff), min(1.0, 1.0 + diff)

    def loglik(q: np.ndarray) -> np.ndarray:
        qb = q - diff
        with np.errstate(divide="ignore", invalid="ignore"):
            return (xc * np.log(q) + (nc - xc) * np.log1p(-q)
                    + xb * np.log(qb) + (nb - xb) * np.log1p(-qb))

    grid = np.linspace(lo, hi, 200_001)[1:-1]
    best = int(np.nanargmax(loglik(grid)))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if loglik(np.array([c]))[0] > loglik(np.array([d]))[0]:
            b = d
        else:
            a = c
    return 0.5 * (a + b)


RESTRICTED_CASES = [
    # (x_c, n_c, x_b, n_b, diff): unbalanced arms, both signs, rates near 0 and 1, tiny n.
    (44, 50, 880, 1000, -0.02),
    (430, 500, 8760, 10_000, -0.05),
    (3, 4, 95, 100, 0.1),
    (12, 1000, 40, 20_000, 0.005),  # a lower-is-better rate at +margin
    (0, 30, 2, 600, 0.01),          # no candidate events at all
    (30, 30, 580, 600, -0.03),      # all candidate trials successes
    (1, 2, 1, 2, -0.4),
    (7, 9, 3, 11, 0.3),
]


@pytest.mark.parametrize("case", RESTRICTED_CASES)
def test_farrington_manning_is_the_restricted_maximum_likelihood(case):
    xc, nc, xb, nb, diff = case
    for adjusted in (False, True):
        args = adjust_toward_pooled(xc, nc, xb, nb) if adjusted else (xc, nc, xb, nb)
        qc, qb = restricted_proportions(*args, diff)
        assert qc - qb == pytest.approx(diff, abs=1e-12)
        assert qc == pytest.approx(_brute_restricted(*args, diff), abs=2e-7)
    # The variance at the restricted proportions, on the adjusted counts the gate uses.
    a = adjust_toward_pooled(xc, nc, xb, nb)
    qc, qb = restricted_proportions(*a, diff)
    v = restricted_variance(*a, diff)
    assert v == pytest.approx(qc * (1 - qc) / a[1] + qb * (1 - qb) / a[3], rel=1e-12)
    assert math.isfinite(v)
    assert v > 0


def test_restricted_at_zero_is_the_pooled_proportion():
    for xc, nc, xb, nb, _ in RESTRICTED_CASES:
        a = adjust_toward_pooled(xc, nc, xb, nb)
        qc, qb = restricted_proportions(*a, 0.0)
        assert qc == qb == pytest.approx((a[0] + a[2]) / (a[1] + a[3]))
        assert restricted_variance(*a, 0.0) == pytest.approx(pooled_variance(*a), rel=1e-12)
        # ... and the closed form approaches it continuously.
        assert restricted_variance(*a, 1e-9) == pytest.approx(pooled_variance(*a), rel=1e-6)


def test_restricted_variance_has_no_nan_at_the_edges():
    for xc, nc, xb, nb in ((0, 1, 0, 1), (1, 1, 1, 1), (0, 0, 5, 9), (0, 5000, 0, 90_000),
                           (5000, 5000, 90_000, 90_000)):
        a = adjust_toward_pooled(xc, nc, xb, nb)
        for diff in (-0.999, -0.5, -0.02, 0.0, 0.02, 0.5, 0.999):
            v = restricted_variance(*a, diff)
            assert math.isfinite(v), (xc, nc, xb, nb, diff)
            assert v > 0
    # No feasible pair of proportions, or no trials: NaN (the gate keeps its plug-in).
    assert math.isnan(restricted_variance(3, 5, 3, 5, 1.0))
    assert math.isnan(restricted_variance(3, 5, 3, 5, -1.5))
    assert math.isnan(restricted_variance(0, 0, 3, 5, 0.1))
    assert math.isnan(pooled_variance(0, 0, 3, 5))


# --- Bernoulli: two arms, pooled over strata, rollback variance under the null ----------

P_EQUAL = 0.876  # recall of the case study's fraud model, both arms
STAGES = ((0.05, 150), (0.25, 150), (0.5, 200))  # candidate share, looks in the stage
BATCH = 40  # labelled positives arriving per look, split between the arms
MARGIN = 0.02


def _fm(xc, nc, xb, nb, diff: float):
    """Farrington–Manning restricted proportions, vectorised (the library's closed form)."""
    if diff == 0:
        p = (xc + xb) / (nc + nb)
        return p, p
    p1, p2 = xc / nc, xb / nb
    theta = nb / nc
    a = 1 + theta
    b = -(1 + theta + p1 + theta * p2 + diff * (theta + 2))
    c = diff * diff + diff * (2 * p1 + theta + 1) + p1 + theta * p2
    d = -p1 * diff * (1 + diff)
    v = b ** 3 / (3 * a) ** 3 - b * c / (6 * a * a) + d / (2 * a)
    u = np.copysign(np.sqrt(b * b / (3 * a) ** 2 - c / (3 * a)), v)
    w = (np.pi + np.arccos(np.clip(v / u ** 3, -1, 1))) / 3
    q1 = 2 * u * np.cos(w) - b / (3 * a)
    return q1, q1 - diff


def _pool_strata(parts, looks: int):
    """Inverse-variance pooling over strata: each part is (start, delta, variance, ok)
    over its stage's looks; a finished stage keeps its final values."""
    num = np.zeros((PATHS, looks))
    info = np.zeros((PATHS, looks))
    for start, delta, var, ok in parts:
        k = delta.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(ok, 1.0 / var, 0.0)
        wd = np.where(ok, w * delta, 0.0)
        num[:, start:start + k] += wd
        info[:, start:start + k] += w
        num[:, start + k:] += wd[:, -1:]
        info[:, start + k:] += w[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(info > 0, num / info, np.nan), np.where(info > 0, 1.0 / info, np.nan)


def _simulate_two_arm_proportions(seed: int, p_b: float = P_EQUAL, p_c: float = P_EQUAL,
                                  null_diff: float = 0.0, batch: int = BATCH):
    """Per path and look, as the engine computes them: the promotion test's pooled (δ, v)
    (Agresti–Caffo), the rollback test's pooled (δ₀, v₀) (counts adjusted towards the
    pooled proportion, variance at p_c − p_b = ``null_diff`` with the null proportions
    estimated from all strata so far), and the raw counts.

    Each stage is a stratum with its own traffic share; strata are pooled with
    inverse-variance weights (the rollback statistic with its null variances).
    """
    rng = np.random.default_rng(seed)
    looks = sum(k for _, k in STAGES)
    promote, counts, adjusted = [], [], []
    start = 0
    for share, k in STAGES:
        nc = rng.binomial(batch, share, (PATHS, k))
        nb = batch - nc
        xc, xb = rng.binomial(nc, p_c), rng.binomial(nb, p_b)
        cum = [np.cumsum(a, axis=1).astype(float) for a in (xb, nb, xc, nc)]
        counts.append(cum)
        sxb, snb, sxc, snc = cum
        ok = (snb > 0) & (snc > 0)
        pb, pc = (sxb + 1) / (snb + 2), (sxc + 1) / (snc + 2)
        promote.append((start, pc - pb, pb * (1 - pb) / (snb + 2) + pc * (1 - pc) / (snc + 2),
                        ok))
        pbar = (sxc + sxb + 1) / (snc + snb + 2)
        # Adjusted counts over the whole run: 0 before the stage, its last after it.
        full = []
        for a in (sxc + 2 * pbar, snc + 2, sxb + 2 * pbar, snb + 2):
            f = np.zeros((PATHS, looks))
            f[:, start:start + k] = np.where(ok, a, 0.0)
            f[:, start + k:] = f[:, start + k - 1:start + k]
            full.append(f)
        adjusted.append((start, k, full))
        start += k
    # The null proportions from all strata seen so far; every stratum's variance uses them
    # (a finished stratum's too, at every later look).
    tot = [sum(full[i] for _, _, full in adjusted) for i in range(4)]
    num = np.zeros((PATHS, looks))
    info = np.zeros((PATHS, looks))
    with np.errstate(divide="ignore", invalid="ignore"):
        qc, qb = _fm(tot[0], tot[1], tot[2], tot[3], null_diff)
        for _, _, (ac, an_c, ab, an_b) in adjusted:
            live = an_c > 0
            w = np.where(live, 1.0 / (qc * (1 - qc) / an_c + qb * (1 - qb) / an_b), 0.0)
            num += np.where(live, w * (ac / an_c - ab / an_b), 0.0)
            info += w
        rollback = (np.where(info > 0, num / info, np.nan),
                    np.where(info > 0, 1.0 / info, np.nan))
    return _pool_strata(promote, looks), rollback, counts


def _aggregate(policy, x: int, n: int) -> RoleAggregate:
    agg = RoleAggregate(AggregateSpec.from_policy(policy))
    agg.add_labelled(np.ones(n, dtype=bool), np.arange(n) < x)
    return agg


@pytest.fixture(scope="module")
def bernoulli_paths():
    return _simulate_two_arm_proportions(seed=99)


@pytest.fixture(scope="module")
def guardrail_paths():
    """The candidate exactly one margin worse: the guardrail's rollback null boundary."""
    return _simulate_two_arm_proportions(seed=98, p_c=P_EQUAL - MARGIN, null_diff=-MARGIN)


RECALL_KPI = {"name": "recall", "kind": "proportion", "metric": "recall", "margin": MARGIN}


@pytest.mark.parametrize("role", ["critical", "guardrail"])
def test_vectorised_arithmetic_matches_the_engine(bernoulli_paths, guardrail_paths, role):
    """The simulation's pooled (δ, v) equal what the engine's estimator computes, for the
    promotion test and for the rollback test with its null variance."""
    (delta, v), (delta0, v0), counts = (bernoulli_paths if role == "critical"
                                        else guardrail_paths)
    policy = policy_from_dict({"stages": "5,25,50,100", "kpis": [{**RECALL_KPI, "role": role}]})
    kpi = policy.kpi("recall")
    m_rollback = 0.0 if role == "critical" else 1.0
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
            meas = measure(kpi, Strata(samples), m_rollback, 1.0)
            prom, roll = meas.promote_tests[0], meas.rollback_tests[0]
            assert prom.delta == pytest.approx(delta[path, look], rel=1e-9, abs=1e-12)
            assert prom.variance == pytest.approx(v[path, look], rel=1e-9)
            assert roll.delta == pytest.approx(delta0[path, look], rel=1e-9, abs=1e-12)
            assert roll.variance == pytest.approx(v0[path, look], rel=1e-9)


def _rollback_tau2(m_rollback: float, alpha: float) -> float:
    """The gate's τ² for the rollback check (default detect = 1.75 × margin)."""
    return tau2_for_radius(rollback_distance(MARGIN, math.nan, m_rollback), alpha)


def test_two_arm_proportions_are_anytime_valid(bernoulli_paths):
    """Equal recall in both arms, staged traffic: the critical KPI's rollback bound (pooled
    null variance) is rarely ever crossed, nor the promotion bound on the other side."""
    alpha = 0.05
    (delta, v), (delta0, v0), _ = bernoulli_paths
    r0 = _radius_of(one_sided_radius, v0, _rollback_tau2(0.0, alpha), alpha)
    r = _radius_of(one_sided_radius, v, tau2_for_radius(MARGIN, alpha), alpha)
    with np.errstate(invalid="ignore"):
        worse = _ever(np.nan_to_num(delta0 + r0 < 0))  # a false rollback at margin 0
        better = _ever(np.nan_to_num(delta - r > 0))  # a false "confidently better"
    print(f"Bernoulli crossing rates ({PATHS} paths × {v.shape[1]} looks, SE "
          f"{math.sqrt(alpha * (1 - alpha) / PATHS):.4f}): rollback side (pooled null "
          f"variance) {worse:.4f}, other side {better:.4f}")
    assert worse <= _limit(alpha)
    assert better <= _limit(alpha)
    # Peeking at a fixed z-bound on the same paths is detectably invalid.
    with np.errstate(invalid="ignore"):
        naive = _ever(np.nan_to_num(delta0 + 1.645 * np.sqrt(v0) < 0))
    assert naive > 4 * _limit(alpha)


def test_guardrail_farrington_manning_is_anytime_valid_at_the_margin(guardrail_paths):
    """Candidate recall exactly one margin below the baseline's (the null boundary): the
    guardrail's rollback bound with the restricted variance is rarely ever below −margin."""
    alpha = 0.05
    _, (delta0, v0), _ = guardrail_paths
    r0 = _radius_of(one_sided_radius, v0, _rollback_tau2(1.0, alpha), alpha)
    with np.errstate(invalid="ignore"):
        rate = _ever(np.nan_to_num(delta0 + r0 < -MARGIN))
        naive = _ever(np.nan_to_num(delta0 + 1.645 * np.sqrt(v0) < -MARGIN))
    print(f"Farrington–Manning crossing rate at Δ = −margin: {rate:.4f} (limit "
          f"{_limit(alpha):.4f}); naive z {naive:.4f}")
    assert rate <= _limit(alpha)
    assert naive > 4 * _limit(alpha)


def test_lower_is_better_rate_at_its_margin_is_anytime_valid():
    """A lower-is-better rate one margin *higher* in the candidate (p_c − p_b = +margin):
    the sign of the restricted difference follows the KPI's direction (the engine's use
    of +margin is checked in test_gate.py)."""
    alpha, p_b, margin = 0.05, 0.05, 0.01
    _, (delta0, v0), _ = _simulate_two_arm_proportions(seed=97, p_b=p_b, p_c=p_b + margin,
                                                       null_diff=margin, batch=400)
    tau2 = tau2_for_radius(rollback_distance(margin, math.nan, 1.0), alpha)
    r0 = _radius_of(one_sided_radius, v0, tau2, alpha)
    with np.errstate(invalid="ignore"):
        # Better-positive: −(p_c − p_b); rollback when its upper bound is below −margin.
        rate = _ever(np.nan_to_num(-delta0 + r0 < -margin))
    print(f"lower-is-better crossing rate at +margin: {rate:.4f}")
    assert rate <= _limit(alpha)


# --- quantile exceedance: two binomials equal under the rollback null --------------------


def test_pooled_exceedance_is_anytime_valid():
    """Exceedances P_b(X > t) = P_c(X > t(1 + m)) = 1 − q at the null boundary: the rollback
    statistic with the pooled variance is rarely ever below 0. The threshold is held fixed
    here (the gate's plug-in quantile and conservative snapping are not simulated)."""
    alpha, e, requests = 0.05, 0.05, 400
    (_, _), (delta0, v0), _ = _simulate_two_arm_proportions(seed=96, p_b=e, p_c=e,
                                                            batch=requests)
    # The statistic is baseline − candidate; the simulation's δ₀ is candidate − baseline.
    stat = -delta0
    # The gate's tuning for a p95 guardrail with a 10% margin on lognormal latency
    # (log-sd 0.35): the margin in exceedance points, then 0.75 of it (detect 1.75×).
    scale = e - float(ndtr(-(1.6448536 + math.log(1.1) / 0.35)))
    tau2 = tau2_for_radius(rollback_distance(scale, math.nan, 1.0), alpha)
    r0 = _radius_of(one_sided_radius, v0, tau2, alpha)
    with np.errstate(invalid="ignore"):
        rate = _ever(np.nan_to_num(stat + r0 < 0))
    print(f"pooled exceedance crossing rate: {rate:.4f} (limit {_limit(alpha):.4f})")
    assert rate <= _limit(alpha)


# --- means: why the rollback test keeps Welch's variance ---------------------------------


def _simulate_means(seed: int, sd_b: float, sd_c: float, requests: int = 400):
    """Pooled (δ, v_Welch, v_pooled) per path and look for equal means (the rollback null
    of a critical mean KPI), from exact Gaussian sufficient statistics per look."""
    rng = np.random.default_rng(seed)
    looks = sum(k for _, k in STAGES)
    welch, pooled = [], []
    start = 0
    for share, k in STAGES:
        stats = []
        for sd, arm_share in ((sd_b, 1 - share), (sd_c, share)):
            n = rng.binomial(requests, arm_share, (PATHS, k)).astype(float)
            sums = rng.standard_normal((PATHS, k)) * sd * np.sqrt(n)
            within = sd * sd * rng.chisquare(np.maximum(n - 1, 1)) * (n > 1)
            cn, cs = np.cumsum(n, axis=1), np.cumsum(sums, axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                cq = np.cumsum(within + np.where(n > 0, sums * sums / n, 0.0), axis=1)
                mean = cs / cn
                var = (cq - cn * mean * mean) / (cn - 1)
            stats.append((cn, mean, var))
        (nb, mb, vb), (nc, mc, vc) = stats
        ok = (nb >= 30) & (nc >= 30)  # gate/strata.py MIN_UNITS
        delta = mc - mb
        with np.errstate(invalid="ignore"):
            sp = ((nb - 1) * vb + (nc - 1) * vc) / (nb + nc - 2)
        welch.append((start, delta, vb / nb + vc / nc, ok))
        pooled.append((start, delta, sp * (1 / nb + 1 / nc), ok))
        start += k
    return _pool_strata(welch, looks), _pool_strata(pooled, looks)


def test_welch_stays_valid_when_the_spread_grows_and_pooled_does_not():
    """Equal means, the candidate's log-latency 1.4× as spread (a heavier tail at the same
    geometric mean: inside the rollback null). With 5% of the traffic the candidate's
    variance dominates the difference; the pooled (equal-spread) variance mostly reflects
    the baseline's and is too small, so its false-rollback rate exceeds α. That is why
    means keep Welch's variance for the rollback test."""
    alpha, sd = 0.05, 0.35
    (delta, v_welch), (delta_p, v_pooled) = _simulate_means(seed=95, sd_b=sd, sd_c=1.4 * sd)
    tau2 = tau2_for_radius(rollback_distance(math.log(1.1), math.nan, 0.0), alpha)
    with np.errstate(invalid="ignore"):
        welch = _ever(np.nan_to_num(
            delta + _radius_of(one_sided_radius, v_welch, tau2, alpha) < 0))
        pooled = _ever(np.nan_to_num(
            delta_p + _radius_of(one_sided_radius, v_pooled, tau2, alpha) < 0))
    print(f"means, candidate spread ×1.4: Welch {welch:.4f}, pooled {pooled:.4f} "
          f"(limit {_limit(alpha):.4f})")
    assert welch <= _limit(alpha)
    assert pooled > _limit(alpha)
    # Under a pure location shift (equal spread) the pooled variance would be valid: the
    # failure above is the spread, not the arithmetic.
    (_, _), (delta_p, v_pooled) = _simulate_means(seed=94, sd_b=sd, sd_c=sd)
    with np.errstate(invalid="ignore"):
        equal = _ever(np.nan_to_num(
            delta_p + _radius_of(one_sided_radius, v_pooled, tau2, alpha) < 0))
    print(f"means, equal spread: pooled {equal:.4f}")
    assert equal <= _limit(alpha)
