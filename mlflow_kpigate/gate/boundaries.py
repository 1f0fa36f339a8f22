"""Anytime-valid confidence-sequence radii for an asymptotically normal estimate.

Everything here is expressed for an estimate ``d`` of a difference (or of one arm's value)
whose variance is ``v`` (the variance *of the estimate*, which shrinks like 1/n).

Two boundaries, both mixtures of Gaussian likelihood ratios (mixture SPRT; Johari, Pekelis
& Walsh 2022; normal-mixture confidence sequences, Howard, Ramdas, McAuliffe & Sekhon 2021):

* two-sided, mixing the effect over N(0, τ²) (closed form)::

      r₂(v) = sqrt( v (v + τ²) / τ² · [ ln((v + τ²)/v) + 2 ln(1/α) ] )

* one-sided, mixing over the half-normal on one side, which gives a tighter bound for the
  questions the gate asks ("confidently worse", "confidently non-inferior"). The mixture
  martingale is ``2 sqrt(v/(v+τ²)) · exp(z²/2) · Φ(z)`` with
  ``z = r τ / sqrt(v (v+τ²))``; the radius solves it equal to 1/α, i.e.
  ``z²/2 + ln Φ(z) = ln(1/(2α)) + ½ ln(1 + τ²/v)``, a monotone convex equation solved by
  Newton's method from a start above the root (:func:`_solve_z`).

By Ville's inequality the probability that the true value *ever* leaves
``d ± r(v)`` (two-sided) or ``(-∞, d + r(v)]`` (one-sided) over an unbounded sequence of
looks is at most α, provided the standardised estimate behaves like a Brownian motion in
information time 1/v (exact for Gaussian data, asymptotic otherwise; Waudby-Smith et al.
2024 for the asymptotic confidence-sequence version with plug-in variances).

τ² sets where the boundary is tightest. Scaling ``v`` and ``τ²`` together scales the radius
by the same square root, so for a target radius R the best τ² is ``κ(α) R²`` for a constant
κ(α) found once by a one-dimensional search: :func:`tau2_for_radius`.

Speed: the gate computes a radius per test per evaluation (about 1,200 for 20 KPIs of which
6 are fairness indices over 10 segments), so the one-sided solve is a few lines of ``math``
(``erfc``, ``log1p``, ``exp``): about 1 µs, where the earlier bracketing root-finder
(``scipy.optimize.brentq``) took over 10 µs. The inverse, :func:`variance_for_radius`, is
Newton's method in ln v with the slope in closed form, not a root-finder around the
radius's root-finder. Both agree with the earlier solvers to 1e-9 relative or better
(tests/test_boundaries.py keeps the earlier solvers as the reference;
benchmarks/gate_eval.py times both). κ(α) keeps its search unchanged (cached per α): its
maximum is flat, so a different inner solver would move its argmax by up to 3e-7.
"""

from __future__ import annotations

import math
from functools import lru_cache

from scipy.optimize import brentq, minimize_scalar
from scipy.special import log_ndtr


def two_sided_radius(v: float, tau2: float, alpha: float) -> float:
    """Half-width of the two-sided normal-mixture confidence sequence at level ``alpha``."""
    if not (v > 0 and math.isfinite(v)):
        return math.inf
    return math.sqrt(v * (v + tau2) / tau2 * (math.log((v + tau2) / v) + 2 * math.log(1 / alpha)))


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_MAX_STEPS = 200
# A Newton step of at most this relative size leaves an error below 5e-15 relative (below).
_LAST_STEP = 1e-7
_LOG_V_MIN = -60.0  # variance_for_radius searches ln v above this (and reports 0 below)


def _log_cdf(z: float) -> float:
    """ln Φ(z), accurate in both tails (``erfc`` keeps the small tail probability)."""
    if z > 0:
        return math.log1p(-0.5 * math.erfc(z * _SQRT_HALF))
    if z > -30:
        return math.log(0.5 * math.erfc(-z * _SQRT_HALF))
    return float(log_ndtr(z))


