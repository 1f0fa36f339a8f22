"""Reading Seldon's request counters from Prometheus (``requests_from: seldon``).

* Seldon Core v1's executor histogram ``seldon_api_executor_server_requests_seconds_*``
  per predictor (= role): :class:`ExecutorSeries`;
* Seldon Core v2's ``seldon_model_infer_total`` / ``seldon_model_infer_seconds_total`` per
  model (``NAME-baseline`` / ``NAME-candidate``): :class:`ModelSeries`.

These have no stage label, so each stage's share is the counters' growth over the stage's
window, computed exactly rather than with ``increase()`` (:func:`window_growth`, see
:mod:`mlflow_kpigate.metrics.promql`). Status codes sort the growth
(:func:`~mlflow_kpigate.metrics.promql.code_kind`): requests the caller got wrong (4xx and
their gRPC kin) are not counted, server errors count as the model's errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlflow_kpigate.core.records import ROLES
from mlflow_kpigate.metrics import promql
from mlflow_kpigate.metrics.prometheus_samples import Samples, Span
from mlflow_kpigate.metrics.prometheus_session import Labels, MetricsUnavailable, Session
from mlflow_kpigate.policy import KpiKind, Policy

__all__ = [
    "EXECUTOR_METRIC",
    "V2_INFER_SECONDS",
    "V2_INFER_TOTAL",
    "ExecutorSeries",
    "ModelSeries",
    "window_growth",
]

#: Seldon Core v1's executor histogram (``_bucket``, ``_count``, ``_sum``).
EXECUTOR_METRIC = "seldon_api_executor_server_requests_seconds"
#: Seldon Core v2's per-model counters.
V2_INFER_TOTAL = "seldon_model_infer_total"
V2_INFER_SECONDS = "seldon_model_infer_seconds_total"
# The executor also times feedback, metadata and health calls; only predictions count.
_NOT_PREDICTIONS = "(?i).*(feedback|metadata|status|health|ready|live).*"


@dataclass
class _Tally:
    """One role's requests in one stage window, from Seldon's counters."""

    requests: float = 0.0
    errors: float = 0.0
    seconds: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def count(self, code: str | None, growth: float) -> None:
        """Add requests answered with ``code``: 4xx are the caller's, not the model's."""
        kind = promql.code_kind(code)
        if kind != "client":
            self.requests += growth
            if kind == "server":
                self.errors += growth


def window_growth(session: Session, metric: str, sel: Mapping[str, Any],
                  start: float, end: float) -> list[tuple[Labels, float]]:
    """Each counter series' exact growth over ``(start, end]`` (see ``promql``)."""
    series = promql.selector(metric, **sel)

    def key(labels: Mapping[str, str]) -> frozenset[tuple[str, str]]:
        return frozenset((k, v) for k, v in labels.items() if k != "__name__")

    def values_at(query: str, at: float) -> dict[frozenset[tuple[str, str]], float]:
        return {key(labels): v for labels, v in session.vector(query, at)}

    before = values_at(promql.last_value_at(series, start), start)
    after = values_at(promql.last_value_at(series, end), end)
    resets = values_at(promql.resets_in(series, start, end), end)
    exact = {k for k in before.keys() | after.keys()
             if resets.get(k, 0) > 0 or k not in after or after[k] < before.get(k, 0.0)}
    growth = {k: after[k] - before.get(k, 0.0) for k in after if k not in exact}
    if exact:
        for labels, points in session.matrix(promql.raw_samples(series, start, end), end):
            if key(labels) in exact:
                growth[key(labels)] = promql.counter_increase(points, start)
    return [(dict(k), v) for k, v in growth.items()]


