"""Streaming, mergeable, serialisable KPI aggregators (see ``docs/kpis.md``).

Every aggregator keeps a fixed-size state, independent of the number of predictions,
merges by addition (so workers, windows and stages combine freely) and round-trips through
``to_dict`` / ``from_dict`` as plain JSON.
"""

from mlflow_kpigate.kpis.aggregate import RoleAggregate
from mlflow_kpigate.kpis.confusion import RATE_METRICS, Confusion
from mlflow_kpigate.kpis.latency import LatencyHistogram
from mlflow_kpigate.kpis.moments import CoMoments, Moments
from mlflow_kpigate.kpis.paired import PairedAggregate
from mlflow_kpigate.kpis.scores import ScoreHistogram
from mlflow_kpigate.kpis.spec import AggregateSpec

__all__ = [
    "RATE_METRICS",
    "AggregateSpec",
    "CoMoments",
    "Confusion",
    "LatencyHistogram",
    "Moments",
    "PairedAggregate",
    "RoleAggregate",
    "ScoreHistogram",
]
