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
  ``z²/2 + ln Φ(z) = ln(1/(2α)) + ½ ln(1 + τ²/v)``, a monotone equation solved by bisection
  on Newton steps.

By Ville's inequality the probability that the true value *ever* leaves
``d ± r(v)`` (two-sided) or ``(-∞, d + r(v)]`` (one-sided) over an unbounded sequence of
looks is at most α, provided the standardised estimate behaves like a Brownian motion in
information time 1/v (exact for Gaussian data, asymptotic otherwise; Waudby-Smith et al.
2024 for the asymptotic confidence-sequence version with plug-in variances).

τ² sets where the boundary is tightest. Scaling ``v`` and ``τ²`` together scales the radius
by the same square root, so for a target radius R the best τ² is ``κ(α) R²`` for a constant
κ(α) found once by a one-dimensional search: :func:`tau2_for_radius`.
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


def _z_one_sided(c: float) -> float:
    """Solve ``z²/2 + ln Φ(z) = c`` for z (the left side increases strictly in z)."""

    def f(z: float) -> float:
        return 0.5 * z * z + float(log_ndtr(z)) - c

    hi = math.sqrt(2 * max(c, 0.0)) + 2.0
    while f(hi) < 0:
        hi *= 2
    lo = -1.0
    while f(lo) > 0:
        lo *= 2
    return brentq(f, lo, hi, xtol=1e-12)


def one_sided_radius(v: float, tau2: float, alpha: float) -> float:
    """Radius of the one-sided half-normal-mixture confidence sequence at level ``alpha``.

    ``d + r`` is an anytime-valid upper bound (or ``d − r`` a lower bound) at level alpha.
    """
    if not (v > 0 and math.isfinite(v)):
        return math.inf
    c = math.log(1 / (2 * alpha)) + 0.5 * math.log1p(tau2 / v)
    z = _z_one_sided(c)
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
    """Largest estimate variance at which the boundary's radius is at most ``radius``."""
    fn = one_sided_radius if one_sided else two_sided_radius
    lo, hi = -60.0, math.log(max(radius * radius, 1e-300)) + 5.0
    if fn(math.exp(lo), tau2, alpha) > radius:
        return 0.0
    return math.exp(brentq(lambda lv: fn(math.exp(lv), tau2, alpha) - radius, lo, hi,
                           xtol=1e-10))
