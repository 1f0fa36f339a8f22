"""Variances of a difference of two binomial proportions computed under the rollback null.

The rollback test rejects H0: Δ ≥ threshold. Its statistic is a difference of proportions;
computing the statistic's variance *at the null boundary* (a score-type test) instead of
with the unrestricted plug-in gives a smaller variance exactly when it matters: a worse
candidate usually has the larger p(1 − p) (recall 0.876 → 0.826 raises it by a third), and
the unrestricted plug-in carries that into the variance and delays the rollback.

* :func:`pooled_variance` — H0 boundary Δ = 0 (critical KPIs, quantile exceedance): both
  arms share one proportion, estimated by pooling, p̄(1 − p̄)(1/n_c + 1/n_b).
* :func:`restricted_proportions` — H0 boundary p_c − p_b = d ≠ 0 (guardrails at −margin):
  the restricted maximum-likelihood proportions of Farrington & Manning (Stat. Med. 1990,
  after Miettinen & Nurminen 1985), the middle root of a cubic, in closed form;
  :func:`restricted_variance` turns them into the variance.
* :func:`stratified_null_variances` — the variances of every stratum's difference with the
  null proportions estimated from all strata together (each stratum keeps its own arm
  sizes). A stratum's own estimate would be ~0 for a rare event it has not seen yet (no
  errors in a 5% stage), and its inverse-variance weight would then swamp every other
  stratum, however bad the candidate is there.

Callers pass adjusted counts (:func:`adjust_toward_pooled`: two pseudo-trials per arm, as
Agresti–Caffo, but at the pooled proportion instead of ½), so every proportion is strictly
inside (0, 1) and the restricted maximum lies strictly inside its feasible interval; no
NaN can come out. Documented in docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

NAN = math.nan


def adjust_toward_pooled(xc: float, nc: float, xb: float, nb: float
                         ) -> tuple[float, float, float, float]:
    """Counts with two pseudo-trials per arm at the pooled proportion: (x̃_c, ñ_c, x̃_b, ñ_b).

    x̃ = x + 2p̄, ñ = n + 2 with p̄ = (x_c + x_b + 1)/(n_c + n_b + 2). Like Agresti–Caffo's
    +1/+2 it keeps every proportion and variance away from 0 (a rate with no events yet,
    an arm with two trials), but it shrinks both arms towards the *same* value, so the
    difference stays unbiased at Δ = 0. Agresti–Caffo shrinks towards ½, which for the
    usual KPIs (recall near 0.9, error and false-positive rates near 0) moves the small
    candidate arm towards "worse": with it, the null-variance rollback test of a recall of
    0.876 crossed on 4.85% of 4000 simulated equal-candidate rollouts at α = 5%, against
    3.58% with this adjustment (the Bernoulli simulation of tests/test_boundaries.py).
    """
    p = (xc + xb + 1.0) / (nc + nb + 2.0)
    return xc + 2.0 * p, nc + 2.0, xb + 2.0 * p, nb + 2.0


def pooled_variance(xc: float, nc: float, xb: float, nb: float) -> float:
    """p̄(1 − p̄)(1/n_c + 1/n_b) with p̄ = (x_c + x_b)/(n_c + n_b): the variance at Δ = 0."""
    if not (nc > 0 and nb > 0):
        return NAN
    p = (xc + xb) / (nc + nb)
    return p * (1.0 - p) * (1.0 / nc + 1.0 / nb)


def restricted_proportions(xc: float, nc: float, xb: float, nb: float, diff: float
                           ) -> tuple[float, float]:
    """Maximum-likelihood (p_c, p_b) of two binomials subject to p_c − p_b = ``diff``.

    Farrington & Manning (1990), closed form. With p̂₁ = x_c/n_c, p̂₂ = x_b/n_b and
    θ = n_b/n_c, the restricted p̃₁ is the root in the feasible interval of
    a p³ + b p² + c p + d = 0 (the score equation times the denominators), with::

        a = 1 + θ
        b = −(1 + θ + p̂₁ + θ p̂₂ + diff (θ + 2))
        c = diff² + diff (2 p̂₁ + θ + 1) + p̂₁ + θ p̂₂
        d = −p̂₁ diff (1 + diff)

    solved trigonometrically: v = b³/(3a)³ − bc/(6a²) + d/(2a),
    u = sign(v) √(b²/(3a)² − c/(3a)), w = (π + arccos(v/u³))/3,
    p̃₁ = 2u cos(w) − b/(3a), p̃₂ = p̃₁ − diff.

    Returns (NaN, NaN) when ``|diff| ≥ 1`` (no feasible pair) or without trials.
    """
    if not (nc > 0 and nb > 0) or not abs(diff) < 1:
        return NAN, NAN
    if diff == 0:
        p = (xc + xb) / (nc + nb)
        return p, p
    p1, p2 = xc / nc, xb / nb
    theta = nb / nc
    a = 1.0 + theta
    b = -(1.0 + theta + p1 + theta * p2 + diff * (theta + 2.0))
    c = diff * diff + diff * (2.0 * p1 + theta + 1.0) + p1 + theta * p2
    d = -p1 * diff * (1.0 + diff)
    v = b ** 3 / (3.0 * a) ** 3 - b * c / (6.0 * a * a) + d / (2.0 * a)
    disc = b * b / (3.0 * a) ** 2 - c / (3.0 * a)
    lo, hi = max(0.0, diff), min(1.0, 1.0 + diff)
    q1 = NAN
    if disc > 0:
        u = math.copysign(math.sqrt(disc), v)
        # Rounding can push |v/u³| a hair past 1 when two roots nearly coincide.
        w = (math.pi + math.acos(max(-1.0, min(1.0, v / u ** 3)))) / 3.0
        q1 = 2.0 * u * math.cos(w) - b / (3.0 * a)
    if not (math.isfinite(q1) and lo < q1 < hi):
        # Not expected with adjusted counts (the cubic then has three real roots and the
        # likelihood is −∞ at both ends of the feasible interval); the restricted
        # log-likelihood is strictly concave there, so its score has one root to bisect.
        q1 = _score_root(xc, nc, xb, nb, diff, lo, hi)
    return q1, q1 - diff


def _score_root(xc: float, nc: float, xb: float, nb: float, diff: float, lo: float,
                hi: float) -> float:
    """The root of the restricted score in (lo, hi), by bisection (decreasing in p)."""

    def score(q: float) -> float:
        return (xc / q - (nc - xc) / (1.0 - q) + xb / (q - diff)
                - (nb - xb) / (1.0 - q + diff))

    left, right = lo, hi
    for _ in range(200):
        mid = 0.5 * (left + right)
        if mid in (left, right):
            break
        if score(mid) > 0:
            left = mid
        else:
            right = mid
    return 0.5 * (left + right)


def stratified_null_variances(strata: Sequence[tuple[float, float, float, float]],
                              diff: float) -> list[float]:
    """Per-stratum Var(p̂_c − p̂_b) at proportions restricted to p_c − p_b = ``diff``.

    ``strata`` holds adjusted (x_c, n_c, x_b, n_b) per stratum. The restricted proportions
    (p̃_c, p̃_b) are those of the counts summed over the strata (a common null pair); the
    variance of stratum s is p̃_c(1 − p̃_c)/n_c,s + p̃_b(1 − p̃_b)/n_b,s. When the strata's
    true proportions differ, this over-states each stratum's variance rather than
    under-stating it (p(1 − p) is concave: the average of the strata's p(1 − p) is at most
    that of their average p). NaN for every stratum when there is no restricted estimate.
    """
    return [vc + vb for vc, vb in stratified_null_arm_variances(strata, diff)]


def stratified_null_arm_variances(strata: Sequence[tuple[float, float, float, float]],
                                  diff: float) -> list[tuple[float, float]]:
    """Per stratum, the two arms' variances (v_c, v_b) at the common restricted proportions.

    :func:`stratified_null_variances` adds them; a paired stratum combines them with the
    correlation of its two arms instead (:func:`mlflow_kpigate.gate.paired.correlated_variance`).
    """
    totals = [sum(col) for col in zip(*strata, strict=True)] if strata else [0.0] * 4
    qc, qb = restricted_proportions(totals[0], totals[1], totals[2], totals[3], diff)
    if not (math.isfinite(qc) and math.isfinite(qb)):
        return [(NAN, NAN)] * len(strata)
    return [(qc * (1.0 - qc) / nc, qb * (1.0 - qb) / nb) for _, nc, _, nb in strata]


def restricted_variance(xc: float, nc: float, xb: float, nb: float, diff: float) -> float:
    """Var(p̂_c − p̂_b) at the restricted proportions for p_c − p_b = ``diff``.

    p̃_c(1 − p̃_c)/n_c + p̃_b(1 − p̃_b)/n_b; at ``diff = 0`` this is :func:`pooled_variance`.
    NaN when there is no restricted estimate (the caller keeps its unrestricted variance).
    """
    qc, qb = restricted_proportions(xc, nc, xb, nb, diff)
    if not (math.isfinite(qc) and math.isfinite(qb)):
        return NAN
    return qc * (1.0 - qc) / nc + qb * (1.0 - qb) / nb
