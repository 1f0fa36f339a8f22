"""Streaming, mergeable, serialisable KPI aggregators (see ``docs/kpis.md``).

Every aggregator keeps a fixed-size state, independent of the number of predictions,
merges by addition (so workers, windows and stages combine freely) and round-trips through
``to_dict`` / ``from_dict`` as plain JSON.
"""

from .aggregate import AggregateSpec, RoleAggregate
from .confusion import RATE_METRICS, Confusion
from .latency import LatencyHistogram
from .moments import CoMoments, Moments
from .scores import ScoreHistogram

__all__ = [
    "RATE_METRICS",
    "AggregateSpec",
    "CoMoments",
    "Confusion",
    "LatencyHistogram",
    "Moments",
    "RoleAggregate",
    "ScoreHistogram",
]
