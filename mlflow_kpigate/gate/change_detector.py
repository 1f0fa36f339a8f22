"""An anytime-valid change detector on Δ: a mixture Shiryaev–Roberts e-detector.

After promotion the candidate serves everything and the previous version scores a shadow
copy of every request (the bake). This module decides, from one KPI's tested statistic
recomputed at every evaluation, whether Δ (candidate − baseline, positive = candidate
better) has *moved* below the KPI's rollback threshold θ₀ — with a false-alarm guarantee
stated as an average run length (ARL), in evaluations. Pure: numbers in, numbers out.

**Increments.** The estimator of a KPI over the bake's stratum gives, at evaluation k, a
cumulative estimate δ̂ₖ with variance vₖ. In information time Iₖ = 1/vₖ the score
Sₖ = δ̂ₖ·Iₖ behaves like a Brownian motion with drift Δ (the same asymptotics the gate's
confidence sequences rest on, docs/statistics.md): its increment between two evaluations,
x = Sₖ − Sₖ₋₁ with ΔI = Iₖ − Iₖ₋₁, is approximately N(Δ·ΔI, ΔI) and independent of the
past, because it is made of requests served in between. Evaluations that bring no
information (ΔI ≤ 0: no new data, or a plug-in variance that grew) are skipped; the next
increment is taken from the last used evaluation, so the increments telescope and no data
is dropped. The first evaluation of a stream only sets the anchor (Sₖ, Iₖ, θ₀, scale).

**e-values.** For a drop of d below θ₀ the likelihood ratio of one increment is
``L(d) = exp(−d·(x − θ₀ΔI) − d²ΔI/2)``. For every Δ ≥ θ₀ (no regression),
E[L(d)] = exp(−d(Δ − θ₀)ΔI) ≤ 1, so L(d) is an e-value for the whole composite null. d
runs over a fixed grid of shifts (:data:`SHIFTS` × the KPI's margin on the tested scale,
as the gate's τ² is tuned to the margin); θ₀ and the scale are taken from the previous
evaluation, so they are known before the increment is seen.

**The e-detector** (Shin, Ramdas & Rinaldo 2023; Shiryaev–Roberts form): for each shift,
Rₙ = (Rₙ₋₁ + 1)·Lₙ, i.e. the sum over every possible change time j of the likelihood ratio
of the increments since j. The statistic is the mixture Mₙ = Σ_d w_d R_{n,d} with equal
weights. Each Rₙ − n (n: steps taken) is a supermartingale under the null, hence so is
Mₙ − n, and by optional stopping a detector that alarms when Mₙ ≥ A has
E[time to false alarm] ≥ A steps — the ARL guarantee — and, by Ville's inequality applied
to Mₙ − n + N, P(false alarm within N steps) ≤ N/A. A CUSUM (the maximum over j instead of
the sum) is never larger, so it alarms later; the sum has the guarantee stated directly.

**Several streams.** A rollout watches several KPIs (a fairness KPI one stream per segment
pair). Stream s of KPI j alarms at ``A·J / w_s`` where J is the number of watched KPIs and
w_s ≤ 1 a weight fixed in advance (1 for a KPI with one tested statistic; 6/(π²r²) for
the r-th pair of a fairness KPI, in order of first appearance, which sums to at most 1).
Any alarm implies Σⱼ (1/J) Σₛ wₛ M_s ≥ A, and that average keeps the supermartingale
property, so the union of all streams keeps ARL ≥ A.

**Statistics that are not sums of increments.** The increments above are independent only
if the score grows by the requests in between. A fairness test compares the candidate's
segment ratio with the baseline's index min/max, whose lowest and highest segments are
re-chosen from the data at every evaluation: when they switch, S jumps by far more than an
interval's information allows, and a detector on those jumps raised false alarms in 8 of
10 equal candidates' 24-hour bakes in the benchmark's simulation. Such statistics are
judged by :func:`sequence_stream` instead: the gate's one-sided normal-mixture confidence
sequence on the cumulative estimate, whose mixture martingale under Δ ≥ θ₀ is a
nonnegative supermartingale from 1, at level α = N·w/(A·J) for a bake of N evaluations.
By Ville's inequality a stream alarms during the bake with probability at most α, so the
bake's false-alarm bound N/A (below) holds with these streams too; a change late in a long
bake is diluted by the data before it, which is what this mode gives up.

Under a change to Δ = θ₀ − δ with information g per evaluation, log R for the nearest
shift d grows by about g(dδ − d²/2) per evaluation (g·δ²/2 when d = δ), so the expected
delay is about ``log(A·J·K) / (g·δ²/2)`` evaluations after the change, K the number of
shifts. :func:`expected_delay` gives that figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import log_ndtr

from mlflow_kpigate.gate.boundaries import tau2_for_radius

#: The drops below θ₀ the mixture is spread over, in units of the KPI's margin on the
#: tested scale (its ``scale``): from half the margin (slow, small regressions) to four
#: margins (fast, gross ones). Neighbours are a factor 2 apart, so every drop between
#: them is within √2 of a grid point, which costs at most ~18% of the ideal log-LR drift.
SHIFTS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


def log_likelihood_ratios(x: ArrayLike, d_info: ArrayLike, scale: ArrayLike,
                          shifts: tuple[float, ...] = SHIFTS) -> NDArray[np.float64]:
    """log L(d) of centred increments ``x`` (= ΔS − θ₀ΔI) for every shift; shape (..., K).

    Vectorised over any leading shape, so a simulation of many paths runs the very
    arithmetic the rollout runs.
    """
    d = np.multiply.outer(np.asarray(scale, dtype=float), np.asarray(shifts, dtype=float))
    xa = np.asarray(x, dtype=float)[..., None]
    ga = np.asarray(d_info, dtype=float)[..., None]
    return -d * xa - 0.5 * d * d * ga


def sr_update(log_r: ArrayLike, log_l: ArrayLike) -> NDArray[np.float64]:
    """One Shiryaev–Roberts step in logs: log((R + 1)·L); ``-inf`` is R = 0 (no step yet)."""
    return np.logaddexp(np.asarray(log_r, dtype=float), 0.0) + np.asarray(log_l, dtype=float)


def log_mixture(log_r: ArrayLike) -> NDArray[np.float64]:
    """log of the equal-weight mixture Σ_d R_d / K over the last axis."""
    a = np.asarray(log_r, dtype=float)
    top = np.max(a, axis=-1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):  # all -inf (no step yet) is log 0 = -inf
        total = np.log(np.sum(np.exp(a - safe), axis=-1)) + safe[..., 0]
    return np.asarray(total - math.log(a.shape[-1]), dtype=float)


def threshold_steps(arl_s: float, interval_s: float) -> float:
    """A: the ARL to a false alarm in evaluations (``arl / interval``, at least 1)."""
    if not (arl_s > 0 and interval_s > 0):
        raise ValueError("the ARL and the evaluation interval must be > 0")
    return max(arl_s / interval_s, 1.0)


def fairness_weight(rank: int) -> float:
    """w of the ``rank``-th stream (from 1) of a KPI with several tested statistics."""
    return 6.0 / (math.pi ** 2 * rank * rank)


def expected_delay(drop: float, info_per_step: float, log_threshold: float,
                   shifts: tuple[float, ...] = SHIFTS, scale: float = 1.0) -> float:
    """Evaluations after a change until log M reaches ``log_threshold`` (first order).

    ``drop`` is how far Δ fell below θ₀, ``info_per_step`` the information an evaluation
    adds (1 / the variance of one evaluation's Δ estimate); the mixture's 1/K weight is
    counted. ``inf`` when no shift gains on average.
    """
    best = max(info_per_step * (s * scale * drop - 0.5 * (s * scale) ** 2) for s in shifts)
    if best <= 0:
        return math.inf
    return (log_threshold + math.log(len(shifts))) / best


@dataclass(frozen=True)
class Stream:
    """The detector of one tested statistic: its anchor and its SR statistics (in logs).

    ``score``/``information`` are S and I at the last used evaluation, ``threshold`` (θ₀)
    and ``scale`` the values the next increment is judged with; ``log_r`` holds log R per
    shift (empty until the first increment), ``steps`` the increments taken.
    """

    label: str
    score: float
    information: float
    threshold: float
    scale: float
    log_r: tuple[float, ...] = ()
    steps: int = 0

    @property
    def log_statistic(self) -> float:
        """log M (the mixture); ``-inf`` before the first increment."""
        if not self.log_r:
            return -math.inf
        return float(log_mixture(np.array(self.log_r)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (floats are finite: ``log_r`` is empty until it has values)."""
        return {"label": self.label, "score": self.score, "information": self.information,
                "threshold": self.threshold, "scale": self.scale,
                "log_r": list(self.log_r), "steps": self.steps}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stream:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["label"]), float(data["score"]), float(data["information"]),
                   float(data["threshold"]), float(data["scale"]),
                   tuple(float(v) for v in data.get("log_r") or ()), int(data.get("steps", 0)))


