"""Binary confusion-matrix counts and the proportion KPIs derived from them.

Four integers are a sufficient statistic for every proportion KPI of a binary classifier,
so the state is exact, ``O(1)`` in size and trivially mergeable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["RATE_METRICS", "Confusion", "as_binary_array"]

#: ``rate(metric)`` -> which (successes, trials) counts define each proportion.
RATE_METRICS: tuple[str, ...] = (
    "precision",
    "recall",
    "accuracy",
    "false_positive_rate",
    "false_negative_rate",
    "true_negative_rate",
    "positive_rate",
)


def as_binary_array(values: ArrayLike, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D bool array, or raise ``ValueError`` naming ``name``.

    Accepts booleans and numbers equal to 0 or 1 (ints or floats); a scalar is one
    observation. Anything else (2, 0.5, NaN, strings, None) is rejected rather than
    thresholded, because a silently mis-coded label would corrupt every KPI.
    """
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    elif arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "b":
        return arr
    if arr.size == 0:
        return np.zeros(0, dtype=bool)
    if kind in "iu":
        # min/max is two cheap reductions, much faster than an elementwise membership test.
        if arr.min() >= 0 and arr.max() <= 1:
            return arr.astype(bool)
        bad = arr[(arr != 0) & (arr != 1)][0].item()
        raise ValueError(f"{name} must contain only 0/1 or booleans, found {bad!r}")
    if kind == "f":
        ok = (arr == 0) | (arr == 1)
        if ok.all():
            return arr.astype(bool)
        bad = arr[~ok][0].item()
        raise ValueError(f"{name} must contain only 0/1 or booleans, found {bad!r}")
    raise ValueError(f"{name} must contain only 0/1 or booleans, got dtype {arr.dtype}")


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass
class Confusion:
    """Counts of true/false positives/negatives of a binary classifier.

    Metric methods return NaN when their denominator is zero (e.g. precision before the
    model has predicted any positive), never raise.
    """

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        """Count labelled predictions (0/1 or bool arrays of equal length)."""
        t = as_binary_array(y_true, "y_true")
        p = as_binary_array(y_pred, "y_pred")
        if t.size != p.size:
            raise ValueError(
                f"y_true and y_pred must have the same length, got {t.size} and {p.size}"
            )
        self._add_bool(t, p)

    def _add_bool(self, t: np.ndarray, p: np.ndarray) -> None:
        """Count already validated bool arrays (shared with the segment path)."""
        # Three popcounts beat a bincount over 2*t+p, which needs an int array first.
        tp = int(np.count_nonzero(t & p))
        positives = int(np.count_nonzero(t))
        predicted = int(np.count_nonzero(p))
        self.tp += tp
        self.fn += positives - tp
        self.fp += predicted - tp
        self.tn += t.size - positives - predicted + tp

    def merge(self, other: Confusion) -> None:
        """Add ``other``'s counts (in place)."""
        if not isinstance(other, Confusion):
            raise ValueError(f"can only merge Confusion, not {type(other).__name__}")
        self.tp += other.tp
        self.fp += other.fp
        self.tn += other.tn
        self.fn += other.fn

    def copy(self) -> Confusion:
        """An independent copy."""
        return Confusion(self.tp, self.fp, self.tn, self.fn)

    @property
    def n(self) -> int:
        """Number of labelled predictions."""
        return self.tp + self.fp + self.tn + self.fn

    @property
    def positives(self) -> int:
        """Actual positives (``tp + fn``)."""
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        """Actual negatives (``fp + tn``)."""
        return self.fp + self.tn

    @property
    def predicted_positives(self) -> int:
        """Predicted positives (``tp + fp``)."""
        return self.tp + self.fp

    def precision(self) -> float:
        """``tp / (tp + fp)``."""
        return _ratio(*self.rate("precision"))

    def recall(self) -> float:
        """``tp / (tp + fn)`` (true positive rate, sensitivity)."""
        return _ratio(*self.rate("recall"))

    def f1(self) -> float:
        """``2 tp / (2 tp + fp + fn)``, the harmonic mean of precision and recall."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def accuracy(self) -> float:
        """``(tp + tn) / n``."""
        return _ratio(*self.rate("accuracy"))

    def false_positive_rate(self) -> float:
        """``fp / (fp + tn)``."""
        return _ratio(*self.rate("false_positive_rate"))

    def false_negative_rate(self) -> float:
        """``fn / (fn + tp)``."""
        return _ratio(*self.rate("false_negative_rate"))

    def true_negative_rate(self) -> float:
        """``tn / (tn + fp)`` (specificity)."""
        return _ratio(*self.rate("true_negative_rate"))

    def positive_rate(self) -> float:
        """``(tp + fp) / n``, the share of predictions that are positive."""
        return _ratio(*self.rate("positive_rate"))

    def rate(self, metric: str) -> tuple[int, int]:
        """``(successes, trials)`` of a proportion metric, for binomial statistics.

        ``metric`` is one of :data:`RATE_METRICS`; anything else is a ``ValueError``
        (``f1`` is not a binomial proportion, so it is not offered here).
        """
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        if metric == "precision":
            return tp, tp + fp
        if metric == "recall":
            return tp, tp + fn
        if metric == "accuracy":
            return tp + tn, self.n
        if metric == "false_positive_rate":
            return fp, fp + tn
        if metric == "false_negative_rate":
            return fn, fn + tp
        if metric == "true_negative_rate":
            return tn, tn + fp
        if metric == "positive_rate":
            return tp + fp, self.n
        raise ValueError(f"unknown rate metric {metric!r}; expected one of {list(RATE_METRICS)}")

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable state."""
        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Confusion:
        """Rebuild from :meth:`to_dict` output (``ValueError`` if malformed)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"confusion: expected a mapping, got {type(d).__name__}")
        counts = []
        for key in ("tp", "fp", "tn", "fn"):
            if key not in d:
                raise ValueError(f"confusion: missing {key!r}")
            value = d[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(
                    f"confusion: {key!r} must be a non-negative integer, got {value!r}"
                )
            counts.append(int(value))
        return cls(*counts)
