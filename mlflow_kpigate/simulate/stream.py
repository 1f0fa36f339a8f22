"""Synthetic request streams for simulated rollouts: a fraud-like classifier per role.

The model of one role's traffic in one evaluation interval:

* requests split over segments (e.g. regions) by fixed shares; each is a positive (fraud)
  with probability ``prevalence``;
* the classifier's score follows a binormal model on a latent scale: negatives
  ``z ~ N(m_seg, 1)``, positives ``z ~ N(μ₁, 1)``, flagged when ``z > c``; ``c``, ``μ₁`` and
  ``m_seg`` are solved so that recall and each segment's false-positive rate are exactly
  the configured ones (precision then follows from prevalence and FPR);
* latency is lognormal with the configured mean and log-σ; errors are Bernoulli;
* the candidate's recall may drift linearly: over the horizon, or from a start time (or
  from its promotion to 100%) over a set duration (:meth:`StreamSpec.candidate_at`).

This module draws each role's traffic on its own (split traffic: different requests).
Where both roles answer the same requests (a shadow stage, the bake) the runner draws them
jointly with :mod:`.paired_stream`, their latent values correlated at
``StreamSpec.correlation``.

Everything is drawn as counts (multinomials over score bins and latency buckets), so an
interval of a million requests costs the same as one of a thousand. Random numbers are
keyed by (seed, repetition, interval, stage), so two decision rules run on the same stream
see identical data while they are in the same stage (common random numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import norm

from mlflow_kpigate.kpis import (
    AggregateSpec,
    Confusion,
    LatencyHistogram,
    RoleAggregate,
    ScoreHistogram,
)

# The latent score is mapped to [0, 1] as Φ((z − c) / SCORE_SPREAD): flagged ⇔ score ≥ 0.5.
SCORE_SPREAD = 2.0


@dataclass(frozen=True)
class RoleModel:
    """Ground truth for one role's traffic (what a scenario sets)."""

    recall: float = 0.876
    precision: float = 0.918
    latency_mean_s: float = 0.085
    latency_log_sd: float = 0.35
    error_rate: float = 0.001
    fpr_multiplier: Mapping[str, float] = field(default_factory=dict)

    def base_fpr(self, prevalence: float) -> float:
        """FPR that gives ``precision`` at ``recall`` and ``prevalence``."""
        tp = prevalence * self.recall
        return tp * (1 - self.precision) / (self.precision * (1 - prevalence))


