"""The paired rollback test over a whole rollout: shadow first, then split traffic.

Labelled positives arrive in batches; in the shadow stage both roles judge every one of
them (their hits correlated within a request), in the canary stages each goes to one role.
The rollback statistic is computed per path and look exactly as the engine computes it
(checked against :func:`~mlflow_kpigate.gate.estimators.measure` on the same counts):
counts adjusted towards the pooled proportion, the null proportions from all strata,
the paired stratum's arms correlated by ρ of its ½-adjusted 2×2 table, strata pooled by
inverse variance. At the null boundary the anytime-valid bound must be crossed on at most
α + 3 Monte Carlo SE of the paths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius
from mlflow_kpigate.gate.estimators import Strata, measure
from mlflow_kpigate.gate.strata import rollback_distance
from mlflow_kpigate.kpis import AggregateSpec, PairedAggregate, RoleAggregate
from mlflow_kpigate.policy import policy_from_dict

PATHS = 4000
P_EQUAL = 0.876
MARGIN = 0.02
BATCH = 40  # labelled positives per look
# (candidate share or None for shadow, looks in the stage)
STAGES = ((None, 150), (0.25, 150), (0.5, 200))
RHO = 0.8  # correlation of the two roles' latent scores (hits correlate less)


def _limit(alpha: float) -> float:
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / PATHS)


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


def joint_hits(p_b: float, p_c: float, rho: float) -> np.ndarray:
    """P(baseline hit, candidate hit) cells [00, 01, 10, 11] of two thresholded normals
    whose latent values correlate at ``rho`` (each hit with its role's probability)."""
    from scipy.stats import multivariate_normal, norm
    zb, zc = norm.ppf(p_b), norm.ppf(p_c)
    both = multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([zb, zc])
    p11 = float(both)
    return np.array([1 - p_b - p_c + p11, p_c - p11, p_b - p11, p11])


def simulate(seed: int, p_b: float, p_c: float, null_diff: float, rho: float = RHO):
    """Per path and look: the rollback test's pooled (δ₀, v₀), and each stage's cumulative
    counts (a 2×2 table for the shadow stage, (x_b, n_b, x_c, n_c) for the others)."""
    rng = np.random.default_rng(seed)
    looks = sum(k for _, k in STAGES)
    strata, counts = [], []
    start = 0
    for share, k in STAGES:
        if share is None:
            cells = rng.multinomial(BATCH, joint_hits(p_b, p_c, rho), (PATHS, k))
            table = np.cumsum(cells, axis=1).astype(float)  # [..., (00, 01, 10, 11)]
            counts.append(table)
            n = table.sum(axis=2)
            xb, xc = table[..., 2] + table[..., 3], table[..., 1] + table[..., 3]
            nb = nc = n
            # ρ of the two hit indicators on the ½-adjusted table (the phi coefficient).
            adj = table + 0.5
            m = adj.sum(axis=2)
            qb, qc = (adj[..., 2] + adj[..., 3]) / m, (adj[..., 1] + adj[..., 3]) / m
            rho_hat = (adj[..., 3] / m - qb * qc) / np.sqrt(qb * (1 - qb) * qc * (1 - qc))
        else:
            snc = rng.binomial(BATCH, share, (PATHS, k))
            snb = BATCH - snc
            sxc, sxb = rng.binomial(snc, p_c), rng.binomial(snb, p_b)
            xb, nb, xc, nc = (np.cumsum(a, axis=1).astype(float) for a in (sxb, snb, sxc, snc))
            counts.append((xb, nb, xc, nc))
            rho_hat = np.zeros_like(xb)
        ok = (nb > 0) & (nc > 0)
        pbar = (xc + xb + 1) / (nc + nb + 2)
        full = []
        for a in (xc + 2 * pbar, nc + 2, xb + 2 * pbar, nb + 2, rho_hat):
            f = np.zeros((PATHS, looks))
            f[:, start:start + k] = np.where(ok, a, 0.0)
            f[:, start + k:] = f[:, start + k - 1:start + k]
            full.append(f)
        strata.append(full)
        start += k
    tot = [sum(s[i] for s in strata) for i in range(4)]
    num = np.zeros((PATHS, looks))
    info = np.zeros((PATHS, looks))
    with np.errstate(divide="ignore", invalid="ignore"):
        qc, qb = _fm(tot[0], tot[1], tot[2], tot[3], null_diff)
        for ac, an_c, ab, an_b, r in strata:
            live = an_c > 0
            vc, vb = qc * (1 - qc) / an_c, qb * (1 - qb) / an_b
            var = np.maximum(vc + vb - 2 * r * np.sqrt(vc * vb), 0.0)
            w = np.where(live, 1.0 / var, 0.0)
            num += np.where(live, w * (ac / an_c - ab / an_b), 0.0)
            info += w
        return (np.where(info > 0, num / info, np.nan),
                np.where(info > 0, 1.0 / info, np.nan)), counts


@pytest.fixture(scope="module")
def critical_paths():
    return simulate(7, P_EQUAL, P_EQUAL, 0.0)


@pytest.fixture(scope="module")
def guardrail_paths():
    return simulate(8, P_EQUAL, P_EQUAL - MARGIN, -MARGIN)


def _policy(role: str):
    return policy_from_dict({
        "stages": [{"shadow": True}, {"traffic": 25}, {"traffic": 50}, {"traffic": 100}],
        "kpis": [{"name": "recall", "kind": "proportion", "metric": "recall",
                  "margin": MARGIN, "role": role}]})


def _labelled(x: int, n: int) -> RoleAggregate:
    agg = RoleAggregate(AggregateSpec())
    agg.add_labelled(np.ones(n, dtype=bool), np.arange(n) < x)
    return agg


def _samples(counts, path: int, look: int) -> list[StageSample]:
    out, start = [], 0
    for index, ((_, k), c) in enumerate(zip(STAGES, counts, strict=True)):
        if look < start:
            break
        j = min(look - start, k - 1)
        if index == 0:
            cells = c[path, j].astype(int)  # 00, 01, 10, 11
            paired = PairedAggregate()
            paired.outcomes[1] = [[cells[0], cells[1]], [cells[2], cells[3]]]
            xb, xc, n = cells[2] + cells[3], cells[1] + cells[3], int(cells.sum())
            out.append(StageSample(0, _labelled(xb, n), _labelled(xc, n), paired))
        else:
            xb, nb, xc, nc = (int(a[path, j]) for a in c)
            out.append(StageSample(index, _labelled(xb, nb), _labelled(xc, nc)))
        start += k
    return out


@pytest.mark.parametrize("role", ["critical", "guardrail"])
def test_vectorised_arithmetic_matches_the_engine(critical_paths, guardrail_paths, role):
    (delta0, v0), counts = critical_paths if role == "critical" else guardrail_paths
    policy = _policy(role)
    kpi = policy.kpi("recall")
    rng = np.random.default_rng(3)
    for path in rng.integers(0, PATHS, 3):
        for look in (0, 2, 149, 150, 320, 499):
            meas = measure(kpi, Strata(_samples(counts, path, look)),
                           0.0 if role == "critical" else 1.0, 1.0)
            roll = meas.rollback_tests[0]
            assert roll.delta == pytest.approx(delta0[path, look], rel=1e-9, abs=1e-12)
            assert roll.variance == pytest.approx(v0[path, look], rel=1e-9)


def _radius_of(v: np.ndarray, tau2: float, alpha: float) -> np.ndarray:
    """The library's one-sided radius at every entry of ``v`` (interpolated in log v on a
    fine grid, checked against the exact function first; see test_boundaries.py)."""
    finite = v[np.isfinite(v) & (v > 0)]
    lo, hi = math.log(finite.min()) - 0.01, math.log(finite.max()) + 0.01
    grid = np.linspace(lo, hi, 3000)
    log_r = np.log([one_sided_radius(math.exp(g), tau2, alpha) for g in grid])
    probe = np.exp(np.linspace(lo + 0.003, hi - 0.003, 37))
    approx = np.exp(np.interp(np.log(probe), grid, log_r))
    exact = np.array([one_sided_radius(p, tau2, alpha) for p in probe])
    assert np.max(np.abs(approx / exact - 1)) < 1e-5
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.interp(np.log(v), grid, log_r))


