"""Reading the kpigate collector's ``kpigate_stage_*`` series back from Prometheus.

The collector exports (names and bucket bounds in :mod:`mlflow_kpigate.metrics.exposition`)
confusion cells, score histograms, segment confusions and raw moments of business values
of matured labelled predictions, and, with ``requests_from: kpigate``, requests, errors
and the latency histogram. They are cumulative per stage and already restricted to matured
labels by the collector (with the policy's ``evaluation.maturity``), so
:class:`CollectorSeries` reads their latest values and turns them into each stage's and
role's aggregates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

from mlflow_kpigate.core.records import ROLES
from mlflow_kpigate.kpis import AggregateSpec, CoMoments, Confusion, RoleAggregate
from mlflow_kpigate.metrics import exposition as ex
from mlflow_kpigate.metrics import promql
from mlflow_kpigate.metrics.prometheus_samples import Samples
from mlflow_kpigate.metrics.prometheus_session import MetricsUnavailable, Session

__all__ = ["CollectorSeries"]


class _Key(NamedTuple):
    """What identifies one of the collector's series (the labels the source reads)."""

    name: str
    stage: int
    role: str
    outcome: str | None
    label: str | None
    le: str | None
    field: str | None
    value: str | None
    value_name: str | None
    name_a: str | None
    name_b: str | None


_Rows = Sequence[tuple[_Key, float]]