@dataclass(frozen=True)
class StreamSpec:
    """A synthetic stream: traffic volume, segments, label delay, and both roles' truth.

    Volume and horizon are counted in evaluation intervals; a scenario may give them in time
    instead (``requests_per_second``, ``horizon_s``), which :meth:`per_interval` turns into
    intervals once the policy's interval is known.
    """

    name: str = "equal"
    description: str = ""
    requests_per_interval: int = 100_000
    prevalence: float = 0.015
    segment_field: str = "region"
    segments: Mapping[str, float] = field(
        default_factory=lambda: {"eu": 0.5, "us": 0.3, "apac": 0.2})
    label_delay_s: float = 0.0
    horizon_intervals: int = 0  # 0: not set (the caller picks one from the policy)
    baseline: RoleModel = field(default_factory=RoleModel)
    candidate: RoleModel = field(default_factory=RoleModel)
    # Change of the candidate's recall, linear over the drift's span: from the first to the
    # last interval unless a start and duration are set.
    candidate_recall_drift: float = 0.0
    requests_per_second: float | None = None  # overrides requests_per_interval when set
    horizon_s: float = 0.0  # a horizon given as a duration (0: use horizon_intervals)
    drift_start_s: float = 0.0  # seconds after the rollout's start
    drift_duration_s: float | None = None  # None: until the horizon's last interval
    drift_after_promotion: bool = False  # the drift starts when the candidate has 100%
    # Correlation of the two models' latent values on the same request (scores, errors,
    # log-latency): how alike their outcomes are where both answer every request (a shadow
    # stage, the bake; see :mod:`.paired_stream`).
    correlation: float = 0.8

    def per_interval(self, interval_s: float) -> StreamSpec:
        """This stream with volume and horizon in intervals of ``interval_s`` seconds.

        The time-based fields are cleared, so a later override of the per-interval ones
        (``--requests-per-interval``, ``--horizon``) sticks and resolving again is a no-op.
        """
        if interval_s <= 0:
            raise ValueError("the evaluation interval must be positive")
        changes: dict[str, Any] = {}
        if self.requests_per_second is not None:
            changes["requests_per_interval"] = max(
                1, round(self.requests_per_second * interval_s))
            changes["requests_per_second"] = None
        if self.horizon_s > 0:
            changes["horizon_intervals"] = max(1, math.ceil(self.horizon_s / interval_s - 1e-9))
            changes["horizon_s"] = 0.0
        return replace(self, **changes) if changes else self

    def drift_fraction(self, interval: int, interval_s: float | None = None,
                       promoted_at: int | None = None) -> float:
        """How much of the drift has happened by ``interval`` (0 to 1).

        ``promoted_at`` is the first interval in which the candidate served all traffic
        (None: not promoted); ``interval_s`` is needed when the drift is timed in seconds.
        """
        if not self.candidate_recall_drift:
            return 0.0
        if self.drift_after_promotion:
            if promoted_at is None or interval < promoted_at:
                return 0.0
            start = float(promoted_at)
        else:
            start = self.drift_start_s / _interval(interval_s) if self.drift_start_s else 0.0
        if self.drift_duration_s is None:
            span = max(self.horizon_intervals - 1 - start, 1.0)
        else:
            span = self.drift_duration_s / _interval(interval_s)
        if span <= 0:  # a step change
            return 1.0 if interval >= start else 0.0
        return min(max((interval - start) / span, 0.0), 1.0)

    def candidate_at(self, interval: int, interval_s: float | None = None,
                     promoted_at: int | None = None) -> RoleModel:
        """The candidate's truth at ``interval`` (drift applied)."""
        frac = self.drift_fraction(interval, interval_s, promoted_at)
        if not frac:
            return self.candidate
        return replace(self.candidate,
                       recall=self.candidate.recall + self.candidate_recall_drift * frac)

    def drifted(self) -> RoleModel:
        """The candidate's truth once its drift is complete (itself when it has none)."""
        if not self.candidate_recall_drift:
            return self.candidate
        return replace(self.candidate,
                       recall=self.candidate.recall + self.candidate_recall_drift)


def _interval(interval_s: float | None) -> float:
    if interval_s is None or interval_s <= 0:
        raise ValueError("a drift timed in seconds needs the evaluation interval")
    return interval_s


@dataclass
class IntervalData:
    """One role's data from one interval: requests now, labelled predictions later."""

    requests: RoleAggregate
    labelled: RoleAggregate


class _Geometry:
    """Precomputed bucket/bin layouts shared by every draw (built once per spec)."""

    def __init__(self, spec: AggregateSpec) -> None:
        self.spec = spec
        lat = LatencyHistogram(growth=spec.latency_growth)
        self.lat_edges = lat.edges
        self.n_lat = len(lat.counts)
        scores = ScoreHistogram(bins=spec.score_bins)
        self.n_bins = len(scores.pos)
        self.score_edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        # Latent-scale positions of the score bin edges, relative to the threshold c.
        with np.errstate(divide="ignore"):
            self.z_edges = SCORE_SPREAD * norm.ppf(self.score_edges)
        self.flag_bin = int(np.searchsorted(self.score_edges, 0.5))