def _usable(delta: float, variance: float, threshold: float, scale: float) -> bool:
    return all(math.isfinite(v) for v in (delta, variance, threshold, scale)) \
        and variance > 0 and scale > 0


def log_mixture_martingale(delta: float, variance: float, threshold: float, tau2: float
                           ) -> float:
    """log of the one-sided normal-mixture martingale against Δ ≥ ``threshold``.

    ``2·sqrt(v/(v+τ²))·exp(z²/2)·Φ(z)`` with ``z = (θ₀ − δ̂)·τ / sqrt(v (v+τ²))``
    (gate/boundaries.py): it reaches 1/α exactly when δ̂ + r(v) < θ₀ for the radius r of
    that module at level α.
    """
    v = variance
    z = (threshold - delta) * math.sqrt(tau2) / math.sqrt(v * (v + tau2))
    return (math.log(2.0) + 0.5 * math.log(v / (v + tau2)) + 0.5 * z * z
            + float(log_ndtr(z)))


def sequence_stream(old: Stream | None, label: str, delta: float, variance: float,
                    threshold: float, scale: float, alpha: float) -> Stream | None:
    """A stream judged on its cumulative estimate (module docstring: statistics that are
    not sums of increments); ``log_r`` holds the one log martingale, ``steps`` counts the
    evaluations after the first. ``None`` (or ``old``) when the estimate is not usable.
    """
    if not _usable(delta, variance, threshold, scale) or not 0 < alpha < 1:
        return old
    log_m = log_mixture_martingale(delta, variance, threshold,
                                   tau2_for_radius(scale, alpha))
    return Stream(label, delta / variance, 1.0 / variance, threshold, scale, (log_m,),
                  0 if old is None else old.steps + 1)


