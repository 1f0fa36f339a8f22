"""The halves of a prediction: what a request event and a response event each tell.

Everything the gate needs from a request (row count, the policy's segment fields and
business values found among its named columns) and from a response (score and 0/1
prediction per row, read with the embedded router's
:func:`~mlflow_kpigate.core.payloads.interpret_output`) is extracted into small
JSON-serialisable halves, so a half waiting for its partner is stored without the
request's features. Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlflow_kpigate.core.payloads import interpret_output
from mlflow_kpigate.core.records import UNKNOWN_SEGMENT
from mlflow_kpigate.metrics.cloudevent_envelope import CloudEvent
from mlflow_kpigate.metrics.cloudevent_payloads import (
    failure,
    json_body,
    raw_output,
    read_table,
    rows_of,
)

__all__ = ["RequestHalf", "ResponseHalf", "read_request", "read_response"]


@dataclass(frozen=True)
class RequestHalf:
    """What a request event tells: per row, the segment values and business values."""

    n_rows: int
    segments: tuple[Mapping[str, str], ...]
    values: tuple[Mapping[str, float], ...]

    def to_json(self) -> str:
        """Compact JSON for the pending-halves table."""
        return json.dumps({"n": self.n_rows, "segments": [dict(s) for s in self.segments],
                           "values": [dict(v) for v in self.values]})

    @classmethod
    def from_json(cls, text: str) -> RequestHalf:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(int(d["n"]), tuple(d["segments"]), tuple(d["values"]))


@dataclass(frozen=True)
class ResponseHalf:
    """What a response event tells: per row, the score and 0/1 prediction.

    ``error`` is set when the payload reports a failure (Seldon's ``status: FAILURE``);
    ``understood`` is False when the output is not a binary classifier's (no scores).
    """

    n_rows: int
    scores: tuple[float | None, ...]
    predicted: tuple[int | None, ...]
    understood: bool
    error: str | None = None

    def to_json(self) -> str:
        """Compact JSON for the pending-halves table."""
        return json.dumps({"n": self.n_rows, "scores": list(self.scores),
                           "predicted": list(self.predicted), "understood": self.understood,
                           "error": self.error})

    @classmethod
    def from_json(cls, text: str) -> ResponseHalf:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(int(d["n"]), tuple(d["scores"]), tuple(d["predicted"]),
                   bool(d["understood"]), d["error"])


def _segment(value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN_SEGMENT
    return str(value)


def _value(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def read_request(event: CloudEvent, segment_fields: Sequence[str],
                 value_names: Sequence[str]) -> RequestHalf:
    """Row count, segment values and business values of a request event.

    As in the embedded router, a segment field missing from the columns, or empty, is
    ``"unknown"``; business values are taken from columns of that name when they hold
    finite numbers (labels may still bring them, and win).
    """
    frame = read_table(event)
    n = len(frame)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    segments: list[dict[str, str]] = [{} for _ in range(n)]
    for name in segment_fields:
        cells = frame[name].tolist() if name in columns else [None] * n
        for row, cell in zip(segments, cells, strict=True):
            row[name] = _segment(cell)
    values: list[dict[str, float]] = [{} for _ in range(n)]
    for name in value_names:
        if name not in columns:
            continue
        for value_row, cell in zip(values, frame[name].tolist(), strict=True):
            number = _value(cell)
            if number is not None:
                value_row[name] = number
    return RequestHalf(n, tuple(segments), tuple(values))


def read_response(event: CloudEvent, threshold: float) -> ResponseHalf:
    """Scores and 0/1 predictions of a response event, per row.

    A reported failure gives an errored half; output that is not a binary classifier's
    (multi-class, strings, a mapping) gives ``understood=False`` and no scores, as in the
    embedded router.
    """
    body = json_body(event)
    kind = event.kind
    failed = failure(body)
    if failed is not None:
        return ResponseHalf(0, (), (), False, failed)
    raw = raw_output(body, kind)
    n = rows_of(raw)
    out = interpret_output(raw, n, threshold)
    return ResponseHalf(n, tuple(out.scores), tuple(out.predicted), out.understood)
