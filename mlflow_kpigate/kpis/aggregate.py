"""Everything the gate needs about one role (baseline or candidate) over one window or stage.

A :class:`RoleAggregate` bundles the streaming aggregators: request and error counts,
the latency histogram, the confusion matrix and score histogram of matured labelled
predictions, per-segment confusion matrices for fairness KPIs, and co-moments of named
per-prediction values for business KPIs. All of it merges by addition and serialises to
plain JSON, and none of it grows with the number of predictions (segment maps grow only
with the number of distinct segment values).

What it keeps is set by its :class:`~mlflow_kpigate.kpis.spec.AggregateSpec` (re-exported
here); segment columns are grouped by :mod:`mlflow_kpigate.kpis.factorize`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mlflow_kpigate.kpis.confusion import Confusion, as_binary_array
from mlflow_kpigate.kpis.factorize import factorize, segment_key
from mlflow_kpigate.kpis.latency import LatencyHistogram
from mlflow_kpigate.kpis.moments import CoMoments, _count, as_float_array
from mlflow_kpigate.kpis.scores import ScoreHistogram
from mlflow_kpigate.kpis.spec import AggregateSpec

__all__ = ["AggregateSpec", "RoleAggregate"]

#: Format version of :meth:`RoleAggregate.to_dict`, bumped on incompatible changes.
FORMAT_VERSION = 1


class RoleAggregate:
    """Streaming KPI state of one role (baseline or candidate) over a window or stage."""

    def __init__(self, spec: AggregateSpec | None = None) -> None:
        if spec is None:
            spec = AggregateSpec()
        if not isinstance(spec, AggregateSpec):
            raise ValueError(f"spec must be an AggregateSpec, not {type(spec).__name__}")
        self.spec: AggregateSpec = spec
        self.requests: int = 0
        self.errors: int = 0
        self.latency: LatencyHistogram = LatencyHistogram(growth=spec.latency_growth)
        self.confusion: Confusion = Confusion()
        self.scores: ScoreHistogram = ScoreHistogram(bins=spec.score_bins)
        self.segments: dict[str, dict[str, Confusion]] = {f: {} for f in spec.segment_fields}
        self.values: CoMoments | None = CoMoments(spec.value_names) if spec.value_names else None

    # -- updating -------------------------------------------------------------------------

    def add_requests(self, latency_s: ArrayLike, error: ArrayLike | None = None) -> None:
        """Record served requests, labelled or not.

        ``latency_s`` holds one latency (seconds, > 0) per request, errored ones included;
        ``error`` optionally flags the requests that failed (0/1 or bool, same length).
        """
        latency = as_float_array(latency_s, "latency_s")
        n_errors = 0
        if error is not None:
            failed = as_binary_array(error, "error")
            if failed.size != latency.size:
                raise ValueError(
                    f"error has length {failed.size}, expected {latency.size} (one per latency_s)"
                )
            n_errors = int(np.count_nonzero(failed))
        # The histogram validates (> 0) before changing anything, so a bad batch leaves
        # the counters untouched too.
        self.latency.update(latency)
        self.requests += latency.size
        self.errors += n_errors

    def add_labelled(
        self,
        y_true: ArrayLike,
        y_pred: ArrayLike,
        score: ArrayLike | None = None,
        segments: Mapping[str, Sequence[str]] | None = None,
        values: Mapping[str, ArrayLike] | None = None,
    ) -> None:
        """Record matured labelled predictions.

        ``score`` (optional) feeds the AUC histogram. ``segments`` must give every
        ``spec.segment_fields`` entry and ``values`` every ``spec.value_names`` entry, one
        element per prediction; extra keys are ignored. Everything is validated before
        anything is counted, so a rejected batch leaves the aggregate unchanged.
        """
        t = as_binary_array(y_true, "y_true")
        p = as_binary_array(y_pred, "y_pred")
        n = t.size
        if p.size != n:
            raise ValueError(f"y_pred has length {p.size}, expected {n} (the length of y_true)")
        score_bins = None
        if score is not None:
            score_bins = self.scores.bin_index(score)
            if score_bins.size != n:
                raise ValueError(f"score has length {score_bins.size}, expected {n}")
        segment_arrays = self._check_segments(segments, n)
        value_arrays = self._check_values(values, n)

        self.confusion._add_bool(t, p)
        if score_bins is not None:
            self.scores._add(score_bins, t)
        for field, column in segment_arrays.items():
            self._add_segment(field, column, t, p)
        if self.values is not None and value_arrays is not None:
            self.values.update(value_arrays)

    def _check_segments(
        self, segments: Mapping[str, Sequence[str]] | None, n: int
    ) -> dict[str, np.ndarray]:
        fields = self.spec.segment_fields
        if not fields:
            return {}
        if segments is None:
            raise ValueError(f"segments is missing field {fields[0]!r}")
        if not isinstance(segments, Mapping):
            raise ValueError("segments must be a mapping from segment field to values")
        out = {}
        for field in fields:
            if field not in segments:
                raise ValueError(f"segments is missing field {field!r}")
            column = np.asarray(segments[field])
            if column.ndim == 0:
                column = column.reshape(1)
            if column.ndim != 1 or column.size != n:
                raise ValueError(
                    f"segments[{field!r}] must be one value per prediction: expected "
                    f"length {n}, got shape {column.shape}"
                )
            out[field] = column
        return out

    def _check_values(
        self, values: Mapping[str, ArrayLike] | None, n: int
    ) -> dict[str, np.ndarray] | None:
        names = self.spec.value_names
        if not names:
            return None
        if values is None:
            raise ValueError(f"values is missing {names[0]!r}")
        if not isinstance(values, Mapping):
            raise ValueError("values must be a mapping from value name to array")
        out = {}
        for name in names:
            if name not in values:
                raise ValueError(f"values is missing {name!r}")
            column = as_float_array(values[name], f"values[{name!r}]")
            if column.size != n:
                raise ValueError(f"values[{name!r}] has length {column.size}, expected {n}")
            out[name] = column
        return out

    def _add_segment(self, field: str, column: np.ndarray, t: np.ndarray, p: np.ndarray) -> None:
        if column.size == 0:
            return
        uniques, codes = factorize(column)
        k = len(uniques)
        # One bincount over (segment, y_true, y_pred) gives every segment's matrix at once.
        cell = codes * 4
        cell += t.view(np.uint8) * 2
        cell += p.view(np.uint8)
        counts = np.bincount(cell, minlength=4 * k).reshape(k, 4)
        per_value = self.segments[field]
        for value, (tn, fp, fn, tp) in zip(uniques, counts.tolist(), strict=True):
            key = segment_key(value)
            conf = per_value.get(key)
            if conf is None:
                conf = per_value[key] = Confusion()
            conf.merge(Confusion(tp=tp, fp=fp, tn=tn, fn=fn))

    # -- combining ------------------------------------------------------------------------

    def merge(self, other: RoleAggregate) -> None:
        """Add ``other``'s data (in place); ``ValueError`` if the specs differ."""
        if not isinstance(other, RoleAggregate):
            raise ValueError(f"can only merge RoleAggregate, not {type(other).__name__}")
        if other.spec != self.spec:
            raise ValueError(f"specs differ: {self.spec} vs {other.spec}")
        self.requests += other.requests
        self.errors += other.errors
        self.latency.merge(other.latency)
        self.confusion.merge(other.confusion)
        self.scores.merge(other.scores)
        for field, per_value in other.segments.items():
            mine = self.segments[field]
            for value, conf in per_value.items():
                if value in mine:
                    mine[value].merge(conf)
                else:
                    mine[value] = conf.copy()
        if self.values is not None and other.values is not None:
            self.values.merge(other.values)

    def copy(self) -> RoleAggregate:
        """An independent deep copy."""
        out = RoleAggregate(self.spec)
        out.requests, out.errors = self.requests, self.errors
        out.latency = self.latency.copy()
        out.confusion = self.confusion.copy()
        out.scores = self.scores.copy()
        out.segments = {
            field: {value: conf.copy() for value, conf in per_value.items()}
            for field, per_value in self.segments.items()
        }
        out.values = self.values.copy() if self.values is not None else None
        return out

    @property
    def labelled(self) -> int:
        """Number of labelled predictions recorded (``confusion.n``)."""
        return self.confusion.n

    def error_rate(self) -> float:
        """``errors / requests``; NaN before any request."""
        return self.errors / self.requests if self.requests else math.nan

    def nbytes(self) -> int:
        """Bytes held by the numeric arrays of the state (independent of the data size)."""
        total = self.latency.counts.nbytes + self.latency.edges.nbytes
        total += self.scores.pos.nbytes + self.scores.neg.nbytes
        if self.values is not None:
            total += self.values._mean.nbytes + self.values._comoment.nbytes
        return total

    # -- serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (plain ints, floats, lists, strings, None)."""
        return {
            "version": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "requests": self.requests,
            "errors": self.errors,
            "latency": self.latency.to_dict(),
            "confusion": self.confusion.to_dict(),
            "scores": self.scores.to_dict(),
            "segments": {
                field: {value: conf.to_dict() for value, conf in per_value.items()}
                for field, per_value in self.segments.items()
            },
            "values": self.values.to_dict() if self.values is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoleAggregate:
        """Rebuild from :meth:`to_dict` output (``ValueError`` if malformed)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"aggregate: expected a mapping, got {type(d).__name__}")
        version = d.get("version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"aggregate: unsupported format version {version!r} (expected {FORMAT_VERSION})"
            )
        for key in ("spec", "latency", "confusion", "scores", "segments"):
            if key not in d:
                raise ValueError(f"aggregate: missing {key!r}")
        out = cls(AggregateSpec.from_dict(d["spec"]))
        out.requests = _count(d, "requests", "aggregate")
        out.errors = _count(d, "errors", "aggregate")
        if out.errors > out.requests:
            raise ValueError("aggregate: 'errors' exceeds 'requests'")
        out.latency = LatencyHistogram.from_dict(d["latency"])
        out.confusion = Confusion.from_dict(d["confusion"])
        out.scores = ScoreHistogram.from_dict(d["scores"])
        # The latency layout is kept as stored, not checked against the spec's default:
        # sources that rebuild histograms from Prometheus buckets use their own layout, and
        # merging two different layouts is refused by LatencyHistogram.merge anyway.
        if out.scores.bins != out.spec.score_bins:
            raise ValueError("aggregate: score bins do not match the spec")
        segments = d["segments"]
        if not isinstance(segments, Mapping) or set(segments) != set(out.spec.segment_fields):
            raise ValueError(
                "aggregate: 'segments' must have exactly the fields "
                f"{list(out.spec.segment_fields)}"
            )
        for field in out.spec.segment_fields:
            per_value = segments[field]
            if not isinstance(per_value, Mapping):
                raise ValueError(f"aggregate: segments[{field!r}] must be a mapping")
            out.segments[field] = {
                str(value): Confusion.from_dict(conf) for value, conf in per_value.items()
            }
        values = d.get("values")
        if out.spec.value_names:
            if values is None:
                raise ValueError("aggregate: missing 'values'")
            out.values = CoMoments.from_dict(values)
            if out.values.names != out.spec.value_names:
                raise ValueError("aggregate: value names do not match the spec")
        elif values is not None:
            raise ValueError("aggregate: 'values' given but the spec has no value names")
        return out

    def __repr__(self) -> str:
        return (
            f"RoleAggregate(requests={self.requests}, errors={self.errors}, "
            f"labelled={self.labelled})"
        )
