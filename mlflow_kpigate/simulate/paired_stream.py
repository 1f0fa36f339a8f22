"""Both models on the same requests: the correlated joint draw of shadow stages and the bake.

In a shadow stage (and while baking) both roles score every request, and their outcomes on
one request are correlated: the fraud that is hard for one model is hard for the other.
:class:`PairedGenerator` draws one interval of such traffic with the binormal model of
:mod:`.stream` for each role, the two roles' latent values correlating at ``ρ``
(``StreamSpec.correlation``, the scenario file's ``candidate.correlation``; default 0.8):

* scores: per class (and per segment for negatives), the latent scores relative to each
  role's threshold, ``w_b`` and ``w_c``, are bivariate normal with the roles' means, unit
  variances and correlation ρ. Counts are drawn on the paired aggregate's coarse joint grid
  (:func:`~mlflow_kpigate.kpis.paired.joint_bin_of`: 0.5 is a coarse edge, so every cell
  is flagged or not by each role; cell probabilities by Gauss–Legendre quadrature, exact
  to rounding), then each role's fine score bins within its coarse bin from that role's
  own binormal; each role's fine histogram thus has its marginal law, and the joint law is
  exact at the coarse resolution (within a coarse cell the two roles' fine bins are drawn
  independently);
* errors: two thresholded normals correlated at ρ (a 2×2 multinomial);
* log-latency: the two roles' interval means of log-latency correlate at ρ, and the paired
  differences have variance σ_b² + σ_c² − 2ρσ_bσ_c; each role's latency histogram is drawn
  as in :mod:`.stream`.

Every request is labelled (as in :mod:`.stream`) and paired. Each role's aggregates are
the margins of the joint draw, so the independent estimators see the same data the paired
ones do. Random numbers come from the caller's generator (the runner keys it by
(seed, repetition, interval, stage), as every draw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import multivariate_normal, norm

from mlflow_kpigate.kpis import Confusion, PairedAggregate, RoleAggregate
from mlflow_kpigate.kpis.paired import joint_bin_of
from mlflow_kpigate.simulate.stream import IntervalData, RoleModel, StreamGenerator

#: Largest correlation drawn (at 1 the conditional law degenerates).
MAX_CORRELATION = 0.999
# Gauss–Legendre nodes per coarse row for the joint cell probabilities, and how far (in
# standard deviations) the unbounded end rows are integrated.
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(24)
_REACH = 9.0
# Joint cell tables kept per generator (each 64×64 floats).
_CACHE_SIZE = 64


@dataclass
class PairedInterval:
    """One interval of shadow traffic: each role's data and their joint outcomes."""

    baseline: IntervalData
    candidate: IntervalData
    requests: PairedAggregate  # errors and log-latency differences
    labelled: PairedAggregate  # outcome table and scores


