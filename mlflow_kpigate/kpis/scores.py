"""Per-class score histograms: streaming ROC AUC with DeLong variance and an error bound.

An exact AUC needs every score (it is a rank statistic), so its memory grows with the
stream. Binning the scores into ``bins`` equal-width bins keeps two count vectors instead.
The binned AUC orders pairs in different bins exactly and scores pairs in the same bin as
ties (1/2), so it is off by at most half the share of same-bin pairs, which
:meth:`ScoreHistogram.auc_error_bound` reports from the counts themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlflow_kpigate.kpis.confusion import as_binary_array
from mlflow_kpigate.kpis.moments import as_float_array

__all__ = ["ScoreHistogram"]


class ScoreHistogram:
    """Counts of positive and negative examples per score bin.

    Bins are ``bins`` equal-width intervals over ``[low, high]``; bin ``k`` is
    ``[low + k*w, low + (k+1)*w)`` with the last one closed. Scores outside the range
    (including infinities) are clipped into the edge bins; NaN is a ``ValueError``.
    """

    def __init__(self, bins: int = 1000, low: float = 0.0, high: float = 1.0) -> None:
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        try:
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            raise ValueError(f"low and high must be numbers, got {low!r}, {high!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"low and high must be finite with low < high, got {low}, {high}")
        self.bins: int = int(bins)
        self.low: float = low
        self.high: float = high
        self.pos: np.ndarray = np.zeros(self.bins, dtype=np.int64)
        self.neg: np.ndarray = np.zeros(self.bins, dtype=np.int64)

    # -- updating -------------------------------------------------------------------------

    def bin_index(self, score: ArrayLike) -> np.ndarray:
        """Bin of each score (clipped into ``[0, bins - 1]``)."""
        s = as_float_array(score, "score", allow_inf=True)
        scaled = s - self.low
        scaled *= self.bins / (self.high - self.low)
        # Clip while still float so +-inf and huge values never overflow the int cast.
        np.clip(scaled, 0, self.bins - 1, out=scaled)
        return np.floor(scaled, out=scaled).astype(np.intp)

    def bin_centres(self) -> np.ndarray:
        """Centre of every bin (scores equal to a centre are binned without loss)."""
        width = (self.high - self.low) / self.bins
        return self.low + (np.arange(self.bins) + 0.5) * width

    def update(self, y_true: ArrayLike, score: ArrayLike) -> None:
        """Add labelled scores (``y_true`` 0/1 or bool, ``score`` numbers, equal lengths)."""
        t = as_binary_array(y_true, "y_true")
        idx = self.bin_index(score)
        if t.size != idx.size:
            raise ValueError(
                f"y_true and score must have the same length, got {t.size} and {idx.size}"
            )
        self._add(idx, t)

    def add_counts(self, pos: ArrayLike, neg: ArrayLike) -> None:
        """Add pre-binned per-class counts (``bins`` non-negative integers each)."""
        p, n = np.asarray(pos), np.asarray(neg)
        if p.shape != self.pos.shape or n.shape != self.neg.shape or (p < 0).any() or (n < 0).any():
            raise ValueError(f"pos and neg must each be {self.bins} non-negative counts")
        self.pos += p.astype(np.int64)
        self.neg += n.astype(np.int64)

    def _add(self, idx: np.ndarray, t: np.ndarray) -> None:
        # One bincount over (bin, label) pairs instead of two passes over masked copies.
        idx <<= 1
        idx |= t
        both = np.bincount(idx, minlength=2 * self.bins).reshape(self.bins, 2)
        self.neg += both[:, 0]
        self.pos += both[:, 1]

    def _check_layout(self, other: ScoreHistogram) -> None:
        if not isinstance(other, ScoreHistogram):
            raise ValueError(f"can only merge ScoreHistogram, not {type(other).__name__}")
        mine = (self.bins, self.low, self.high)
        theirs = (other.bins, other.low, other.high)
        if mine != theirs:
            raise ValueError(f"score binning differs: (bins, low, high) {mine} vs {theirs}")

    def merge(self, other: ScoreHistogram) -> None:
        """Add ``other``'s counts (in place; the binning must be identical)."""
        self._check_layout(other)
        self.pos += other.pos
        self.neg += other.neg

    def copy(self) -> ScoreHistogram:
        """An independent copy."""
        out = ScoreHistogram(self.bins, self.low, self.high)
        out.pos[:] = self.pos
        out.neg[:] = self.neg
        return out

    # -- statistics -----------------------------------------------------------------------

    @property
    def n_pos(self) -> int:
        """Number of positive examples."""
        return int(self.pos.sum())

    @property
    def n_neg(self) -> int:
        """Number of negative examples."""
        return int(self.neg.sum())

    def _placements(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """DeLong's structural components per bin, plus the class totals.

        ``v10[k]`` is the share of negatives a positive in bin ``k`` beats (ties 1/2);
        ``v01[k]`` the share of positives that beat a negative in bin ``k``. They are
        constant within a bin, which is what makes the binned DeLong variance exact.
        """
        pos = self.pos.astype(np.float64)
        neg = self.neg.astype(np.float64)
        n_pos, n_neg = self.n_pos, self.n_neg
        neg_below = np.cumsum(neg) - neg
        pos_above = pos.sum() - np.cumsum(pos)
        v10 = (neg_below + 0.5 * neg) / n_neg if n_neg else np.full(self.bins, math.nan)
        v01 = (pos_above + 0.5 * pos) / n_pos if n_pos else np.full(self.bins, math.nan)
        return v10, v01, n_pos, n_neg

    def auc(self) -> float:
        """Mann-Whitney AUC of the binned scores; NaN without positives or negatives."""
        v10, _, n_pos, n_neg = self._placements()
        if n_pos == 0 or n_neg == 0:
            return math.nan
        return float(np.dot(self.pos, v10) / n_pos)

    def auc_variance(self) -> float:
        """DeLong's variance of :meth:`auc`: ``S10/P + S01/N`` (sample variances, ddof=1).

        NaN when there are fewer than two positives or two negatives.
        """
        v10, v01, n_pos, n_neg = self._placements()
        if n_pos < 2 or n_neg < 2:
            return math.nan
        auc = float(np.dot(self.pos, v10) / n_pos)
        # Centre on the AUC (the mean of both components) before squaring: the textbook
        # E[X^2]-E[X]^2 form cancels catastrophically when the variance is tiny.
        s10 = float(np.dot(self.pos, (v10 - auc) ** 2)) / (n_pos - 1)
        s01 = float(np.dot(self.neg, (v01 - auc) ** 2)) / (n_neg - 1)
        return s10 / n_pos + s01 / n_neg

    def auc_error_bound(self) -> float:
        """Largest possible ``|auc() - exact AUC on the raw scores|``.

        Only same-bin pairs can be mis-scored, each by at most 1/2, so the bound is
        ``0.5 * sum_k pos_k * neg_k / (P * N)``. NaN when :meth:`auc` is NaN.
        """
        n_pos, n_neg = self.n_pos, self.n_neg
        if n_pos == 0 or n_neg == 0:
            return math.nan
        same_bin = float(np.dot(self.pos.astype(np.float64), self.neg.astype(np.float64)))
        return 0.5 * same_bin / n_pos / n_neg

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; counts stored sparsely (non-empty bins only)."""
        return {
            "bins": self.bins,
            "low": self.low,
            "high": self.high,
            "pos": _sparse(self.pos),
            "neg": _sparse(self.neg),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreHistogram:
        """Rebuild from :meth:`to_dict` output (``ValueError`` if malformed)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"scores: expected a mapping, got {type(d).__name__}")
        try:
            out = cls(d["bins"], d["low"], d["high"])
            out.pos = _dense(d["pos"], out.bins, "scores.pos")
            out.neg = _dense(d["neg"], out.bins, "scores.neg")
        except KeyError as exc:
            raise ValueError(f"scores: missing {exc.args[0]!r}") from None
        return out

    def __repr__(self) -> str:
        return (
            f"ScoreHistogram(bins={self.bins}, low={self.low}, high={self.high}, "
            f"n_pos={self.n_pos}, n_neg={self.n_neg})"
        )


def _sparse(counts: np.ndarray) -> dict[str, list[int]]:
    """Non-zero entries of a count vector as parallel index/count lists."""
    index = np.flatnonzero(counts)
    return {"index": index.tolist(), "count": counts[index].tolist()}


def _dense(d: Any, size: int, where: str) -> np.ndarray:
    """Inverse of :func:`_sparse`, validating indices and counts."""
    if not isinstance(d, Mapping) or "index" not in d or "count" not in d:
        raise ValueError(f"{where}: expected {{'index': [...], 'count': [...]}}")
    try:
        index = np.asarray(d["index"], dtype=np.int64).reshape(-1)
        count = np.asarray(d["count"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: index and count must be integer lists") from None
    if index.size != count.size:
        raise ValueError(f"{where}: index and count have different lengths")
    if index.size and (index.min() < 0 or index.max() >= size):
        raise ValueError(f"{where}: bin index out of range [0, {size})")
    if index.size and count.min() < 0:
        raise ValueError(f"{where}: counts must be non-negative")
    if np.unique(index).size != index.size:
        raise ValueError(f"{where}: duplicate bin index")
    out = np.zeros(size, dtype=np.int64)
    out[index] = count
    return out
