"""The embedded router's Prometheus metrics (``GET /metrics``), one registry per app.

With several router workers on one port a scrape reaches any one of them, so the workers
run prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the
router's main process): each writes its values to files there and ``/metrics`` adds them
up over all workers, the ones that died included (counters never go back), while the
weight and stage gauges show the most recent value of a live worker.

Model calls by role and outcome and their ``predict`` time, labelled predictions by
confusion cell, labels received, the traffic weights and stage being served, shadow copies
by outcome, requests the baseline's signature rejected, prediction batches the
collector refused, predictions it could not record and whether it is failing now.
Every series carries ``namespace="local"``, like the controller's (the dashboard and the
alert rules select rollouts by namespace and deployment).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from mlflow_kpigate.backends.local.model_calls import Attempt
from mlflow_kpigate.core.records import LabelResult
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.metrics.constant_labels import LOCAL_LABELS, with_labels

__all__ = ["RouterMetrics"]

# Model latencies are milliseconds to seconds; the default buckets are too coarse below 5 ms.
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)


class RouterMetrics:
    """The router's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kpigate_requests", "Model calls by role and outcome (ok|error).",
            ["deployment", "role", "version", "outcome"], registry=r)
        self.duration = Histogram(
            "kpigate_request_duration_seconds", "Model predict time per request.",
            ["deployment", "role", "version"], buckets=_DURATION_BUCKETS, registry=r)
        self.outcomes = Counter(
            "kpigate_outcomes", "Labelled predictions by confusion cell (tp|fp|tn|fn).",
            ["deployment", "role", "version", "outcome"], registry=r)
        self.labels = Counter(
            "kpigate_labels", "Labels received by status (matched|unknown|duplicate).",
            ["deployment", "status"], registry=r)
        self.weight = Gauge(
            "kpigate_traffic_weight", "Share of live traffic served by each role (0-1).",
            ["deployment", "role"], registry=r, multiprocess_mode="livemostrecent")
        # The controller's name for the same gauge (kpigate_rollout_stage), so one query
        # shows the stage whichever process is scraped; this was kpigate_stage_index.
        self.stage = Gauge(
            "kpigate_rollout_stage", "Index of the rollout stage the router is serving.",
            ["deployment"],
            registry=r, multiprocess_mode="livemostrecent")
        self.shadow = Counter(
            "kpigate_shadow_requests", "Mirrored requests scored off the response path (by the "
            "candidate in shadow, by the baseline while baking), by version and "
            "outcome (ok|error|timeout|skipped; warm: an unlogged copy that keeps a canary "
            "candidate warm).", ["deployment", "version", "outcome"],
            registry=r)
        self.invalid = Counter(
            "kpigate_invalid_requests", "Requests whose input the baseline model's signature "
            "rejected (not counted as model errors).", ["deployment"], registry=r)
        self.collector_errors = Counter(
            "kpigate_collector_errors", "Prediction batches the collector refused.",
            ["deployment"], registry=r)
        self.unrecorded = Counter(
            "kpigate_unrecorded_predictions", "Predictions the log could not record (the "
            "baseline answered them; the candidate gets no traffic meanwhile).",
            ["deployment"], registry=r)
        self.log_failing = Gauge(
            "kpigate_prediction_log_failing", "1 while the prediction log cannot be "
            "written.", ["deployment"], registry=r, multiprocess_mode="livemax")
        self.unrecorded_total = 0
        self._shown: tuple[Weights, int] | None = None

    def exposition(self) -> CollectorRegistry:
        """The registry ``/metrics`` renders: this worker's, or every worker's, each
        series with ``namespace="local"`` (see :mod:`mlflow_kpigate.metrics.constant_labels`)."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return with_labels(self.registry, LOCAL_LABELS)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)
        return with_labels(merged, LOCAL_LABELS)

    def log_unrecorded(self, rows: int) -> None:
        """Count predictions the log refused; the log is failing."""
        self.unrecorded_total += rows
        self.unrecorded.labels(self.deployment).inc(rows)
        self.log_failing.labels(self.deployment).set(1)

    def log_recovered(self) -> None:
        """The log records again."""
        self.log_failing.labels(self.deployment).set(0)

    def observe(self, attempt: Attempt) -> None:
        """Count one model call and time its ``predict``."""
        outcome = "error" if attempt.error else "ok"
        self.requests.labels(self.deployment, attempt.role, attempt.version, outcome).inc()
        self.duration.labels(self.deployment, attempt.role, attempt.version).observe(
            attempt.latency_s)

    def set_weights(self, weights: Weights, stage_index: int) -> None:
        """Show the weights and stage being served (the gauges change only on a change)."""
        if self._shown == (weights, stage_index):
            return
        self._shown = (weights, stage_index)
        live = weights.candidate_attached and not weights.shadow
        share = weights.candidate_percent / 100.0 if live else 0.0
        self.weight.labels(self.deployment, "candidate").set(share)
        self.weight.labels(self.deployment, "baseline").set(1.0 - share)
        self.stage.labels(self.deployment).set(stage_index)

    def record_labels(self, result: LabelResult) -> None:
        """Count what one ``POST /feedback`` did: labels by status, outcomes by cell."""
        dep = self.deployment
        self.labels.labels(dep, "matched").inc(result.matched)
        self.labels.labels(dep, "unknown").inc(len(result.unknown))
        self.labels.labels(dep, "duplicate").inc(result.duplicates)
        for o in result.outcomes:
            self.outcomes.labels(dep, o.role, o.version, o.outcome).inc()