class PairedGenerator:
    """Draws intervals in which both roles answer every request (see the module docstring)."""

    def __init__(self, gen: StreamGenerator) -> None:
        self.gen = gen
        bins = gen.geo.n_bins
        self.coarse = joint_bin_of(bins)
        self.joint_bins = int(self.coarse.max()) + 1
        # Latent-scale edges of the coarse bins relative to a role's threshold (a coarse bin
        # without fine bins has zero width), and the fine bins of each coarse bin.
        first = np.searchsorted(self.coarse, np.arange(self.joint_bins + 1))
        self.coarse_edges = gen.geo.z_edges[first]
        self.members = [np.arange(first[c], first[c + 1]) for c in range(self.joint_bins)]
        half = self.joint_bins // 2
        if not (self.coarse[gen.geo.flag_bin] == half and first[half] == gen.geo.flag_bin):
            raise ValueError("the flag threshold 0.5 must be a coarse joint edge")
        self._cache: dict[tuple[float, ...], np.ndarray] = {}
        self._errors: dict[tuple[float, ...], np.ndarray] = {}

    # -- probabilities --------------------------------------------------------------------
    def _cells(self, mean_b: float, mean_c: float, rho: float) -> np.ndarray:
        """P(coarse cell) of (w_b, w_c) ~ N((mean_b, mean_c), [[1, ρ], [ρ, 1]]).

        Row i (w_b in [e_i, e_{i+1})) integrates P(w_c in column j | w_b = x) against the
        density of w_b by Gauss–Legendre quadrature within the row (ends cut at
        ``_REACH`` standard deviations): both margins come out exact to rounding (1e-16 at
        ρ = 0.8, 4e-7 at ρ = 0.999) for a few milliseconds per pair of means.
        """
        key = (round(mean_b, 12), round(mean_c, 12), rho)
        if key not in self._cache:
            if len(self._cache) >= _CACHE_SIZE:  # a drifting truth: new means every interval
                self._cache.clear()
            edges = self.coarse_edges
            lo = np.clip(edges[:-1], mean_b - _REACH, mean_b + _REACH)
            hi = np.clip(edges[1:], mean_b - _REACH, mean_b + _REACH)
            half = (hi - lo)[:, None] / 2.0
            x = (lo + hi)[:, None] / 2.0 + half * _NODES[None, :]
            weight = half * _WEIGHTS[None, :] * norm.pdf(x - mean_b)
            sd = math.sqrt(1.0 - rho * rho)
            cond = np.diff(norm.cdf((edges[None, None, :] - mean_c
                                     - rho * (x[:, :, None] - mean_b)) / sd), axis=2)
            cells = np.clip(np.einsum("rk,rkj->rj", weight, cond), 0.0, None)
            self._cache[key] = cells.reshape(-1) / cells.sum()
        return self._cache[key]

    def _class_means(self, model: RoleModel) -> tuple[float, list[float]]:
        """Latent means relative to the role's threshold: positives, negatives per segment."""
        fpr = model.base_fpr(self.gen.stream.prevalence)
        pos = float(norm.ppf(min(max(model.recall, 1e-9), 1 - 1e-9)))
        negs = [-float(norm.isf(min(fpr * model.fpr_multiplier.get(name, 1.0), 0.999)))
                for name in self.gen.segment_names]
        return pos, negs

    def _error_cells(self, e_b: float, e_c: float, rho: float) -> np.ndarray:
        """P(baseline failed, candidate failed) cells [00, 01, 10, 11]: thresholded normals
        correlated at ``rho``."""
        key = (e_b, e_c, rho)
        if key not in self._errors:
            if min(e_b, e_c) <= 0 or max(e_b, e_c) >= 1:
                both = min(e_b, e_c) if max(e_b, e_c) >= 1 else 0.0
            else:
                both = float(multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf(
                    [norm.ppf(e_b), norm.ppf(e_c)]))
            p = np.clip([1 - e_b - e_c + both, e_c - both, e_b - both, both], 0.0, None)
            self._errors[key] = p / p.sum()
        return self._errors[key]

    # -- the draw -------------------------------------------------------------------------
    def draw(self, rng: np.random.Generator, baseline: RoleModel, candidate: RoleModel,
             n: int, rho: float) -> PairedInterval:
        """``n`` requests answered by both roles, their outcomes correlated at ``rho``."""
        rho = min(max(rho, -MAX_CORRELATION), MAX_CORRELATION)
        spec = self.gen.spec
        out = PairedInterval(IntervalData(RoleAggregate(spec), RoleAggregate(spec)),
                             IntervalData(RoleAggregate(spec), RoleAggregate(spec)),
                             PairedAggregate(spec.score_bins), PairedAggregate(spec.score_bins))
        if n <= 0:
            return out
        self._requests(rng, baseline, candidate, n, rho, out)
        self._labelled(rng, baseline, candidate, n, rho, out)
        return out

    def _requests(self, rng: np.random.Generator, baseline: RoleModel, candidate: RoleModel,
                  n: int, rho: float, out: PairedInterval) -> None:
        errors = rng.multinomial(n, self._error_cells(baseline.error_rate,
                                                      candidate.error_rate, rho))
        out.requests.errors += errors.reshape(2, 2)
        z = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]])
        means = []
        for model, data, zi, failed in ((baseline, out.baseline, z[0], errors[2] + errors[3]),
                                        (candidate, out.candidate, z[1],
                                         errors[1] + errors[3])):
            lat_p, mu = self.gen._latency_probs(model)
            sd = model.latency_log_sd
            mean_log = mu + sd * zi / math.sqrt(n)
            m2_log = sd * sd * rng.chisquare(n - 1) if n > 1 else 0.0
            data.requests.latency.add_binned(rng.multinomial(n, lat_p), mean_log, m2_log,
                                             n * model.latency_mean_s)
            data.requests.requests += n
            data.requests.errors += int(failed)
            means.append(mean_log)
        sd_b, sd_c = baseline.latency_log_sd, candidate.latency_log_sd
        var_d = max(sd_b * sd_b + sd_c * sd_c - 2 * rho * sd_b * sd_c, 1e-12)
        diffs = out.requests.log_latency
        diffs.n, diffs.mean = n, float(means[1] - means[0])
        diffs.m2 = float(var_d * rng.chisquare(n - 1)) if n > 1 else 0.0

    def _labelled(self, rng: np.random.Generator, baseline: RoleModel, candidate: RoleModel,
                  n: int, rho: float, out: PairedInterval) -> None:
        gen, k = self.gen, self.joint_bins
        pos_b, negs_b = self._class_means(baseline)
        pos_c, negs_c = self._class_means(candidate)
        fine_pos_b, fine_negs_b = gen._score_probs(baseline)
        fine_pos_c, fine_negs_c = gen._score_probs(candidate)
        seg_field = gen.stream.segment_field
        half = k // 2
        per_segment = rng.multinomial(n, gen.shares)
        totals = {0: Confusion(), 1: Confusion()}
        for s, (name, n_seg) in enumerate(zip(gen.segment_names, per_segment, strict=True)):
            n_pos = int(rng.binomial(n_seg, gen.stream.prevalence))
            confs = {0: Confusion(), 1: Confusion()}
            for label, count, means, fine in (
                    (1, n_pos, (pos_b, pos_c), (fine_pos_b, fine_pos_c)),
                    (0, n_seg - n_pos, (negs_b[s], negs_c[s]), (fine_negs_b[s],
                                                                 fine_negs_c[s]))):
                if count == 0:
                    continue
                joint = rng.multinomial(count, self._cells(*means, rho)).reshape(k, k)
                (out.labelled.joint_pos if label else out.labelled.joint_neg)[:] += joint
                flagged_b = joint[half:, :].sum()
                flagged_c = joint[:, half:].sum()
                both = joint[half:, half:].sum()
                out.labelled.outcomes[label] += np.array(
                    [[count - flagged_b - flagged_c + both, flagged_c - both],
                     [flagged_b - both, both]])
                for role, axis, data in ((0, 1, out.baseline), (1, 0, out.candidate)):
                    fine_counts = self._fine(rng, joint.sum(axis=axis), fine[role])
                    hist = out.labelled.baseline_scores if role == 0 else \
                        out.labelled.candidate_scores
                    (hist.pos if label else hist.neg)[:] += fine_counts
                    (data.labelled.scores.pos if label else
                     data.labelled.scores.neg)[:] += fine_counts
                    flagged = flagged_b if role == 0 else flagged_c
                    part = (Confusion(tp=int(flagged), fn=int(count - flagged)) if label
                            else Confusion(fp=int(flagged), tn=int(count - flagged)))
                    confs[role].merge(part)
            for role, data in ((0, out.baseline), (1, out.candidate)):
                totals[role].merge(confs[role])
                if seg_field in gen.spec.segment_fields:
                    data.labelled.segments.setdefault(seg_field, {})[name] = confs[role]
        out.baseline.labelled.confusion.merge(totals[0])
        out.candidate.labelled.confusion.merge(totals[1])

    def _fine(self, rng: np.random.Generator, per_coarse: np.ndarray, probs: np.ndarray
              ) -> np.ndarray:
        """Fine-bin counts of one role given its coarse-bin counts and its fine law."""
        out = np.zeros(probs.size, dtype=np.int64)
        for c in np.flatnonzero(per_coarse):
            idx = self.members[c]
            p = probs[idx]
            total = p.sum()
            p = p / total if total > 0 else np.full(idx.size, 1.0 / idx.size)
            out[idx] += rng.multinomial(int(per_coarse[c]), p)
        return out