class CollectorSeries:
    """The collector's series of one ``deployment``, read into ``spec``'s aggregates.

    ``requests``: also take requests, errors and latency from the collector
    (``requests_from: kpigate``); ``values``: rebuild the business values' co-moments
    (the policy names values and no custom query measures them).
    """

    def __init__(self, deployment: str, spec: AggregateSpec, *, requests: bool,
                 values: bool) -> None:
        self.deployment, self.spec = deployment, spec
        self.requests, self.values = requests, values

    def read(self, session: Session, now: float, samples: Samples) -> None:
        """Add the latest values at ``now`` to ``samples``; the collector must be scraped."""
        query = promql.selector(
            "", equal={ex.LABEL_DEPLOYMENT: self.deployment},
            regex={"__name__": f"kpigate_stage_.+|{ex.COLLECTOR_STAGE}"})
        latest: dict[_Key, float] = {}
        seen_collector = False
        keys = (ex.LABEL_OUTCOME, ex.LABEL_TRUE_LABEL, ex.LABEL_LE, ex.LABEL_FIELD,
                ex.LABEL_VALUE, ex.LABEL_NAME, ex.LABEL_NAME_A, ex.LABEL_NAME_B)
        for labels, value in session.vector(query, now):
            name = labels.get("__name__", "")
            if name == ex.COLLECTOR_STAGE:
                seen_collector = True
                continue
            role = labels.get(ex.LABEL_ROLE)
            stage_text = labels.get(ex.LABEL_STAGE, "")
            if role not in ROLES or not stage_text.isdigit():
                continue
            key = _Key(name, int(stage_text), role, *(labels.get(k) for k in keys))
            # Two exporters of one (deployment, stage, role) read the same durable store
            # (e.g. a restarted collector pod); both values are cumulative since the stage
            # began, so the larger is the fresher.
            latest[key] = max(value, latest.get(key, value))
        if not seen_collector:
            raise session.missing(query, f"no {ex.COLLECTOR_STAGE} series for "
                                  f"deployment={self.deployment!r}: the kpigate collector is "
                                  "not scraped by this Prometheus, or it exports another "
                                  "deployment name")
        by_stage: dict[tuple[int, str], list[tuple[_Key, float]]] = {}
        for key, value in latest.items():
            by_stage.setdefault((key.stage, key.role), []).append((key, value))
        for (stage, role), rows in by_stage.items():
            agg = samples.get(stage, role)
            self._fill(rows, agg, samples)
            if self.values:
                self._values(rows, agg, stage, role,
                             lambda why: session.missing(query, why))

    def _fill(self, rows: _Rows, agg: RoleAggregate, samples: Samples) -> None:
        """Requests, latency, confusion, scores and segments of one stage and role."""
        get = self._getter(rows)
        if self.requests:
            agg.requests += round(get(ex.STAGE_REQUESTS))
            agg.errors += round(get(ex.STAGE_ERRORS))
            buckets = self._buckets(rows, f"{ex.STAGE_LATENCY}_bucket")
            if buckets:
                agg.latency.merge(promql.latency_from_buckets(
                    samples.template, buckets, get(f"{ex.STAGE_LATENCY}_sum")))
        cells = {o: 0 for o in ex.CONFUSION_OUTCOMES}
        for key, value in rows:
            if key.name == ex.STAGE_LABELLED and key.outcome in cells:
                cells[key.outcome] += round(value)
        agg.confusion.merge(Confusion(**cells))
        for label, hist in self._score_buckets(rows).items():
            counts = promql.score_counts(hist, self.spec.score_bins)
            zeros = np.zeros_like(counts)
            agg.scores.add_counts(counts if label == "1" else zeros,
                                  zeros if label == "1" else counts)
        self._segments(rows, agg)

    @staticmethod
    def _getter(rows: _Rows) -> Callable[[str], float]:
        plain = {key.name: value for key, value in rows}
        return lambda name: plain.get(name, 0.0)

    @staticmethod
    def _buckets(rows: Iterable[tuple[_Key, float]], name: str) -> dict[float, float]:
        return {float(key.le): value for key, value in rows if key.name == name and key.le}

    @staticmethod
    def _score_buckets(rows: Iterable[tuple[_Key, float]]
                       ) -> dict[str, dict[float, float]]:
        out: dict[str, dict[float, float]] = {}
        for key, value in rows:
            if key.name == f"{ex.STAGE_SCORE}_bucket" and key.label in ("0", "1") and key.le:
                out.setdefault(key.label, {})[float(key.le)] = value
        return out

    @staticmethod
    def _segments(rows: Iterable[tuple[_Key, float]], agg: RoleAggregate) -> None:
        for key, value in rows:
            if key.name != ex.STAGE_SEGMENT_LABELLED or key.field not in agg.segments \
                    or key.outcome not in ex.CONFUSION_OUTCOMES or key.value is None:
                continue
            conf = agg.segments[key.field].setdefault(key.value, Confusion())
            setattr(conf, key.outcome, getattr(conf, key.outcome) + round(value))

    def _values(self, rows: _Rows, agg: RoleAggregate, stage: int, role: str,
                missing: Callable[[str], MetricsUnavailable]) -> None:
        """CoMoments from the raw moments: count, sums and sums of products."""
        names = self.spec.value_names
        n = round(next((v for k, v in rows if k.name == ex.STAGE_VALUE_COUNT), 0.0))
        if n <= 0:
            return
        sums = {k.value_name: v for k, v in rows if k.name == ex.STAGE_VALUE_SUM}
        products = {(k.name_a, k.name_b): v for k, v in rows
                    if k.name == ex.STAGE_VALUE_PRODUCT_SUM}
        where = f'{{deployment="{self.deployment}",stage="{stage}",role="{role}"}}'
        mean = np.zeros(len(names))
        comoment = np.zeros((len(names), len(names)))
        for i, a in enumerate(names):
            if a not in sums:
                raise missing(f"{ex.STAGE_VALUE_SUM}{where} has no name={a!r}: the collector "
                              "does not log the policy's business value")
            mean[i] = sums[a] / n
        for i, a in enumerate(names):
            for j in range(i, len(names)):
                b = names[j]
                pair = (a, b) if a <= b else (b, a)
                if pair not in products:
                    raise missing(f"{ex.STAGE_VALUE_PRODUCT_SUM}{where} has no "
                                  f"name_a={pair[0]!r}, name_b={pair[1]!r}")
                c = products[pair] - sums[a] * sums[b] / n
                comoment[i, j] = comoment[j, i] = max(c, 0.0) if i == j else c
        if agg.values is not None:  # always: the spec has value names
            agg.values.merge(CoMoments.from_dict({"names": list(names), "n": n,
                                                  "mean": mean.tolist(),
                                                  "comoment": comoment.tolist()}))