def _crossing(paths, threshold: float, m_rollback: float, alpha: float = 0.05
              ) -> tuple[float, float]:
    (delta0, v0), _ = paths
    tau2 = tau2_for_radius(rollback_distance(MARGIN, math.nan, m_rollback), alpha)
    radius = _radius_of(v0, tau2, alpha)
    with np.errstate(invalid="ignore"):
        rate = float(np.mean(np.any(np.nan_to_num(delta0 + radius < threshold), axis=1)))
        naive = float(np.mean(np.any(np.nan_to_num(delta0 + 1.645 * np.sqrt(v0) < threshold),
                                     axis=1)))
    return rate, naive


def test_paired_critical_rollback_is_anytime_valid(critical_paths):
    """Equal recall, shadow stage paired: the critical rollback bound (Δ = 0) is crossed on
    at most α + 3 SE of the paths; a fixed z re-checked at every look is not."""
    rate, naive = _crossing(critical_paths, 0.0, 0.0)
    print(f"paired critical: {rate:.4f} of {PATHS} paths (limit {_limit(0.05):.4f}, "
          f"SE {math.sqrt(0.05 * 0.95 / PATHS):.4f}); naive z {naive:.4f}")
    assert rate <= _limit(0.05)
    assert naive > 4 * _limit(0.05)


def test_paired_guardrail_rollback_is_anytime_valid_at_the_margin(guardrail_paths):
    """The candidate exactly one margin worse: the guardrail's bound (restricted null
    proportions, paired shadow stratum) is crossed below −margin on at most α + 3 SE."""
    rate, naive = _crossing(guardrail_paths, -MARGIN, 1.0)
    print(f"paired guardrail at −margin: {rate:.4f} (limit {_limit(0.05):.4f}); "
          f"naive z {naive:.4f}")
    assert rate <= _limit(0.05)
    assert naive > 4 * _limit(0.05)


