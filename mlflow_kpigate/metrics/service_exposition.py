"""The collector service's Prometheus exposition: stage aggregates and its own counters.

:func:`stage_families` turns :meth:`~mlflow_kpigate.metrics.Collector.stage_samples` into
the ``kpigate_stage_*`` series whose names, labels and bucket bounds are the contract in
:mod:`mlflow_kpigate.metrics.exposition` (read back by the Prometheus metrics source).
The collector's fine bins are re-binned to the contract's coarser buckets here.

``kpigate_stage_latency_seconds`` is only exported for rows that have a latency: logger
events carry none (see :mod:`mlflow_kpigate.metrics.cloudevent_join`), so in cluster mode
latency KPIs come from Seldon's executor histogram.

``kpigate_stage_segment_labelled_total`` keeps at most ``max_segment_values`` segment values
per stage and field (:func:`capped_segments`): a field such as a country or a customer id
would otherwise add a series per value, role and outcome to every stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import Confusion, LatencyHistogram, ScoreHistogram
from mlflow_kpigate.metrics import exposition as names

__all__ = ["capped_segments", "counter_families", "stage_families", "state_families"]


def capped_segments(sample: StageSample, field: str, limit: int
                    ) -> dict[str, tuple[Confusion, Confusion]]:
    """(baseline, candidate) confusion cells per segment value of ``field``, at most
    ``limit`` values and :data:`~.exposition.OTHER_SEGMENT` for the rest, summed.

    Kept: the values with the most labelled predictions of both roles together, ties by
    the value, so both roles keep the same values (the fairness tests compare a segment
    with itself) and the same data always gives the same series.
    """
    roles = (sample.baseline.segments.get(field, {}), sample.candidate.segments.get(field, {}))
    totals: dict[str, int] = {}
    for per_value in roles:
        for value, conf in per_value.items():
            totals[value] = totals.get(value, 0) + conf.n
    ranked = sorted((v for v in totals if v != names.OTHER_SEGMENT),
                    key=lambda v: (-totals[v], v))
    kept = set(ranked[:limit])
    # Kept values in order, then the rest (an insertion order the exposition keeps).
    out: dict[str, tuple[Confusion, Confusion]] = {v: (Confusion(), Confusion())
                                                   for v in sorted(kept)}
    for value in sorted(totals):
        key = value if value in kept else names.OTHER_SEGMENT
        base, cand = out.setdefault(key, (Confusion(), Confusion()))
        for mine, per_value in ((base, roles[0]), (cand, roles[1])):
            found = per_value.get(value)
            if found is not None:
                mine.merge(found)
    return out


def _latency_buckets(hist: LatencyHistogram) -> list[tuple[str, float]]:
    """The histogram re-binned into :data:`~.exposition.LATENCY_BUCKETS`, cumulative.

    A collector bucket counts towards ``le=b`` when its upper edge is ``<= b``, so each
    cumulative count is exact up to the one collector bucket (2 % wide) straddling ``b``.
    """
    upper = np.concatenate((hist.edges, [np.inf]))  # underflow .. overflow bucket
    cumulative = np.cumsum(hist.counts)
    out = []
    for bound in names.LATENCY_BUCKETS:
        k = int(np.searchsorted(upper, bound * (1 + 1e-12), side="right"))
        out.append((names.format_bound(bound), float(cumulative[k - 1]) if k else 0.0))
    out.append(("+Inf", float(hist.n)))
    return out


def _score_buckets(scores: ScoreHistogram, counts: np.ndarray) -> list[tuple[str, float]]:
    """Per-class score counts re-binned into :data:`~.exposition.SCORE_BUCKETS`.

    Bins are half-open ``[a, b)`` like the collector's, so a score exactly on a bound is
    counted in the next bucket (within the 1/100 resolution the contract promises).
    """
    width = (scores.high - scores.low) / scores.bins
    upper = scores.low + (np.arange(scores.bins) + 1) * width
    cumulative = np.cumsum(counts)
    out = []
    for bound in names.SCORE_BUCKETS:
        k = int(np.searchsorted(upper, bound + 1e-9, side="right"))
        out.append((names.format_bound(bound), float(cumulative[k - 1]) if k else 0.0))
    out.append(("+Inf", float(counts.sum())))
    return out


def stage_families(deployment: str, samples: Sequence[StageSample],
                   max_segment_values: int = names.MAX_SEGMENT_VALUES) -> list[Metric]:
    """The ``kpigate_stage_*`` metric families of ``samples`` (see :mod:`.exposition`)."""
    base = [names.LABEL_DEPLOYMENT, names.LABEL_STAGE, names.LABEL_ROLE]
    requests = CounterMetricFamily(names.STAGE_REQUESTS, "Predictions served in the stage "
                                   "(live and shadow).", labels=base)
    errors = CounterMetricFamily(names.STAGE_ERRORS, "Failed predictions in the stage.",
                                 labels=base)
    latency = HistogramMetricFamily(names.STAGE_LATENCY, "Model latency of predictions with a "
                                    "known latency.", labels=base)
    labelled = CounterMetricFamily(names.STAGE_LABELLED, "Matured labelled predictions by "
                                   "confusion cell.", labels=[*base, names.LABEL_OUTCOME])
    score = HistogramMetricFamily(names.STAGE_SCORE, "Scores of matured labelled predictions "
                                  "by true label.", labels=[*base, names.LABEL_TRUE_LABEL])
    segment = CounterMetricFamily(
        names.STAGE_SEGMENT_LABELLED, "Matured labelled predictions per segment value.",
        labels=[*base, names.LABEL_FIELD, names.LABEL_VALUE, names.LABEL_OUTCOME])
    value_count = GaugeMetricFamily(names.STAGE_VALUE_COUNT, "Matured labelled predictions "
                                    "with business values.", labels=base)
    value_sum = GaugeMetricFamily(names.STAGE_VALUE_SUM, "Sum of a business value.",
                                  labels=[*base, names.LABEL_NAME])
    product_sum = GaugeMetricFamily(
        names.STAGE_VALUE_PRODUCT_SUM, "Sum of products of two business values.",
        labels=[*base, names.LABEL_NAME_A, names.LABEL_NAME_B])
    for sample in samples:
        fields = {*sample.baseline.segments, *sample.candidate.segments}
        segments = {f: capped_segments(sample, f, max_segment_values) for f in sorted(fields)}
        for index, (role, agg) in enumerate((("baseline", sample.baseline),
                                             ("candidate", sample.candidate))):
            key = [deployment, str(sample.stage_index), role]
            requests.add_metric(key, agg.requests)
            errors.add_metric(key, agg.errors)
            if agg.latency.n:
                latency.add_metric(key, _latency_buckets(agg.latency),
                                   agg.latency.mean() * agg.latency.n)
            for outcome in names.CONFUSION_OUTCOMES:
                labelled.add_metric([*key, outcome], getattr(agg.confusion, outcome))
            if agg.scores.n_pos + agg.scores.n_neg:
                for label, counts in (("0", agg.scores.neg), ("1", agg.scores.pos)):
                    score.add_metric([*key, label], _score_buckets(agg.scores, counts), None)
            for name, per_value in segments.items():
                for value, both in per_value.items():
                    for outcome in names.CONFUSION_OUTCOMES:
                        segment.add_metric([*key, name, value, outcome],
                                           getattr(both[index], outcome))
            if agg.values is not None and agg.values.n:
                moments = agg.values.to_dict()
                n, mean, comoment = moments["n"], moments["mean"], moments["comoment"]
                value_count.add_metric(key, n)
                order = sorted(range(len(moments["names"])), key=lambda i: moments["names"][i])
                for i in order:
                    value_sum.add_metric([*key, moments["names"][i]], n * mean[i])
                for pos, i in enumerate(order):
                    for j in order[pos:]:
                        raw = comoment[i][j] + n * mean[i] * mean[j]
                        product_sum.add_metric(
                            [*key, moments["names"][i], moments["names"][j]], raw)
    return [requests, errors, latency, labelled, score, segment, value_count, value_sum,
            product_sum]


def state_families(deployment: str, stage_index: int,
                   pending: Mapping[str, int]) -> list[Metric]:
    """The stage new predictions are attributed to, and the halves waiting by kind."""
    stage = GaugeMetricFamily(names.COLLECTOR_STAGE, "Stage new predictions are "
                              "attributed to.", labels=[names.LABEL_DEPLOYMENT])
    stage.add_metric([deployment], stage_index)
    waiting = GaugeMetricFamily(names.CLOUDEVENTS_PENDING, "Halves waiting for their "
                                "partner.", labels=[names.LABEL_DEPLOYMENT, names.LABEL_TYPE])
    for kind, n in pending.items():
        waiting.add_metric([deployment, kind], n)
    return [stage, waiting]


def counter_families(deployment: str, counts: Mapping[tuple[str, ...], int]) -> list[Metric]:
    """The service's counters: ``counts`` keyed ``("events", type, outcome)``,
    ``("labels", status)``, ``("expired", type)``, ``("late", type)`` or
    ``("refused", endpoint, reason)``."""
    dep = deployment
    events = CounterMetricFamily(
        names.CLOUDEVENTS_TOTAL, "Logger CloudEvents received by type and outcome.",
        labels=[names.LABEL_DEPLOYMENT, names.LABEL_TYPE, names.LABEL_OUTCOME])
    labels = CounterMetricFamily(names.LABELS_TOTAL, "Labels received by status.",
                                 labels=[names.LABEL_DEPLOYMENT, names.LABEL_STATUS])
    expired = CounterMetricFamily(names.CLOUDEVENTS_EXPIRED, "Halves whose partner did not "
                                  "come in time.",
                                  labels=[names.LABEL_DEPLOYMENT, names.LABEL_TYPE])
    late = CounterMetricFamily(names.CLOUDEVENTS_LATE, "Halves that came after their "
                               "partner expired.",
                               labels=[names.LABEL_DEPLOYMENT, names.LABEL_TYPE])
    refused = CounterMetricFamily(
        names.COLLECTOR_REJECTED, "Requests refused for their credentials (recorded nowhere "
        "else).", labels=[names.LABEL_DEPLOYMENT, names.LABEL_ENDPOINT, names.LABEL_REASON])
    for key, n in sorted(counts.items()):
        if key[0] == "events":
            events.add_metric([dep, key[1], key[2]], n)
        elif key[0] == "labels":
            labels.add_metric([dep, key[1]], n)
        elif key[0] == "expired":
            expired.add_metric([dep, key[1]], n)
        elif key[0] == "late":
            late.add_metric([dep, key[1]], n)
        elif key[0] == "refused":
            refused.add_metric([dep, key[1], key[2]], n)
    return [events, labels, expired, late, refused]
