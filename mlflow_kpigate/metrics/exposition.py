"""Names and bucket bounds of the metrics the in-cluster kpigate collector exports.

Both sides of the Prometheus hop import this module: the collector service
(:mod:`mlflow_kpigate.metrics.service_exposition`) writes these series and the Prometheus metrics
source reads them back into KPI aggregates. Keeping the names and the bucket bounds in one
place is what makes the two agree; nothing here does I/O.

Every ``kpigate_stage_*`` series carries ``deployment``, ``stage`` (the stage index as a
string) and ``role`` (``baseline`` | ``candidate``) and is cumulative since the stage
began, recomputed from the collector's store at scrape time, so readers take the latest
value (an instant query), not ``increase()``. Labelled series only count predictions older
than the policy's maturity whose label arrived.
"""

from __future__ import annotations

import math

__all__ = [
    "CLOUDEVENTS_EXPIRED",
    "CLOUDEVENTS_LATE",
    "CLOUDEVENTS_PENDING",
    "CLOUDEVENTS_TOTAL",
    "CLOUDEVENT_OUTCOMES",
    "CLOUDEVENT_TYPES",
    "COLLECTOR_REJECTED",
    "COLLECTOR_STAGE",
    "CONFUSION_OUTCOMES",
    "LABELS_TOTAL",
    "LABEL_DEPLOYMENT",
    "LABEL_ENDPOINT",
    "LABEL_FIELD",
    "LABEL_LE",
    "LABEL_NAME",
    "LABEL_NAME_A",
    "LABEL_NAME_B",
    "LABEL_OUTCOME",
    "LABEL_REASON",
    "LABEL_ROLE",
    "LABEL_STAGE",
    "LABEL_STATUS",
    "LABEL_STATUSES",
    "LABEL_TRUE_LABEL",
    "LABEL_TYPE",
    "LABEL_VALUE",
    "LATENCY_BUCKETS",
    "MAX_SEGMENT_VALUES",
    "OTHER_SEGMENT",
    "SCORE_BUCKETS",
    "STAGE_ERRORS",
    "STAGE_LABELLED",
    "STAGE_LATENCY",
    "STAGE_REQUESTS",
    "STAGE_SCORE",
    "STAGE_SEGMENT_LABELLED",
    "STAGE_VALUE_COUNT",
    "STAGE_VALUE_PRODUCT_SUM",
    "STAGE_VALUE_SUM",
    "format_bound",
]

# -- per (deployment, stage, role) series ---------------------------------------------------
STAGE_REQUESTS = "kpigate_stage_requests_total"
"""Counter: predictions served (live and shadow) by the role in the stage."""
STAGE_ERRORS = "kpigate_stage_errors_total"
"""Counter: of those, the failed ones."""
STAGE_LATENCY = "kpigate_stage_latency_seconds"
"""Histogram (``_bucket{le}``, ``_count``, ``_sum``) over :data:`LATENCY_BUCKETS`."""
STAGE_LABELLED = "kpigate_stage_labelled_total"
"""Counter with ``outcome`` in :data:`CONFUSION_OUTCOMES`: matured labelled predictions."""
STAGE_SCORE = "kpigate_stage_score"
"""Histogram (``_bucket{label, le}``) of scores of matured labelled predictions by true
label over :data:`SCORE_BUCKETS`."""
STAGE_SEGMENT_LABELLED = "kpigate_stage_segment_labelled_total"
"""Counter with ``field``, ``value``, ``outcome``: the confusion cells per segment value,
at most :data:`MAX_SEGMENT_VALUES` values per (stage, field) and :data:`OTHER_SEGMENT`."""
MAX_SEGMENT_VALUES = 20
"""Default cap on the ``value`` label of :data:`STAGE_SEGMENT_LABELLED` per (deployment,
stage, field): the values with the most labelled predictions of both roles together (ties:
the smaller value first) keep their own series, the rest are summed into
:data:`OTHER_SEGMENT` (``kpigate collector --max-segment-values``)."""
OTHER_SEGMENT = "__other__"
"""The ``value`` of the segments beyond the cap, summed (a real value spelled so joins it)."""
STAGE_VALUE_COUNT = "kpigate_stage_value_count"
"""Gauge: matured labelled predictions contributing business values (moment count)."""
STAGE_VALUE_SUM = "kpigate_stage_value_sum"
"""Gauge with ``name``: sum of a business value."""
STAGE_VALUE_PRODUCT_SUM = "kpigate_stage_value_product_sum"
"""Gauge with ``name_a <= name_b``: sum of products of two business values (squares when
equal), from which the covariance matrix is rebuilt."""