# --- coverage of the paired confidence sequence (the promotion side's estimate) ------------

COVER_LOOKS = 200
WORSE = 0.05  # the candidate's true recall is 0.826 against 0.876


def _agresti_caffo(x, n):
    p = (x + 1.0) / (n + 2.0)
    return p, p * (1.0 - p) / (n + 2.0)


@pytest.fixture(scope="module")
def shadow_paths():
    """A shadow stratum growing by BATCH labelled positives per look, both roles' hits
    correlated (latent ρ = 0.8), the candidate 5 points worse: per path and look the
    cumulative 2×2 table and the promotion test's estimate with its paired and its
    independent variance, as the engine computes them."""
    rng = np.random.default_rng(11)
    cells = rng.multinomial(BATCH, joint_hits(P_EQUAL, P_EQUAL - WORSE, RHO),
                            (PATHS, COVER_LOOKS))
    table = np.cumsum(cells, axis=1).astype(float)  # 00, 01, 10, 11
    n = table.sum(axis=2)
    pb, vb = _agresti_caffo(table[..., 2] + table[..., 3], n)
    pc, vc = _agresti_caffo(table[..., 1] + table[..., 3], n)
    adj = table + 0.5
    m = adj.sum(axis=2)
    qb, qc = (adj[..., 2] + adj[..., 3]) / m, (adj[..., 1] + adj[..., 3]) / m
    rho = (adj[..., 3] / m - qb * qc) / np.sqrt(qb * (1 - qb) * qc * (1 - qc))
    paired = np.maximum(vc + vb - 2 * rho * np.sqrt(vc * vb), 0.0)
    return table, pc - pb, paired, vc + vb


def test_coverage_arithmetic_matches_the_engine(shadow_paths):
    table, delta, paired, independent = shadow_paths
    kpi = _policy("critical").kpi("recall")
    for path, look in ((0, 0), (5, 17), (99, COVER_LOOKS - 1)):
        cells = table[path, look].astype(int)
        pa = PairedAggregate()
        pa.outcomes[1] = [[cells[0], cells[1]], [cells[2], cells[3]]]
        xb, xc, n = cells[2] + cells[3], cells[1] + cells[3], int(cells.sum())
        sample = StageSample(0, _labelled(xb, n), _labelled(xc, n), pa)
        for s, var in ((sample, paired), (StageSample(0, sample.baseline, sample.candidate),
                                          independent)):
            test = measure(kpi, Strata([s]), 0.0, 1.0).promote_tests[0]
            assert test.delta == pytest.approx(delta[path, look], rel=1e-12)
            assert test.variance == pytest.approx(var[path, look], rel=1e-9)


def test_paired_confidence_sequence_covers_and_is_narrower(shadow_paths):
    """The true difference (−5 points) leaves the paired sequence's lower or upper bound
    (each one-sided at α = 5%, τ² tuned at the 2-point margin as for promotion) at some
    look on at most α + 3 SE of the paths; a fixed 1.645 z-bound re-checked at every look
    does not, so the check can fail. The paired bounds are about √(1 − φ) as wide as the
    independent ones (φ ≈ 0.53: the correlation of the two roles' hits at latent ρ = 0.8)."""
    _, delta, paired, independent = shadow_paths
    tau2 = tau2_for_radius(MARGIN, 0.05)
    truth = -WORSE
    radius = _radius_of(paired, tau2, 0.05)
    below = float(np.mean(np.any(delta - radius > truth, axis=1)))
    above = float(np.mean(np.any(delta + radius < truth, axis=1)))
    z_below = float(np.mean(np.any(delta - 1.645 * np.sqrt(paired) > truth, axis=1)))
    radius_i = _radius_of(independent, tau2, 0.05)
    below_i = float(np.mean(np.any(delta - radius_i > truth, axis=1)))
    above_i = float(np.mean(np.any(delta + radius_i < truth, axis=1)))
    width = float(np.median(radius[:, -1] / radius_i[:, -1]))
    var_ratio = float(np.median(paired[:, -1] / independent[:, -1]))
    print(f"paired sequence misses Δ below {below:.4f}, above {above:.4f} (limit "
          f"{_limit(0.05):.4f}); independent {below_i:.4f}, {above_i:.4f}; fixed z "
          f"{z_below:.4f}; width paired/independent {width:.3f}, variance {var_ratio:.3f}")
    assert below <= _limit(0.05)
    assert above <= _limit(0.05)
    assert z_below > 4 * _limit(0.05)
    assert width < 0.8
    # Var(hit_c − hit_b) / (Var hit_c + Var hit_b) of the joint law: 0.477.
    _, p01, p10, p11 = joint_hits(P_EQUAL, P_EQUAL - WORSE, RHO)
    pb, pc = p10 + p11, p01 + p11
    expected = (p10 + p01 - (p10 - p01) ** 2) / (pb * (1 - pb) + pc * (1 - pc))
    assert var_ratio == pytest.approx(expected, abs=0.02)