def start(label: str, delta: float, variance: float, threshold: float, scale: float
          ) -> Stream | None:
    """A new stream anchored at this evaluation (None if the estimate is not usable)."""
    if not _usable(delta, variance, threshold, scale):
        return None
    info = 1.0 / variance
    return Stream(label, delta * info, info, threshold, scale)


def step(stream: Stream, delta: float, variance: float, threshold: float, scale: float
         ) -> Stream:
    """``stream`` after an evaluation whose cumulative estimate is ``delta`` (variance
    ``variance``), with the rollback ``threshold`` and ``scale`` it has now.

    The increment is judged with the anchor's θ₀ and scale (predictable); the new ones
    become the anchor's. An evaluation without new information leaves the stream as it
    was.
    """
    if not _usable(delta, variance, threshold, scale):
        return stream
    info = 1.0 / variance
    score = delta * info
    d_info = info - stream.information
    if not d_info > 0:
        return stream
    x = (score - stream.score) - stream.threshold * d_info
    log_l = log_likelihood_ratios(x, d_info, stream.scale)
    previous = np.array(stream.log_r) if stream.log_r else np.full(len(SHIFTS), -np.inf)
    log_r = sr_update(previous, log_l)
    return Stream(stream.label, score, info, threshold, scale,
                  tuple(float(v) for v in log_r), stream.steps + 1)