class StreamGenerator:
    """Draws interval data for a :class:`StreamSpec` into role aggregates."""

    def __init__(self, stream: StreamSpec, spec: AggregateSpec) -> None:
        if stream.segment_field not in spec.segment_fields and spec.segment_fields:
            raise ValueError(
                f"the policy segments by {', '.join(spec.segment_fields)} but the stream's "
                f"segment field is {stream.segment_field!r}")
        self.stream = stream
        self.spec = spec
        self.geo = _Geometry(spec)
        shares = np.array(list(stream.segments.values()), dtype=float)
        self.segment_names = list(stream.segments)
        self.shares = shares / shares.sum()
        self._cache: dict[tuple[Any, ...], Any] = {}

    # -- distribution pieces, cached by the model's parameters --------------------------
    def _score_probs(self, model: RoleModel) -> tuple[np.ndarray, list[np.ndarray]]:
        key = ("scores", model.recall, model.precision, tuple(sorted(model.fpr_multiplier
                                                                       .items())))
        if key not in self._cache:
            prev = self.stream.prevalence
            fpr = model.base_fpr(prev)
            c = float(norm.isf(fpr))  # negatives N(0,1) exceed c with probability fpr
            mu1 = c + float(norm.ppf(min(max(model.recall, 1e-9), 1 - 1e-9)))
            edges = c + self.geo.z_edges
            pos = np.diff(norm.cdf(edges - mu1))
            negs = []
            for name in self.segment_names:
                f = min(fpr * model.fpr_multiplier.get(name, 1.0), 0.999)
                shift = c - float(norm.isf(f))  # moves the negatives so P(z > c) = f
                negs.append(np.diff(norm.cdf(edges - shift)))
            self._cache[key] = (_normalise(pos), [_normalise(n) for n in negs])
        return self._cache[key]

    def _latency_probs(self, model: RoleModel) -> tuple[np.ndarray, float]:
        key = ("latency", model.latency_mean_s, model.latency_log_sd)
        if key not in self._cache:
            sd = model.latency_log_sd
            mu = math.log(model.latency_mean_s) - sd * sd / 2
            cdf = norm.cdf((np.log(self.geo.lat_edges) - mu) / sd)
            probs = np.diff(np.concatenate(([0.0], cdf, [1.0])))
            self._cache[key] = (_normalise(probs), mu)
        return self._cache[key]

    # -- draws ---------------------------------------------------------------------------
    def draw(self, rng: np.random.Generator, model: RoleModel, n: int) -> IntervalData:
        """Data of ``n`` requests served by a role with truth ``model``."""
        requests = RoleAggregate(self.spec)
        labelled = RoleAggregate(self.spec)
        if n <= 0:
            return IntervalData(requests, labelled)
        # Requests: latency histogram + log moments, errors.
        lat_p, mu = self._latency_probs(model)
        counts = rng.multinomial(n, lat_p)
        sd = model.latency_log_sd
        mean_log = mu + sd * rng.standard_normal() / math.sqrt(n)
        m2_log = sd * sd * rng.chisquare(n - 1) if n > 1 else 0.0
        total = n * model.latency_mean_s
        requests.latency.add_binned(counts, mean_log, m2_log, total)
        errors = int(rng.binomial(n, model.error_rate))
        requests.requests += n
        requests.errors += errors
        # Labelled predictions (every request is eventually labelled in this model).
        pos_p, neg_ps = self._score_probs(model)
        per_segment = rng.multinomial(n, self.shares)
        seg_field = self.stream.segment_field
        overall = Confusion()
        pos_total = np.zeros(self.geo.n_bins, dtype=np.int64)
        neg_total = np.zeros(self.geo.n_bins, dtype=np.int64)
        fb = self.geo.flag_bin
        for name, n_seg, neg_p in zip(self.segment_names, per_segment, neg_ps, strict=True):
            n_pos = int(rng.binomial(n_seg, self.stream.prevalence))
            pos_bins = rng.multinomial(n_pos, pos_p)
            neg_bins = rng.multinomial(n_seg - n_pos, neg_p)
            tp = int(pos_bins[fb:].sum())
            fp = int(neg_bins[fb:].sum())
            conf = Confusion(tp=tp, fp=fp, tn=int(n_seg - n_pos - fp), fn=int(n_pos - tp))
            overall.merge(conf)
            if seg_field in self.spec.segment_fields:
                labelled.segments.setdefault(seg_field, {})[name] = conf
            pos_total += pos_bins
            neg_total += neg_bins
        labelled.confusion.merge(overall)
        labelled.scores.add_counts(pos_total, neg_total)
        return IntervalData(requests, labelled)


def _normalise(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.0, None)
    return p / p.sum()


def rng_for(seed: int, rep: int, interval: int, stage: int, role: int) -> np.random.Generator:
    """Generator keyed by the draw's coordinates (common random numbers across rules)."""
    return np.random.default_rng([seed, rep, interval, stage, role])