def _solve_z(c: float) -> tuple[float, float]:
    """Solve ``f(z) = z²/2 + ln Φ(z) = c``; returns (z, f'(z)).

    f is increasing and strictly convex (f' = z + φ/Φ > 0 and f'' = 1 − (φ/Φ)(z + φ/Φ) lies
    in (0, 1): one minus the variance of a truncated normal). For c > 0 the root lies above
    z₀ = sqrt(2c), where f < 0, and one fixed-point step z₁ = sqrt(2(c − ln Φ(z₀))) lands
    on or above it; Newton steps from above a root of a convex increasing function then
    decrease monotonically onto it, quadratically (for the gate's levels z₁ is mostly within
    1e-7 of the root and one step suffices). [z₀, z₁] brackets the root: a step that would
    leave the bracket (only possible by rounding) bisects instead. With f' ≥ z and
    f'' ≤ 1 the error after a step of size s is at most s²/(2z), so a step below
    ``_LAST_STEP``·z ends the iteration with the error below 5e-15·z.
    """
    if not c < math.inf:  # NaN, or inf (a variance so small that τ²/v overflows)
        return c, c
    if not c > 0:
        return _solve_z_bracketed(c)
    lo = math.sqrt(2.0 * c)
    hi = z = math.sqrt(2.0 * (c - math.log1p(-0.5 * math.erfc(lo * _SQRT_HALF))))
    slope = z
    for _ in range(_MAX_STEPS):
        log_cdf = math.log1p(-0.5 * math.erfc(z * _SQRT_HALF))
        f = 0.5 * z * z + log_cdf - c
        slope = z + _INV_SQRT_2PI * math.exp(-0.5 * z * z - log_cdf)
        step = f / slope
        if abs(step) <= _LAST_STEP * z:
            return z - step, slope
        if f > 0:
            hi = z
        else:
            lo = z
        z -= step
        if not lo < z < hi:
            z = 0.5 * (lo + hi)
    return z, slope


def _solve_z_bracketed(c: float) -> tuple[float, float]:
    """:func:`_solve_z` for c ≤ 0 (only a level α ≥ ½ gives one): the root is below 1
    (f(1) > 0.32); bracket it by doubling downwards, then Newton from the upper end."""
    lo, hi = -1.0, 1.0
    while _log_cdf(lo) + 0.5 * lo * lo > c:
        lo *= 2
    z, slope = hi, 1.0
    for _ in range(_MAX_STEPS):
        log_cdf = _log_cdf(z)
        f = 0.5 * z * z + log_cdf - c
        slope = z + _INV_SQRT_2PI * math.exp(-0.5 * z * z - log_cdf)
        step = f / slope
        if abs(step) <= 1e-13 * max(abs(z), 1.0):
            return z - step, slope
        if f > 0:
            hi = z
        else:
            lo = z
        z -= step
        if not lo < z < hi:
            z = 0.5 * (lo + hi)
    return z, slope


def one_sided_radius(v: float, tau2: float, alpha: float) -> float:
    """Radius of the one-sided half-normal-mixture confidence sequence at level ``alpha``.

    ``d + r`` is an anytime-valid upper bound (or ``d − r`` a lower bound) at level alpha.
    """
    if not (v > 0 and math.isfinite(v)):
        return math.inf
    c = math.log(1 / (2 * alpha)) + 0.5 * math.log1p(tau2 / v)
    z = _solve_z(c)[0]
    return z * math.sqrt(v * (v + tau2)) / math.sqrt(tau2)


@lru_cache(maxsize=256)
def _kappa(alpha: float, one_sided: bool) -> float:
    """κ(α): with τ² = κ R², the variance at which the radius reaches R is the largest."""
    radius = one_sided_radius if one_sided else two_sided_radius

    # For R = 1: find, for each log κ, the variance v* with radius(v*) = 1; maximise v*.
    def neg_vstar(log_kappa: float) -> float:
        tau2 = math.exp(log_kappa)
        vstar = brentq(lambda lv: radius(math.exp(lv), tau2, alpha) - 1.0, -30.0, 5.0)
        return -vstar

    res = minimize_scalar(neg_vstar, bounds=(-3.0, 3.0), method="bounded",
                          options={"xatol": 1e-6})
    return math.exp(float(res.x))