# -- collector-wide series ------------------------------------------------------------------
COLLECTOR_STAGE = "kpigate_collector_stage"
"""Gauge with ``deployment``: the stage new predictions are attributed to."""
CLOUDEVENTS_TOTAL = "kpigate_cloudevents_total"
"""Counter with ``deployment``, ``type``, ``outcome`` in :data:`CLOUDEVENT_OUTCOMES`."""
LABELS_TOTAL = "kpigate_labels_total"
"""Counter with ``deployment``, ``status`` in :data:`LABEL_STATUSES`."""
CLOUDEVENTS_PENDING = "kpigate_cloudevents_pending"
"""Gauge with ``deployment``, ``type``: request/response halves waiting for their partner."""
CLOUDEVENTS_EXPIRED = "kpigate_cloudevents_expired_total"
"""Counter with ``deployment``, ``type``: halves whose partner did not come in time."""
CLOUDEVENTS_LATE = "kpigate_cloudevents_late_total"
"""Counter with ``deployment``, ``type``: halves that came after their partner expired
(dropped, since the partner was already counted)."""
COLLECTOR_REJECTED = "kpigate_collector_rejected_requests_total"
"""Counter with ``deployment``, ``endpoint`` (``/cloudevents``, ``/feedback``,
``/admin/stage``), ``reason`` (``missing_token``, ``invalid_token``, ``wrong_scope``):
requests refused for their credentials, which count nowhere else."""

# -- label names and values -----------------------------------------------------------------
LABEL_DEPLOYMENT = "deployment"
LABEL_STAGE = "stage"
LABEL_ROLE = "role"
LABEL_OUTCOME = "outcome"
LABEL_TRUE_LABEL = "label"
LABEL_LE = "le"
LABEL_FIELD = "field"
LABEL_VALUE = "value"
LABEL_NAME = "name"
LABEL_NAME_A = "name_a"
LABEL_NAME_B = "name_b"
LABEL_TYPE = "type"
LABEL_STATUS = "status"
LABEL_ENDPOINT = "endpoint"
LABEL_REASON = "reason"

CONFUSION_OUTCOMES = ("tp", "fp", "tn", "fn")
CLOUDEVENT_OUTCOMES = ("accepted", "rejected", "duplicate")
CLOUDEVENT_TYPES = ("request", "response", "unknown")
LABEL_STATUSES = ("matched", "unknown", "duplicate")


def _geometric(low: float, high: float, ratio: float) -> tuple[float, ...]:
    # Rounded to 9 significant digits so the ``le`` strings stay short and parse back to
    # the very same floats on the reading side.
    bounds: list[float] = []
    i = 0
    while (x := low * ratio**i) < high * (1 - 1e-12):
        bounds.append(float(f"{x:.9g}"))
        i += 1
    bounds.append(high)
    return tuple(bounds)


LATENCY_BUCKETS: tuple[float, ...] = _geometric(0.001, 60.0, 1.25)
"""Upper bounds (seconds) of the latency histogram: 0.001 * 1.25**i below 60 s, then 60 s
(``+Inf`` is implied and always exported)."""

SCORE_BUCKETS: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(1, 101))
"""Upper bounds of the score histogram: 0.01, 0.02, ..., 1.0 (``+Inf`` implied)."""


def format_bound(bound: float) -> str:
    """The ``le`` label text of a bucket bound, as Prometheus clients write it."""
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))
