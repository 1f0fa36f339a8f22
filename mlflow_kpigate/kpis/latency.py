"""Latency histogram with fixed log-spaced buckets, plus exact moments of log latency.

Log-spaced buckets give every quantile the same *relative* error bound (``growth - 1``)
whatever the latency scale, with a few hundred buckets covering 0.1 ms to 100 s. The
layout is fixed by ``(low, high, growth)`` rather than adapted to the data, so histograms
from different workers, windows and roles always merge by adding counts, and threshold
KPIs ("share of requests slower than 250 ms") can be counted exactly at a bucket edge.

Alongside the counts it keeps the exact (mergeable) mean and variance of ``log(latency)``
for log-scale mean KPIs, the arithmetic sum, and the minimum and maximum, which make the
edge buckets interpolable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlflow_kpigate.kpis.moments import _chan, _count, _number, as_float_array
from mlflow_kpigate.kpis.scores import _dense, _sparse

__all__ = ["LatencyHistogram"]

_DIRECTIONS = ("up", "down")
# Smallest bucket-width fraction around each edge inside which the logarithmic bucket
# index is double-checked (widened per layout when its rounding error could be larger).
_EDGE_SLACK = 1e-6
# Caps the layout size so that a growth factor a hair above 1 fails loudly.
_MAX_BUCKETS = 1_000_000


class LatencyHistogram:
    """Counts of latencies (seconds) in buckets ``[low * growth**(i-1), low * growth**i)``.

    ``edges`` are ``low * growth**i`` for ``i = 0..m``, with ``m`` the smallest integer
    such that the last edge is ``>= high``. ``counts`` has ``len(edges) + 1`` entries:
    index 0 is the underflow bucket (``< low``), index ``i`` (1..m) is
    ``[edges[i-1], edges[i])`` and the last is the overflow bucket (``>= edges[-1]``).
    """

    def __init__(self, low: float = 1e-4, high: float = 100.0, growth: float = 1.02) -> None:
        try:
            low, high, growth = float(low), float(high), float(growth)
        except (TypeError, ValueError):
            raise ValueError("low, high and growth must be numbers") from None
        if not (math.isfinite(low) and low > 0):
            raise ValueError(f"low must be a finite number > 0, got {low}")
        if not (math.isfinite(high) and high > low):
            raise ValueError(f"high must be finite and greater than low, got {high}")
        if not (math.isfinite(growth) and growth > 1):
            raise ValueError(f"growth must be a finite number > 1, got {growth}")
        self.low: float = low
        self.high: float = high
        self.growth: float = growth
        m = max(1, math.ceil(math.log(high / low) / math.log(growth)))
        # The logarithm can land a hair on either side of an integer; fix up with the
        # same power expression the edges use so that the last edge really is >= high.
        while m > 1 and low * growth ** (m - 1) >= high:
            m -= 1
        while low * growth**m < high:
            m += 1
        if m > _MAX_BUCKETS:
            raise ValueError(
                f"growth {growth} gives {m} buckets between {low} and {high}; "
                f"at most {_MAX_BUCKETS:,} are allowed, use a larger growth"
            )
        self.edges: np.ndarray = low * growth ** np.arange(m + 1, dtype=np.float64)
        self.counts: np.ndarray = np.zeros(m + 2, dtype=np.int64)
        # Bucket j is [_bounds[j], _bounds[j+1]); the infinities make the ends uniform.
        self._bounds = np.concatenate(([-np.inf], self.edges, [np.inf]))
        self._log_low = math.log(low)
        log_growth = math.log(growth)
        self._inv_log_growth = 1.0 / log_growth
        # Worst-case rounding of the computed bucket position for values inside the layout:
        # an ulp of log(x) and of log(low), scaled by 1/log(growth), plus an ulp of the
        # position itself. A 100x margin keeps the slack safely above it.
        span = max(abs(self._log_low), abs(math.log(self.edges[-1]))) + 1.0
        rounding = 2.3e-16 * (2.0 * span / log_growth + m + 1)
        self._edge_slack = max(_EDGE_SLACK, 100.0 * rounding)
        self._n = 0
        self._mean_log = 0.0
        self._m2_log = 0.0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    # -- updating -------------------------------------------------------------------------

    def _bucket_index(self, x: np.ndarray, log_x: np.ndarray) -> np.ndarray:
        """Bucket of each (validated) latency, consistent with ``edges`` to the last bit.

        The closed-form index from the logarithm is several times faster than a binary
        search, but rounding can put a value that lies within a few ulps of an edge on the
        wrong side of it. Only values within ``_edge_slack`` bucket widths of an edge can
        be affected (the rounding error is orders of magnitude smaller), so just those are
        re-placed with a binary search against the actual ``edges``.
        """
        # In-place arithmetic throughout: fresh temporaries cost more (page faults) than
        # the arithmetic itself at chunk sizes of ~1M.
        position = log_x - self._log_low
        position *= self._inv_log_growth  # edge i now sits at position i
        below = np.floor(position)
        position -= below  # offset inside the bucket, in [0, 1)
        position -= 0.5
        np.abs(position, out=position)
        # Extreme layouts (slack >= 1/2) mark everything, i.e. fall back to binary search.
        near_edge = position >= 0.5 - min(self._edge_slack, 0.5)
        np.clip(below, -1, self.counts.size - 2, out=below)
        idx = below.astype(np.intp)
        idx += 1
        if near_edge.any():
            sel = np.flatnonzero(near_edge)
            idx[sel] = np.searchsorted(self.edges, x[sel], side="right")
        return idx

    def update(self, latency_s: ArrayLike) -> None:
        """Add latencies in seconds (finite and > 0, else ``ValueError``)."""
        x = as_float_array(latency_s, "latency_s")
        if x.size == 0:
            return
        nonpositive = x <= 0
        if nonpositive.any():
            raise ValueError(f"latency_s must be > 0 seconds, found {x[nonpositive][0]}")
        log_x = np.log(x)
        self.counts += np.bincount(self._bucket_index(x, log_x), minlength=self.counts.size)
        mean_b = float(log_x.mean())
        log_x -= mean_b
        m2_b = float(np.dot(log_x, log_x))
        self._merge_moments(x.size, mean_b, m2_b)
        self._sum += float(x.sum())
        self._min = min(self._min, float(x.min()))
        self._max = max(self._max, float(x.max()))

    def add_binned(self, counts: ArrayLike, mean_log: float, m2_log: float, total: float) -> None:
        """Add pre-aggregated latencies: per-bucket ``counts`` (this histogram's layout,
        underflow and overflow included) with their log-moments and sum of seconds.

        For sources that already bin (a Prometheus histogram, the simulator); ``mean_log``
        is the mean of their log-latencies and ``m2_log`` the sum of squared deviations.
        """
        c = np.asarray(counts)
        if c.shape != self.counts.shape or (c < 0).any():
            raise ValueError(f"counts must be {self.counts.size} non-negative bucket counts")
        n = int(c.sum())
        if n == 0:
            return
        if not (
            math.isfinite(mean_log)
            and math.isfinite(m2_log)
            and m2_log >= 0
            and math.isfinite(total)
            and total > 0
        ):
            raise ValueError("mean_log, m2_log (>= 0) and total (> 0) must be finite")
        self.counts += c.astype(np.int64)
        self._merge_moments(n, float(mean_log), float(m2_log))
        self._sum += float(total)
        nz = np.flatnonzero(c)
        bounds = self._bounds
        low, high = bounds[nz[0]], bounds[nz[-1] + 1]
        self._min = min(self._min, float(low if math.isfinite(low) else self.low))
        self._max = max(self._max, float(high if math.isfinite(high) else self.edges[-1]))

    def _merge_moments(self, n: int, mean_log: float, m2_log: float) -> None:
        self._n, mean, m2 = _chan(self._n, self._mean_log, self._m2_log, n, mean_log, m2_log)
        self._mean_log, self._m2_log = float(mean), float(m2)

    def _layout(self) -> tuple[float, float, float]:
        return (self.low, self.high, self.growth)

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s observations (in place; the bucket layout must be identical)."""
        if not isinstance(other, LatencyHistogram):
            raise ValueError(f"can only merge LatencyHistogram, not {type(other).__name__}")
        if other._layout() != self._layout():
            raise ValueError(
                f"latency bucket layout differs: (low, high, growth) {self._layout()} "
                f"vs {other._layout()}"
            )
        self.counts += other.counts
        self._merge_moments(other._n, other._mean_log, other._m2_log)
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        out = LatencyHistogram(self.low, self.high, self.growth)
        out.counts[:] = self.counts
        out._n, out._mean_log, out._m2_log = self._n, self._mean_log, self._m2_log
        out._sum, out._min, out._max = self._sum, self._min, self._max
        return out

    # -- statistics -----------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of latencies recorded."""
        return self._n

    @property
    def min(self) -> float:
        """Smallest latency recorded (NaN when empty)."""
        return self._min if self._n else math.nan

    @property
    def max(self) -> float:
        """Largest latency recorded (NaN when empty)."""
        return self._max if self._n else math.nan

    def mean_log(self) -> float:
        """Mean of ``log(latency)`` (exact up to rounding); NaN when empty."""
        return self._mean_log if self._n else math.nan

    def var_log(self) -> float:
        """Sample variance of ``log(latency)`` (``ddof=1``); NaN with fewer than two."""
        if self._n < 2:
            return math.nan
        return max(self._m2_log, 0.0) / (self._n - 1)

    def mean(self) -> float:
        """Arithmetic mean latency in seconds (exact up to rounding); NaN when empty."""
        return self._sum / self._n if self._n else math.nan

    def quantile(self, q: float) -> float:
        """The ``q``-quantile in seconds, interpolated geometrically inside its bucket.

        The bucket is the one holding the ``ceil(q * n)``-th smallest latency, i.e. the
        ``inverted_cdf`` sample quantile, so for values inside ``[low, high)`` the relative
        error against it is at most ``growth - 1``. The edge buckets are bounded by the
        recorded minimum and maximum. NaN when empty.
        """
        if isinstance(q, bool) or not isinstance(q, (int, float, np.floating, np.integer)):
            raise ValueError(f"q must be a number in [0, 1], got {q!r}")
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self._n == 0:
            return math.nan
        cum = np.cumsum(self.counts)
        target = q * self._n
        if target <= 0:
            k = int(np.flatnonzero(self.counts)[0])
            frac = 0.0
        else:
            k = int(np.searchsorted(cum, target, side="left"))
            k = min(k, self.counts.size - 1)  # guards q*n rounding a hair above n
            frac = (target - (cum[k] - self.counts[k])) / self.counts[k]
        lo = max(float(self._bounds[k]), self._min)
        hi = min(float(self._bounds[k + 1]), self._max)
        # The ends are returned as is: lo * (hi/lo)**1 can be one ulp off hi, and q=1
        # should give exactly the recorded maximum.
        if frac <= 0:
            return lo
        if frac >= 1:
            return hi
        return float(lo * (hi / lo) ** frac)

    def snap(self, threshold: float, direction: str = "up") -> float:
        """The nearest bucket edge ``>= threshold`` (``"up"``) or ``<= threshold``
        (``"down"``), clamped to the first/last edge."""
        index = self._snap_index(threshold, direction)
        return float(self.edges[index])

    def _snap_index(self, threshold: float, direction: str) -> int:
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        try:
            t = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be a number, got {threshold!r}") from None
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"threshold must be a finite number > 0 seconds, got {threshold}")
        last = self.edges.size - 1
        if direction == "up":
            return min(int(np.searchsorted(self.edges, t, side="left")), last)
        return max(int(np.searchsorted(self.edges, t, side="right")) - 1, 0)

    def count_above(self, threshold: float, direction: str = "up") -> tuple[int, float]:
        """``(number of latencies >= edge, edge)`` with ``edge = snap(threshold, direction)``.

        Exact: every bucket lies entirely on one side of an edge.
        """
        index = self._snap_index(threshold, direction)
        # Edge i is the lower bound of bucket i + 1.
        return int(self.counts[index + 1 :].sum()), float(self.edges[index])

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: layout, sparse counts, log moments, sum, min, max."""
        return {
            "low": self.low,
            "high": self.high,
            "growth": self.growth,
            "counts": _sparse(self.counts),
            "n": self._n,
            "mean_log": self._mean_log,
            "m2_log": self._m2_log,
            "sum": self._sum,
            "min": self._min if self._n else None,
            "max": self._max if self._n else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyHistogram:
        """Rebuild from :meth:`to_dict` output (``ValueError`` if malformed)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"latency: expected a mapping, got {type(d).__name__}")
        try:
            out = cls(d["low"], d["high"], d["growth"])
            counts = d["counts"]
        except KeyError as exc:
            raise ValueError(f"latency: missing {exc.args[0]!r}") from None
        out.counts = _dense(counts, out.counts.size, "latency.counts")
        out._n = _count(d, "n", "latency")
        if int(out.counts.sum()) != out._n:
            raise ValueError("latency: bucket counts do not add up to 'n'")
        out._mean_log = _number(d, "mean_log", "latency")
        out._m2_log = _number(d, "m2_log", "latency")
        out._sum = _number(d, "sum", "latency")
        if out._n:
            out._min = _number(d, "min", "latency")
            out._max = _number(d, "max", "latency")
        return out

    def __repr__(self) -> str:
        return (
            f"LatencyHistogram(low={self.low}, high={self.high}, growth={self.growth}, n={self._n})"
        )
