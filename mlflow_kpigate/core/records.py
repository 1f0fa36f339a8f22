"""What the Metrics Collector records: predictions, labels, and the labels' wire format.

A :class:`Prediction` is one logged row (served, or shadow-scored) as the embedded router
and the in-cluster collector write it; a :class:`Label` is the late-arriving truth for a
request id; :func:`parse_feedback` reads the ``/feedback`` body both of them accept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_kpigate.core.errors import PayloadError

#: The two roles a prediction can be logged under.
ROLES: tuple[str, str] = ("baseline", "candidate")
#: File name of the prediction log inside a deployment directory.
PREDICTIONS_DB = "predictions.db"
#: The value recorded for a segment field that a prediction's input lacks (or left empty).
UNKNOWN_SEGMENT = "unknown"


def is_number(x: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Prediction:
    """One logged prediction: a served (or shadow-scored) input row.

    ``score``/``predicted`` are ``None`` when the model failed or its output carries no
    usable score or 0/1 prediction; ``latency_s`` is ``None`` when the source does not
    know the model's latency (the row then counts as a request but not in the latency
    histogram). ``segments`` holds the values of the policy's segment
    fields (others are not stored); ``features`` is stored only with ``store_features``.
    """

    request_id: str
    ts: float
    role: str
    version: str
    stage_index: int
    shadow: bool
    latency_s: float | None
    error: bool
    score: float | None
    predicted: int | None
    segments: Mapping[str, str] = field(default_factory=dict)
    features: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"request_id must be a non-empty string, got {self.request_id!r}")
        if not is_number(self.ts) or not math.isfinite(self.ts):
            raise ValueError(f"ts must be a finite number (epoch seconds), got {self.ts!r}")
        if self.role not in ROLES:
            raise ValueError(f"role must be 'baseline' or 'candidate', got {self.role!r}")
        if not isinstance(self.version, str):
            raise ValueError(f"version must be a string, got {self.version!r}")
        if (
            isinstance(self.stage_index, bool)
            or not isinstance(self.stage_index, (int, np.integer))
            or self.stage_index < 0
        ):
            raise ValueError(f"stage_index must be an integer >= 0, got {self.stage_index!r}")
        if self.latency_s is not None and (not is_number(self.latency_s) or not (
            math.isfinite(self.latency_s) and self.latency_s > 0
        )):
            raise ValueError(f"latency_s must be a finite number > 0 or None (unknown), "
                             f"got {self.latency_s!r}")
        if self.score is not None and (not is_number(self.score) or math.isnan(self.score)):
            raise ValueError(f"score must be a number or None, got {self.score!r}")
        if self.predicted is not None and (
            not is_number(self.predicted) or self.predicted not in (0, 1)
        ):
            raise ValueError(f"predicted must be 0, 1 or None, got {self.predicted!r}")
        if not isinstance(self.segments, Mapping):
            raise ValueError("segments must be a mapping from segment field to value")


@dataclass(frozen=True)
class Label:
    """The ground truth for one request id, with the business values arriving with it."""

    request_id: str
    label: int
    values: Mapping[str, float] | None = None


@dataclass(frozen=True)
class LabelOutcome:
    """One logged row that a label just matched (what the router counts as tp/fp/tn/fn)."""

    role: str
    version: str
    shadow: bool
    outcome: str  # "tp" | "fp" | "tn" | "fn"


@dataclass(frozen=True)
class LabelResult:
    """What :meth:`Collector.add_labels` did.

    ``matched``: labels recorded; ``unknown``: ids with no logged prediction (not stored);
    ``duplicates``: labels for ids already labelled (ignored: the first label wins);
    ``outcomes``: the confusion cell of every row the matched labels applied to.
    """

    matched: int
    unknown: tuple[str, ...]
    duplicates: int
    outcomes: tuple[LabelOutcome, ...] = ()


def parse_feedback(data: Any) -> list[Label]:
    """Labels from a ``/feedback`` body: ``{"request_id", "label", "values"?}`` or
    ``{"labels": [...]}``. ``PayloadError`` naming the offending field."""
    if not isinstance(data, dict):
        raise PayloadError(f"body must be a JSON object, got {type(data).__name__}")
    if "labels" in data:
        extra = sorted(set(data) - {"labels"})
        if extra:
            raise PayloadError(f"unknown field {extra[0]!r} next to 'labels'")
        items = data["labels"]
        if not isinstance(items, list):
            raise PayloadError(f"labels must be a list, got {type(items).__name__}")
        return [_one_label(item, f"labels[{i}].") for i, item in enumerate(items)]
    return [_one_label(data, "")]


def _one_label(item: Any, where: str) -> Label:
    if not isinstance(item, dict):
        raise PayloadError(f"{where or 'body'} must be an object, got {type(item).__name__}")
    extra = sorted(set(item) - {"request_id", "label", "values"})
    if extra:
        raise PayloadError(f"{where}{extra[0]}: unknown field (expected request_id, label, "
                           "values)")
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise PayloadError(f"{where}request_id: must be a non-empty string, got {request_id!r}")
    label = item.get("label")
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (0, 1):
        raise PayloadError(f"{where}label: must be 0 or 1, got {label!r}")
    values = item.get("values")
    if values is not None:
        if not isinstance(values, dict):
            raise PayloadError(f"{where}values: must be an object of numbers")
        for name, value in values.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise PayloadError(f"{where}values.{name}: must be a finite number, "
                                   f"got {value!r}")
    return Label(request_id, int(label), values)
