"""The Metrics Collector: predictions, late labels, latency and errors → KPI samples.

:class:`Collector` is the embedded implementation (SQLite under the deployment directory),
:mod:`.prometheus` reads the same samples from Prometheus for cluster rollouts; both
implement :class:`~mlflow_kpigate.rollout.ports.SampleSource`. The records they keep are
in :mod:`mlflow_kpigate.core.records`.
"""

from __future__ import annotations

from mlflow_kpigate.metrics.collector import Collector, CollectorError

__all__ = ["Collector", "CollectorError"]
