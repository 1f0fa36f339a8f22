"""The joint outcomes of both roles on the same requests: the paired part of a stratum.

In a shadow stage both models score every request (the baseline answers, the candidate
scores a copy), and while a rollout bakes it is the reverse. Their outcomes on one request
are correlated (the same fraud is hard for both models), so the difference of the two
roles' KPIs has a far smaller variance than two independent samples of that size would
have. A :class:`PairedAggregate` keeps, for the requests both roles answered, what the gate
needs for that paired variance (docs/statistics.md, "Paired comparison in shadow"):

* ``errors``: the 2×2 table of (baseline failed, candidate failed) over the paired requests;
* ``log_latency``: moments of the per-request difference candidate − baseline of the
  log-latency (requests with both latencies known);
* ``outcomes``: the 2×2×2 table (label, baseline predicted, candidate predicted) over the
  labelled requests both roles predicted: the paired variance of every confusion rate
  (recall, FPR, accuracy: discordant pairs; precision, F1: the delta method on the table);
* for AUC: each role's score histogram over those requests (the same binning as
  :class:`~.scores.ScoreHistogram` in a role's aggregate) and a coarse **joint** histogram
  per class, ``JOINT_BINS`` × ``JOINT_BINS`` cells on the logit scale of the score, from
  which :meth:`PairedAggregate.auc_covariance` gives DeLong's covariance of the two
  correlated AUCs (DeLong, DeLong & Clarke-Pearson 1988).

The joint histogram is coarse so that evaluation records, which carry the samples, stay
small (at most 2·64² cells, stored sparsely; correlated models fill a band around the
diagonal: about 800 cells, 2.7 KB gzipped, for 200,000 requests of two fraud models whose
latent scores correlate at 0.9). Its covariance is computed from each role's exact
(fine-bin) DeLong components averaged within the coarse cells: an empirical covariance
of conditional means, so by Cauchy–Schwarz it never exceeds the product of the two roles'
standard deviations and the variance of the difference is never negative. It leaves out
the within-cell covariance, which for positively associated scores makes the paired
variance a little conservative (binormal scores correlated at 0.9: the covariance comes
out at 98–99% of the fine-bin one with 64 coarse bins, 93–95% with 32, 78–82% with 16).

Like every aggregator here: fixed size, merges by addition, round-trips through
``to_dict`` / ``from_dict`` as plain JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlflow_kpigate.kpis.confusion import as_binary_array
from mlflow_kpigate.kpis.moments import Moments, _count, as_float_array
from mlflow_kpigate.kpis.scores import ScoreHistogram, _dense, _sparse

__all__ = ["JOINT_BINS", "PairedAggregate", "joint_bin_of"]

#: Format version of :meth:`PairedAggregate.to_dict`.
FORMAT_VERSION = 1
#: Coarse bins per role of the joint score histogram (even, so 0.5 is a bin edge).
JOINT_BINS = 64


def joint_bin_of(score_bins: int, joint_bins: int = JOINT_BINS) -> np.ndarray:
    """Coarse joint bin of every fine score bin: equal widths on the logit scale.

    The fine bin's centre c goes to ``floor((logit c + L) / (2L) · joint_bins)`` (clipped),
    with L the logit of the last fine centre. Logit widths resolve the tails, where scores
    of rare-event models crowd (most negatives of a fraud model score near 0), better than
    equal widths on [0, 1] would; 0.5 is a coarse edge.
    """
    centres = (np.arange(score_bins) + 0.5) / score_bins
    logit = np.log(centres) - np.log1p(-centres)
    span = float(logit[-1]) if score_bins > 1 else 1.0
    scaled = np.floor((logit + span) / (2.0 * span) * joint_bins)
    return np.clip(scaled, 0, joint_bins - 1).astype(np.intp)


class PairedAggregate:
    """Joint state of baseline and candidate over the requests both answered."""

    def __init__(self, score_bins: int = 1000, joint_bins: int = JOINT_BINS) -> None:
        if isinstance(joint_bins, bool) or not isinstance(joint_bins, (int, np.integer)) \
                or joint_bins < 2:
            raise ValueError(f"joint_bins must be an integer >= 2, got {joint_bins!r}")
        self.joint_bins: int = int(joint_bins)
        self.errors: np.ndarray = np.zeros((2, 2), dtype=np.int64)
        self.log_latency: Moments = Moments()
        self.outcomes: np.ndarray = np.zeros((2, 2, 2), dtype=np.int64)
        self.baseline_scores: ScoreHistogram = ScoreHistogram(bins=score_bins)
        self.candidate_scores: ScoreHistogram = ScoreHistogram(bins=score_bins)
        self.joint_pos: np.ndarray = np.zeros((self.joint_bins,) * 2, dtype=np.int64)
        self.joint_neg: np.ndarray = np.zeros((self.joint_bins,) * 2, dtype=np.int64)
        self._coarse = joint_bin_of(self.score_bins, self.joint_bins)

    @property
    def score_bins(self) -> int:
        """Fine score bins (as in the roles' aggregates)."""
        return self.baseline_scores.bins

    @property
    def requests(self) -> int:
        """Requests both roles answered."""
        return int(self.errors.sum())

    @property
    def labelled(self) -> int:
        """Labelled requests both roles predicted."""
        return int(self.outcomes.sum())

    # -- updating -------------------------------------------------------------------------

    def add_requests(self, baseline_error: ArrayLike, candidate_error: ArrayLike,
                     baseline_latency_s: ArrayLike | None = None,
                     candidate_latency_s: ArrayLike | None = None) -> None:
        """Record requests both roles answered, one element per request in every array.

        Latencies (seconds, > 0) are optional; when given, both must be.
        """
        eb = as_binary_array(baseline_error, "baseline_error")
        ec = as_binary_array(candidate_error, "candidate_error")
        if eb.size != ec.size:
            raise ValueError("baseline_error and candidate_error must have the same length")
        diff = None
        if (baseline_latency_s is None) != (candidate_latency_s is None):
            raise ValueError("give both roles' latencies or neither")
        if baseline_latency_s is not None and candidate_latency_s is not None:
            lb = as_float_array(baseline_latency_s, "baseline_latency_s")
            lc = as_float_array(candidate_latency_s, "candidate_latency_s")
            if lb.size != eb.size or lc.size != eb.size:
                raise ValueError("latencies must have one element per request")
            if (lb <= 0).any() or (lc <= 0).any():
                raise ValueError("latencies must be > 0 seconds")
            diff = np.log(lc) - np.log(lb)
        np.add.at(self.errors, (eb.astype(np.intp), ec.astype(np.intp)), 1)
        if diff is not None:
            self.log_latency.update(diff)

    def add_labelled(self, y_true: ArrayLike, baseline_pred: ArrayLike,
                     candidate_pred: ArrayLike, baseline_score: ArrayLike | None = None,
                     candidate_score: ArrayLike | None = None) -> None:
        """Record labelled requests both roles predicted (scores optional, both or neither)."""
        t = as_binary_array(y_true, "y_true")
        pb = as_binary_array(baseline_pred, "baseline_pred")
        pc = as_binary_array(candidate_pred, "candidate_pred")
        if not t.size == pb.size == pc.size:
            raise ValueError("y_true and both predictions must have the same length")
        if (baseline_score is None) != (candidate_score is None):
            raise ValueError("give both roles' scores or neither")
        bins = None
        if baseline_score is not None and candidate_score is not None:
            bb = self.baseline_scores.bin_index(baseline_score)
            bc = self.candidate_scores.bin_index(candidate_score)
            if bb.size != t.size or bc.size != t.size:
                raise ValueError("scores must have one element per labelled request")
            bins = (bb, bc)
        np.add.at(self.outcomes, (t.astype(np.intp), pb.astype(np.intp), pc.astype(np.intp)),
                  1)
        if bins is not None:
            self.add_score_pairs(t, bins[0], bins[1], np.ones(t.size, dtype=np.int64))

    def add_score_pairs(self, label: ArrayLike, baseline_bin: ArrayLike,
                        candidate_bin: ArrayLike, count: ArrayLike) -> None:
        """Add ``count`` labelled requests at each (label, fine baseline bin, fine candidate
        bin); the prediction log's reader adds grouped rows this way."""
        t = np.asarray(label, dtype=np.intp).reshape(-1)
        bb = np.asarray(baseline_bin, dtype=np.intp).reshape(-1)
        bc = np.asarray(candidate_bin, dtype=np.intp).reshape(-1)
        k = np.asarray(count, dtype=np.int64).reshape(-1)
        if not t.size == bb.size == bc.size == k.size:
            raise ValueError("label, bins and counts must have the same length")
        if t.size == 0:
            return
        bins = self.score_bins
        if (k < 0).any() or ((t != 0) & (t != 1)).any() or bb.min() < 0 or bc.min() < 0 \
                or bb.max() >= bins or bc.max() >= bins:
            raise ValueError(f"labels must be 0/1, bins in [0, {bins}), counts >= 0")
        pos = t == 1
        for mask, fine_b, fine_c, joint in ((pos, self.baseline_scores.pos,
                                             self.candidate_scores.pos, self.joint_pos),
                                            (~pos, self.baseline_scores.neg,
                                             self.candidate_scores.neg, self.joint_neg)):
            fine_b += np.bincount(bb[mask], weights=k[mask], minlength=bins).astype(np.int64)
            fine_c += np.bincount(bc[mask], weights=k[mask], minlength=bins).astype(np.int64)
            np.add.at(joint, (self._coarse[bb[mask]], self._coarse[bc[mask]]), k[mask])

    # -- combining ------------------------------------------------------------------------

    def merge(self, other: PairedAggregate) -> None:
        """Add ``other``'s data (in place); ``ValueError`` if the binning differs."""
        if not isinstance(other, PairedAggregate):
            raise ValueError(f"can only merge PairedAggregate, not {type(other).__name__}")
        if (other.score_bins, other.joint_bins) != (self.score_bins, self.joint_bins):
            raise ValueError("paired aggregates with different binning cannot merge")
        self.errors += other.errors
        self.log_latency.merge(other.log_latency)
        self.outcomes += other.outcomes
        self.baseline_scores.merge(other.baseline_scores)
        self.candidate_scores.merge(other.candidate_scores)
        self.joint_pos += other.joint_pos
        self.joint_neg += other.joint_neg

    def copy(self) -> PairedAggregate:
        """An independent deep copy."""
        out = PairedAggregate(self.score_bins, self.joint_bins)
        out.merge(self)
        return out

    # -- statistics -----------------------------------------------------------------------

    def auc_covariance(self) -> float:
        """DeLong's covariance of the two roles' AUCs on these requests (NaN if undefined).

        ``S10_bc/P + S01_bc/N``, with each role's structural components (exact for its fine
        bins) averaged within the coarse joint cells; see the module docstring.
        """
        hb, hc = self.baseline_scores, self.candidate_scores
        n_pos, n_neg = hb.n_pos, hb.n_neg
        if n_pos < 2 or n_neg < 2:
            return math.nan
        v10_b, v01_b, _, _ = hb._placements()
        v10_c, v01_c, _, _ = hc._placements()
        auc_b = float(np.dot(hb.pos, v10_b) / n_pos)
        auc_c = float(np.dot(hc.pos, v10_c) / n_pos)
        s10 = self._joint_comoment(self.joint_pos, hb.pos, v10_b - auc_b, hc.pos,
                                   v10_c - auc_c) / (n_pos - 1)
        s01 = self._joint_comoment(self.joint_neg, hb.neg, v01_b - auc_b, hc.neg,
                                   v01_c - auc_c) / (n_neg - 1)
        return s10 / n_pos + s01 / n_neg

    def _joint_comoment(self, joint: np.ndarray, count_b: np.ndarray, comp_b: np.ndarray,
                        count_c: np.ndarray, comp_c: np.ndarray) -> float:
        """Σ over coarse cells of count · (mean centred component of b) · (same of c)."""
        k = self.joint_bins
        mean_b = _coarse_means(self._coarse, count_b, comp_b, k)
        mean_c = _coarse_means(self._coarse, count_c, comp_c, k)
        return float(mean_b @ joint.astype(np.float64) @ mean_c)

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (histograms sparse)."""
        return {
            "version": FORMAT_VERSION,
            "joint_bins": self.joint_bins,
            "errors": self.errors.tolist(),
            "log_latency": self.log_latency.to_dict(),
            "outcomes": self.outcomes.tolist(),
            "baseline_scores": self.baseline_scores.to_dict(),
            "candidate_scores": self.candidate_scores.to_dict(),
            "joint_pos": _sparse(self.joint_pos.reshape(-1)),
            "joint_neg": _sparse(self.joint_neg.reshape(-1)),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedAggregate:
        """Rebuild from :meth:`to_dict` output (``ValueError`` if malformed)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"paired: expected a mapping, got {type(d).__name__}")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"paired: unsupported format version {d.get('version')!r}")
        try:
            hb = ScoreHistogram.from_dict(d["baseline_scores"])
            hc = ScoreHistogram.from_dict(d["candidate_scores"])
            out = cls(hb.bins, _count(d, "joint_bins", "paired"))
            out.baseline_scores, out.candidate_scores = hb, hc
            out.errors = _table(d["errors"], (2, 2), "paired.errors")
            out.outcomes = _table(d["outcomes"], (2, 2, 2), "paired.outcomes")
            out.log_latency = Moments.from_dict(d["log_latency"])
            size = out.joint_bins ** 2
            out.joint_pos = _dense(d["joint_pos"], size, "paired.joint_pos").reshape(
                out.joint_bins, out.joint_bins)
            out.joint_neg = _dense(d["joint_neg"], size, "paired.joint_neg").reshape(
                out.joint_bins, out.joint_bins)
        except KeyError as exc:
            raise ValueError(f"paired: missing {exc.args[0]!r}") from None
        if hc.bins != hb.bins or (hb.low, hb.high) != (hc.low, hc.high):
            raise ValueError("paired: the two roles' score binnings differ")
        for name, fine, joint in (("pos", (hb.pos, hc.pos), out.joint_pos),
                                  ("neg", (hb.neg, hc.neg), out.joint_neg)):
            rows = np.bincount(out._coarse, weights=fine[0], minlength=out.joint_bins)
            cols = np.bincount(out._coarse, weights=fine[1], minlength=out.joint_bins)
            if not (np.array_equal(rows, joint.sum(axis=1))
                    and np.array_equal(cols, joint.sum(axis=0))):
                raise ValueError(f"paired: joint_{name} does not match the roles' scores")
        return out

    def __repr__(self) -> str:
        return (f"PairedAggregate(requests={self.requests}, labelled={self.labelled}, "
                f"scored={self.baseline_scores.n_pos + self.baseline_scores.n_neg})")


def _coarse_means(coarse: np.ndarray, count: np.ndarray, value: np.ndarray, k: int
                  ) -> np.ndarray:
    """Count-weighted mean of ``value`` over the fine bins of each coarse bin (0 if empty)."""
    weight = count.astype(np.float64)
    total = np.bincount(coarse, weights=weight, minlength=k)
    summed = np.bincount(coarse, weights=weight * np.nan_to_num(value), minlength=k)
    return np.divide(summed, total, out=np.zeros(k), where=total > 0)


def _table(data: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A non-negative integer table of ``shape`` from nested lists."""
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: must be nested lists of counts") from None
    if arr.shape != shape or (arr < 0).any() or (arr != np.floor(arr)).any():
        raise ValueError(f"{where}: must be {'x'.join(map(str, shape))} non-negative counts")
    return arr.astype(np.int64)
