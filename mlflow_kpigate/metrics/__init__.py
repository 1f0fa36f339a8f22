"""The Metrics Collector: predictions, late labels, latency and errors → KPI samples.

:class:`Collector` is the embedded implementation (SQLite under the deployment directory),
:mod:`.prometheus` reads the same samples from Prometheus for cluster rollouts; both
implement :class:`~mlflow_kpigate.rollout.ports.SampleSource`. The records they keep are
in :mod:`mlflow_kpigate.core.records`. :class:`SegmentWriter` is the router's
write-before-answer log that a ``Collector(segments=...)`` ingests.
"""

from __future__ import annotations

from mlflow_kpigate.metrics.collector import Collector, CollectorError
from mlflow_kpigate.metrics.segment_ingest import IngestLoop, IngestResult
from mlflow_kpigate.metrics.segment_log import SegmentWriter

__all__ = ["Collector", "CollectorError", "IngestLoop", "IngestResult", "SegmentWriter"]