class ExecutorSeries:
    """Seldon v1: the executor's histogram of one deployment, per stage window."""

    def __init__(self, deployment: str, namespace: str) -> None:
        self.deployment, self.namespace = deployment, namespace

    def _labels(self) -> dict[str, Mapping[str, str]]:
        return {"equal": {"deployment_name": self.deployment},
                # Prometheus Operator adds the pod's namespace; a plain setup may not.
                "regex": {"namespace": f"{re.escape(self.namespace)}|"},
                "not_regex": {"service": _NOT_PREDICTIONS}}

    def read(self, session: Session, now: float, windows: Sequence[Span],
             samples: Samples) -> None:
        """Add each window's requests, errors and latency per predictor to ``samples``."""
        sel = self._labels()
        probe = promql.selector(f"{EXECUTOR_METRIC}_count", **sel)
        if not session.vector(probe, now):
            raise session.missing(probe, "no Seldon executor series: no request has reached "
                                  "the deployment yet, or Prometheus does not scrape its "
                                  "executor (check the pods' prometheus.io annotations or "
                                  "the PodMonitor)")
        for stage, start, end in windows:
            counts = window_growth(session, f"{EXECUTOR_METRIC}_count", sel, start, end)
            buckets = window_growth(session, f"{EXECUTOR_METRIC}_bucket", sel, start, end)
            sums = window_growth(session, f"{EXECUTOR_METRIC}_sum", sel, start, end)
            tallies = {role: _Tally() for role in ROLES}
            for labels, growth in counts:
                tally = tallies.get(labels.get("predictor_name", ""))
                if tally is not None:
                    tally.count(labels.get("code"), growth)
            for labels, growth in sums:
                tally = tallies.get(labels.get("predictor_name", ""))
                if tally is not None and promql.code_kind(labels.get("code")) != "client":
                    tally.seconds += growth
            for labels, growth in buckets:
                tally = tallies.get(labels.get("predictor_name", ""))
                if tally is not None and promql.code_kind(labels.get("code")) != "client":
                    le = float(labels.get("le", "nan"))
                    tally.buckets[le] = tally.buckets.get(le, 0.0) + growth
            for role, tally in tallies.items():
                if round(tally.requests) > 0:
                    agg = samples.get(stage, role)
                    agg.requests += round(tally.requests)
                    agg.errors += round(tally.errors)
                    agg.latency.merge(promql.latency_from_buckets(
                        samples.template, tally.buckets, tally.seconds))


class ModelSeries:
    """Seldon v2: the per-model counters of one deployment's two models, per stage window.

    ``policy`` tells whether failed requests must be told apart (an ``error_rate`` KPI),
    which needs the counters' ``code`` label.
    """

    def __init__(self, deployment: str, namespace: str, policy: Policy) -> None:
        self.deployment, self.namespace, self.policy = deployment, namespace, policy

    def read(self, session: Session, now: float, windows: Sequence[Span],
             samples: Samples) -> None:
        """Add each window's requests, errors and mean latency per model to ``samples``."""
        models = {f"{self.deployment}-{role}": role for role in ROLES}
        sel = {"regex": {"model": "|".join(re.escape(m) for m in models),
                         "namespace": f"{re.escape(self.namespace)}|"}}
        probe = promql.selector(V2_INFER_TOTAL, **sel)
        found = session.vector(probe, now)
        if not found:
            raise session.missing(probe, "no Seldon v2 model series: no request has reached "
                                  "the models yet, or Prometheus does not scrape Seldon's "
                                  "model servers")
        needs_errors = any(k.kind is KpiKind.PROPORTION and k.metric == "error_rate"
                           for k in self.policy.kpis)
        if needs_errors and any("code" not in labels for labels, _ in found):
            raise MetricsUnavailable(f"{probe}: has no code label, so failed requests cannot "
                                     "be told from served ones for error_rate; set "
                                     "metrics.prometheus.requests_from: kpigate",
                                     kind="malformed", query=probe, attempts=session.attempts)
        for stage, start, end in windows:
            tallies = {role: _Tally() for role in ROLES}
            for labels, growth in window_growth(session, V2_INFER_TOTAL, sel, start, end):
                tally = tallies.get(models.get(labels.get("model", ""), ""))
                if tally is not None:
                    tally.count(labels.get("code"), growth)
            for labels, growth in window_growth(session, V2_INFER_SECONDS, sel, start, end):
                tally = tallies.get(models.get(labels.get("model", ""), ""))
                if tally is not None and promql.code_kind(labels.get("code")) != "client":
                    tally.seconds += growth
            for role, tally in tallies.items():
                n = round(tally.requests)
                if n <= 0:
                    continue
                agg = samples.get(stage, role)
                agg.requests += n
                agg.errors += round(tally.errors)
                if tally.seconds > 0:
                    # Only the mean is known: every request is put at it (latency KPIs are
                    # refused for v2 by check_policy; this serves reports' mean latency).
                    mean = tally.seconds / n
                    counts = np.zeros(agg.latency.counts.size, dtype=np.int64)
                    counts[promql.bucket_below(agg.latency, mean)] = n
                    agg.latency.add_binned(counts, math.log(mean), 0.0, tally.seconds)