def tau2_for_radius(radius: float, alpha: float, one_sided: bool = True) -> float:
    """Mixture variance τ² that makes the boundary tightest where its radius equals ``radius``.

    The gate uses the KPI's margin as ``radius``: the boundary is then most efficient at
    exactly the precision at which a promote/rollback decision becomes possible.
    """
    if not radius > 0:
        raise ValueError("radius must be > 0")
    return _kappa(round(alpha, 12), one_sided) * radius * radius


def variance_for_radius(radius: float, tau2: float, alpha: float, one_sided: bool = True
                        ) -> float:
    """Largest estimate variance at which the boundary's radius is at most ``radius``.

    0 when even a variance of e⁻⁶⁰ gives a wider radius. One-sided: Newton's method on
    ln r(ln v), with the slope in closed form (below); two-sided: the closed form's root.
    """
    if not one_sided:
        lo, hi = _LOG_V_MIN, math.log(max(radius * radius, 1e-300)) + 5.0
        if two_sided_radius(math.exp(lo), tau2, alpha) > radius:
            return 0.0
        return math.exp(brentq(lambda lv: two_sided_radius(math.exp(lv), tau2, alpha) - radius,
                               lo, hi, xtol=1e-10))
    if not one_sided_radius(math.exp(_LOG_V_MIN), tau2, alpha) <= radius:
        return 0.0
    return _one_sided_variance(radius, tau2, alpha)


def _one_sided_variance(radius: float, tau2: float, alpha: float) -> float:
    """The variance at which the one-sided radius equals ``radius`` (it is reached above e⁻⁶⁰).

    ln r = ln z + ½ ln v + ½ ln(v + τ²) − ½ ln τ² with f(z) = c = ln(1/(2α)) + ½ ln(1 + τ²/v),
    so d ln r / d ln v = ½ + ½ v/(v + τ²) − τ²/(2 (v + τ²) z f'(z)): between about ½ and 1,
    and nearly constant, so Newton's method in ln v converges in a few steps from the
    variance at which the radius would be reached with z held at its value for v = τ².
    Each step is one (fast) solve for z; a step outside the bracket [ln e⁻⁶⁰, ln R² + 5]
    (the radius exceeds R at R²e⁵ for any α ≤ ½) bisects instead. The slope changes with
    ln v by less than about ⅛ (mostly through v/(v + τ²), whose derivative is at most ¼),
    so a step below 1e-7 leaves an error below 1e-14: at most 6 solves for z (about 15
    evaluations of ln Φ), where the nested root-finders took about 150 evaluations.
    """
    log_half_alpha = math.log(1 / (2 * alpha))
    target = math.log(radius)
    z_mid = _solve_z(log_half_alpha + 0.5 * math.log(2.0))[0]
    scaled = radius / z_mid  # v (v + τ²) / τ² = (R / z)², solved for v
    lo, hi = _LOG_V_MIN, math.log(max(radius * radius, 1e-300)) + 5.0
    u = math.log(2 * scaled * scaled / (1 + math.sqrt(1 + 4 * scaled * scaled / tau2)))
    if not lo < u < hi:
        u = 0.5 * (lo + hi)
    for _ in range(_MAX_STEPS):
        v = math.exp(u)
        z, slope_z = _solve_z(log_half_alpha + 0.5 * math.log1p(tau2 / v))
        gap = math.log(z) + 0.5 * math.log(v) + 0.5 * math.log(v + tau2) \
            - 0.5 * math.log(tau2) - target
        share = v / (v + tau2)
        step = gap / (0.5 + 0.5 * share - 0.5 * (1 - share) / (z * slope_z))
        if abs(step) <= 1e-7:
            return math.exp(u - step)
        if gap > 0:
            hi = u
        else:
            lo = u
        u -= step
        if not lo < u < hi:
            u = 0.5 * (lo + hi)
    return math.exp(u)
