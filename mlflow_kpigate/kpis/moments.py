"""Streaming, mergeable first and second moments (Welford updates, Chan et al. merges).

Both classes keep a fixed-size state (``O(1)`` for :class:`Moments`, ``O(k^2)`` for
:class:`CoMoments` over ``k`` named values), so they can summarise any number of
observations and be combined across workers, windows or stages without revisiting data.
Each incoming chunk is reduced with numpy first and then merged into the running state
with Chan's parallel formula, which is both faster and numerically safer than a per-element
Welford loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["CoMoments", "Moments", "as_float_array"]


def as_float_array(values: ArrayLike, name: str, *, allow_inf: bool = False) -> np.ndarray:
    """Return ``values`` as a 1-D float64 array, or raise ``ValueError`` naming ``name``.

    Scalars are accepted as a single observation. NaN is always rejected because a silent
    NaN would poison every running sum it touches; infinities only when ``allow_inf``.
    """
    arr = np.asarray(values)
    # Strings would otherwise be parsed as numbers by numpy, hiding a wrong column.
    if arr.dtype.kind not in "biufO":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    try:
        arr = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    elif arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size:
        if allow_inf:
            if np.isnan(arr).any():
                raise ValueError(f"{name} contains NaN")
        elif not np.isfinite(arr).all():
            bad = arr[~np.isfinite(arr)][0]
            raise ValueError(f"{name} must be finite, found {bad}")
    return arr


def _chan(
    n_a: int, mean_a: Any, m2_a: Any, n_b: int, mean_b: Any, m2_b: Any
) -> tuple[int, Any, Any]:
    """Combine two (count, mean, centred second moment) summaries (Chan et al., 1979).

    Works for scalars and, with ``m2`` as a co-moment matrix, for mean vectors.
    """
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + np.multiply.outer(delta, delta) * (n_a * n_b / n)
    return n, mean, m2


class Moments:
    """Count, mean and centred sum of squares of a stream of numbers.

    ``variance()`` uses ``ddof=1``. Merging is exact up to floating-point rounding, so
    merging per-chunk summaries gives the same result as one pass over all the data.
    """

    def __init__(self) -> None:
        self.n: int = 0
        self.mean: float = 0.0
        self.m2: float = 0.0

    def update(self, x: ArrayLike) -> None:
        """Add observations (finite numbers; ``ValueError`` otherwise)."""
        arr = as_float_array(x, "x")
        if arr.size == 0:
            return
        mean_b = float(arr.mean())
        m2_b = float(np.dot(arr - mean_b, arr - mean_b))
        self.n, mean, m2 = _chan(self.n, self.mean, self.m2, arr.size, mean_b, m2_b)
        self.mean, self.m2 = float(mean), float(m2)

    def merge(self, other: Moments) -> None:
        """Add the observations summarised by ``other`` (in place)."""
        if not isinstance(other, Moments):
            raise ValueError(f"can only merge Moments, not {type(other).__name__}")
        self.n, mean, m2 = _chan(self.n, self.mean, self.m2, other.n, other.mean, other.m2)
        self.mean, self.m2 = float(mean), float(m2)

    def variance(self) -> float:
        """Sample variance (``ddof=1``); NaN with fewer than two observations."""
        if self.n < 2:
            return math.nan
        return max(self.m2, 0.0) / (self.n - 1)

    def copy(self) -> Moments:
        """An independent copy."""
        out = Moments()
        out.n, out.mean, out.m2 = self.n, self.mean, self.m2
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Moments:
        """Rebuild from :meth:`to_dict` output (``ValueError`` if malformed)."""
        out = cls()
        out.n = _count(d, "n", "moments")
        out.mean = _number(d, "mean", "moments")
        out.m2 = _number(d, "m2", "moments")
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Moments):
            return NotImplemented
        return (self.n, self.mean, self.m2) == (other.n, other.mean, other.m2)

    def __repr__(self) -> str:
        return f"Moments(n={self.n}, mean={self.mean!r}, variance={self.variance()!r})"


class CoMoments:
    """Running mean vector and co-moment matrix of a fixed tuple of named values.

    Used for business KPIs (ratios of means, e.g. fraud loss per transaction), whose delta
    method variance needs the covariance of numerator and denominator. State is
    ``O(k^2)`` in the number of names and independent of the number of observations.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if isinstance(names, str):
            # A bare string would otherwise be split into one name per character.
            raise ValueError("names must be a sequence of strings, not a single string")
        names = tuple(names)
        if not names:
            raise ValueError("names must not be empty")
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"names must be non-empty strings, got {name!r}")
        if len(set(names)) != len(names):
            dup = next(x for x in names if names.count(x) > 1)
            raise ValueError(f"names must be unique, {dup!r} appears twice")
        self.names: tuple[str, ...] = names
        self._index = {name: i for i, name in enumerate(names)}
        self.n: int = 0
        self._mean = np.zeros(len(names))
        self._comoment = np.zeros((len(names), len(names)))

    def _column(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise ValueError(f"unknown value name {name!r}; known: {list(self.names)}") from None

    def update(self, values: Mapping[str, ArrayLike]) -> None:
        """Add observations: ``values[name]`` for every name, equal lengths, finite.

        Names not in :attr:`names` are ignored (a collector may log more values than the
        policy uses; a typo still fails because the intended name is then missing).
        """
        if not isinstance(values, Mapping):
            raise ValueError("values must be a mapping from value name to array")
        columns = []
        length: int | None = None
        for name in self.names:
            if name not in values:
                raise ValueError(f"values is missing {name!r}")
            col = as_float_array(values[name], f"values[{name!r}]")
            if length is None:
                length = col.size
            elif col.size != length:
                raise ValueError(
                    f"values[{name!r}] has length {col.size}, expected {length} "
                    f"(the length of values[{self.names[0]!r}])"
                )
            columns.append(col)
        if not length:
            return
        data = np.column_stack(columns)
        mean_b = data.mean(axis=0)
        centred = data - mean_b
        comoment_b = centred.T @ centred
        self.n, self._mean, self._comoment = _chan(
            self.n, self._mean, self._comoment, length, mean_b, comoment_b
        )

    def merge(self, other: CoMoments) -> None:
        """Add the observations summarised by ``other`` (in place; names must match)."""
        if not isinstance(other, CoMoments):
            raise ValueError(f"can only merge CoMoments, not {type(other).__name__}")
        if other.names != self.names:
            raise ValueError(f"names differ: {list(self.names)} vs {list(other.names)}")
        self.n, self._mean, self._comoment = _chan(
            self.n, self._mean, self._comoment, other.n, other._mean, other._comoment
        )

    def mean(self, name: str) -> float:
        """Mean of ``name``; NaN before any observation."""
        i = self._column(name)
        return float(self._mean[i]) if self.n else math.nan

    def total(self, name: str) -> float:
        """Sum of ``name`` over all observations."""
        return float(self._mean[self._column(name)] * self.n)

    def cov(self, a: str, b: str) -> float:
        """Sample covariance of ``a`` and ``b`` (``ddof=1``); NaN with fewer than two rows."""
        i, j = self._column(a), self._column(b)
        if self.n < 2:
            return math.nan
        return float(self._comoment[i, j]) / (self.n - 1)

    def copy(self) -> CoMoments:
        """An independent copy."""
        out = CoMoments(self.names)
        out.n = self.n
        out._mean = self._mean.copy()
        out._comoment = self._comoment.copy()
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (the co-moment matrix as nested lists)."""
        return {
            "names": list(self.names),
            "n": self.n,
            "mean": [float(v) for v in self._mean],
            "comoment": [[float(v) for v in row] for row in self._comoment],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CoMoments:
        """Rebuild from :meth:`to_dict` output (``ValueError`` if malformed)."""
        if not isinstance(d, Mapping) or "names" not in d:
            raise ValueError("comoments: missing 'names'")
        out = cls(d["names"])
        k = len(out.names)
        out.n = _count(d, "n", "comoments")
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            comoment = np.asarray(d["comoment"], dtype=np.float64)
        except KeyError as exc:
            raise ValueError(f"comoments: missing {exc.args[0]!r}") from None
        except (TypeError, ValueError):
            raise ValueError("comoments: 'mean' and 'comoment' must be numbers") from None
        if mean.shape != (k,) or comoment.shape != (k, k):
            raise ValueError(f"comoments: 'mean' must have {k} entries and 'comoment' {k}x{k}")
        out._mean, out._comoment = mean, comoment
        return out

    def __repr__(self) -> str:
        return f"CoMoments(names={self.names!r}, n={self.n})"


def _count(d: Mapping[str, Any], key: str, where: str) -> int:
    """A non-negative integer field of a serialised state."""
    if not isinstance(d, Mapping) or key not in d:
        raise ValueError(f"{where}: missing {key!r}")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{where}: {key!r} must be a non-negative integer, got {value!r}")
    return int(value)


def _number(d: Mapping[str, Any], key: str, where: str) -> float:
    """A finite float field of a serialised state."""
    if not isinstance(d, Mapping) or key not in d:
        raise ValueError(f"{where}: missing {key!r}")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{where}: {key!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} must be finite, got {value!r}")
    return float(value)
