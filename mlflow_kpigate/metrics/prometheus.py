"""The Prometheus metrics source: a cluster rollout's KPI samples, read back from Prometheus.

:class:`PrometheusSource` implements :class:`~mlflow_kpigate.rollout.ports.SampleSource` for one
deployment. Per stage and role it rebuilds the :class:`~mlflow_kpigate.kpis.RoleAggregate`
the gate consumes from three families of series, one reader each:

* **the kpigate collector's** ``kpigate_stage_*`` series, cumulative per stage
  (:mod:`.prometheus_collector_series`);
* **Seldon's** request counters (``requests_from: seldon``), which have no stage label, so
  each stage's share is their growth over the stage's window (:class:`StageWindow`)
  (:mod:`.prometheus_seldon_series`);
* **custom PromQL** per KPI (``metrics.queries``, :mod:`.prometheus_queries`).

Queries go through one :class:`~.prometheus_session.Session` per evaluation: anything
that keeps an evaluation from seeing its data raises :class:`MetricsUnavailable`, after
bounded retries (:mod:`.prometheus_session`); the controller turns it into a hold, never
a promotion. Which policies the source can measure, and where requests come from, is
:mod:`.prometheus_policy`.

Departure from the design notes: the latency histograms of the collector's series keep
the collector's own bucket layout (0.001 s × 1.25^i, see
:data:`~mlflow_kpigate.metrics.exposition.LATENCY_BUCKETS`) instead of the aggregate spec's
default 1.02 layout, so that every Prometheus bucket is one histogram bucket with the same
bounds: quantiles interpolate inside real buckets and the gate's exceedance counts at
bucket edges stay exact. Such aggregates merge with each other (one source always uses one
layout) but not with the embedded collector's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.history import StageWindow
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import AggregateSpec, LatencyHistogram
from mlflow_kpigate.metrics import exposition as ex
from mlflow_kpigate.metrics import promql
from mlflow_kpigate.metrics.prometheus_collector_series import CollectorSeries
from mlflow_kpigate.metrics.prometheus_policy import check_policy, requests_source
from mlflow_kpigate.metrics.prometheus_queries import QueryKpis
from mlflow_kpigate.metrics.prometheus_samples import Samples, Span
from mlflow_kpigate.metrics.prometheus_seldon_series import (
    EXECUTOR_METRIC,
    V2_INFER_SECONDS,
    V2_INFER_TOTAL,
    ExecutorSeries,
    ModelSeries,
)
from mlflow_kpigate.metrics.prometheus_session import MetricsUnavailable, Session
from mlflow_kpigate.policy import KpiQuery, Policy, RequestsFrom

__all__ = [
    "EXECUTOR_METRIC",
    "V2_INFER_SECONDS",
    "V2_INFER_TOTAL",
    "MetricsUnavailable",
    "PrometheusSource",
    "StageWindow",
    "check_policy",
    "requests_source",
]


class PrometheusSource:
    """KPI samples of one cluster rollout, read from Prometheus (a ``SampleSource``).

    ``url`` is Prometheus' base URL (``None``: the policy's ``metrics.prometheus.url``);
    ``deployment`` and ``namespace`` name the rollout; ``seldon_version`` is 1, 2 or
    ``None`` (no Seldon: everything from the kpigate collector); ``windows`` returns the
    stage windows so far. ``timeout``, ``retries`` and ``max_wait`` default to the
    policy's ``metrics.prometheus`` values; ``clock`` and ``sleep`` time the retries.
    Raises ``PolicyError`` for a policy it cannot measure (see :func:`check_policy`).
    """

    def __init__(self, url: str | None, deployment: str, namespace: str, policy: Policy, *,
                 seldon_version: int | None, windows: Callable[[], Sequence[StageWindow]],
                 timeout: float | None = None, retries: int | None = None,
                 max_wait: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        settings = policy.metrics.prometheus
        url = url or settings.url
        if not url:
            raise UsageError("-C prometheus_url: not set, and the policy has no "
                             "metrics.prometheus.url; give Prometheus' base URL, e.g. "
                             "-C prometheus_url=http://prometheus-operated.monitoring.svc:9090")
        if not isinstance(deployment, str) or not deployment:
            raise UsageError("--name: the deployment name must not be empty")
        check_policy(policy, seldon_version)
        self.url = url.rstrip("/")
        self.deployment, self.namespace, self.policy = deployment, namespace, policy
        self.seldon_version = seldon_version
        self.requests_from = requests_source(policy, seldon_version)
        self.windows = windows
        self.timeout = settings.timeout if timeout is None else float(timeout)
        self.retries = settings.retries if retries is None else int(retries)
        self.max_wait = settings.max_wait if max_wait is None else float(max_wait)
        self._clock, self._sleep = clock, sleep
        # Retries are ours (counted, bounded by max_wait); the client must not add its own.
        self._prom = PrometheusConnect(self.url, retry=Retry(total=0, redirect=0,
                                                             raise_on_status=False))
        self.queries: tuple[KpiQuery, ...] = policy.metrics.queries
        self.uses_collector = self.requests_from is RequestsFrom.KPIGATE or any(
            kpi.needs_labels and policy.metrics.query(kpi.name) is None for kpi in policy.kpis)
        template = promql.latency_layout(ex.LATENCY_BUCKETS) \
            if self.requests_from is RequestsFrom.KPIGATE else LatencyHistogram()
        # The collector exports 100 score buckets (0.01 … 1.0). With score_bins=100 bucket
        # k is ScoreHistogram bin k. The default 1000 bins would give the same AUC and
        # error bound (each bucket would still fill a single bin: only the order of bins
        # and ties within one matter), so the 1:1 map is the simpler and honest choice.
        self.spec = AggregateSpec(segment_fields=policy.segment_fields,
                                  value_names=policy.value_names,
                                  score_bins=len(ex.SCORE_BUCKETS),
                                  latency_growth=template.growth)
        self._template = template
        # One reader per family of series; _collect decides which of them run.
        self._collector = CollectorSeries(
            deployment, self.spec, requests=self.requests_from is RequestsFrom.KPIGATE,
            values=bool(self.spec.value_names) and not self.queries)
        self._seldon: ExecutorSeries | ModelSeries = ExecutorSeries(deployment, namespace) \
            if seldon_version == 1 else ModelSeries(deployment, namespace, policy)
        self._queries = QueryKpis(deployment, namespace, policy, self.spec.value_names)
        #: HTTP requests made by the last :meth:`stage_samples` call (retries included).
        self.attempts = 0

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._prom.close()

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the SampleSource interface -----------------------------------------------------

    def stage_samples(self, now: float, maturity_s: float) -> list[StageSample]:
        """One :class:`StageSample` per stage with data, in stage order.

        ``maturity_s`` is applied by the collector, which exports labelled counts only for
        predictions older than the policy's ``evaluation.maturity``; it is accepted for
        the interface. Raises :class:`MetricsUnavailable` when data cannot be had.
        """
        session = Session(self._prom, self.timeout, self.retries,
                          self._clock() + self.max_wait, self._clock, self._sleep)
        try:
            return self._collect(session, float(now))
        finally:
            self.attempts = session.attempts

    def _collect(self, session: Session, now: float) -> list[StageSample]:
        samples = Samples(self.spec, self._template)
        windows: list[Span] = []
        for window in self.windows():
            if not isinstance(window, StageWindow):
                raise TypeError(f"windows() must return StageWindow items, got {window!r}")
            if window.start < now:
                windows.append((window.stage_index, window.start,
                                min(window.end if window.end is not None else now, now)))
        if self.uses_collector:
            self._collector.read(session, now, samples)
        if self.requests_from is RequestsFrom.SELDON and windows:
            # check_policy refused requests_from: seldon without a Seldon version.
            self._seldon.read(session, now, windows, samples)
        if self.queries:
            self._queries.read(session, windows, samples)
        return samples.result()
