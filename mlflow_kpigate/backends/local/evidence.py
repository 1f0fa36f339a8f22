"""The local controller's sample source: the prediction log, unless the router lost some.

:class:`RecordedEvidence` wraps the :class:`~mlflow_kpigate.metrics.Collector` the
controller reads. Before each read it asks the router's ``/metrics`` (summed over its
workers) whether the prediction log is failing now, or refused predictions since the last
read. Either way the samples are incomplete in a way the gate cannot see (the missing
rows are not a random sample: they are the ones answered while the disk was full), so it
raises :class:`~mlflow_kpigate.core.errors.MetricsUnavailable` and the controller holds
with that reason, recorded in the evaluation's audit event: never a promotion across a
gap in the evidence. A router that does not answer (restarting, stopped) is not a reason:
what it logged is in the log, and the supervisor restarts it.
"""

from __future__ import annotations

import logging
import sqlite3

import requests
from prometheus_client.parser import text_string_to_metric_families

from mlflow_kpigate.core.errors import MetricsUnavailable
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.metrics import CollectorError
from mlflow_kpigate.rollout.ports import SampleSource

__all__ = ["RecordedEvidence", "router_log_health"]

log = logging.getLogger(__name__)


def router_log_health(port: int, timeout_s: float = 2.0) -> tuple[bool, float] | None:
    """``(failing now, predictions refused so far)`` from the router on ``port``, or
    ``None`` if it does not answer."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s).text
    except requests.RequestException:
        return None
    failing, unrecorded = False, 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kpigate_prediction_log_failing" and sample.value > 0:
                failing = True
            elif sample.name == "kpigate_unrecorded_predictions_total":
                unrecorded += sample.value
    return failing, unrecorded


class RecordedEvidence:
    """``source``'s samples, or ``MetricsUnavailable`` while the router's log loses some."""

    def __init__(self, source: SampleSource, port: int) -> None:
        self.source, self.port = source, port
        self._unrecorded: float | None = None

    def stage_samples(self, now: float, maturity_s: float) -> list[StageSample]:
        health = router_log_health(self.port)
        if health is not None:
            failing, unrecorded = health
            # A restarted router counts from zero again: only a rise is news.
            lost = unrecorded - self._unrecorded if self._unrecorded is not None \
                and unrecorded >= self._unrecorded else unrecorded
            self._unrecorded = unrecorded
            if failing:
                raise MetricsUnavailable(
                    f"the router cannot write the prediction log ({unrecorded:.0f} "
                    "predictions unrecorded; the candidate gets no traffic until it can)")
            if lost > 0:
                raise MetricsUnavailable(
                    f"the router could not record {lost:.0f} predictions since the last "
                    "evaluation (the log records again)")
        try:
            return self.source.stage_samples(now, maturity_s)
        except (CollectorError, sqlite3.Error, OSError) as exc:
            # e.g. the disk is full and the log's segments cannot be ingested
            raise MetricsUnavailable(f"the prediction log cannot be read: {exc}") from None
