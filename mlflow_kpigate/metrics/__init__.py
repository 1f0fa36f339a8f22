"""The Metrics Collector: predictions, late labels, latency and errors → KPI samples.

``Collector`` is the embedded implementation (SQLite under the deployment directory). Any
source of samples the controller can evaluate implements :class:`SampleSource`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..gate.estimators import StageSample
from .collector import (
    ROLES,
    Collector,
    CollectorError,
    Label,
    LabelOutcome,
    LabelResult,
    Prediction,
)

__all__ = [
    "ROLES",
    "Collector",
    "CollectorError",
    "Label",
    "LabelOutcome",
    "LabelResult",
    "Prediction",
    "SampleSource",
]


@runtime_checkable
class SampleSource(Protocol):
    """What the controller needs from a metrics backend: per-stage KPI aggregates."""

    def stage_samples(self, now: float, maturity_s: float) -> list[StageSample]:
        """One sample per stage seen; labelled KPIs only from labels older than maturity."""
        ...
