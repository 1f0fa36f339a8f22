"""The in-cluster Metrics Collector: an HTTP service fed by Seldon's request logger.

In cluster mode nothing of kpigate sits on the request path: Seldon Core routes traffic
between the ``baseline`` and ``candidate`` predictors and its executor logs every request
and response as a CloudEvent to this service, which joins them into predictions in the
same :class:`~mlflow_kpigate.metrics.Collector` (SQLite, WAL) the embedded router uses,
takes labels on ``/feedback`` and exports per-stage KPI aggregates for Prometheus, where
the controller's metrics source reads them. Endpoints:

* ``POST /cloudevents`` (and ``POST /``): one logger event, binary or structured mode
  (:mod:`.cloudevent_envelope`). 200 with ``{"outcome": "accepted" | "duplicate", ...}``; 400
  with ``{"error": reason}`` for an event that cannot be used (nothing is recorded);
  503 if the store cannot write.
* ``POST /feedback``: labels by request id, as the embedded router's ``/feedback``.
  Business values missing from a label are taken from the request's columns of that
  name, when it had them.
* ``POST /admin/stage``: the controller's stage notice ``{"deployment", "stage_index",
  "shadow", "candidate_percent", "revision"}``; persisted; a lower revision than the last
  one is ignored (``{"ignored": true}``).
* ``GET /metrics``: the ``kpigate_stage_*`` series of :mod:`.exposition`, computed from
  :meth:`Collector.stage_samples` at scrape time (cached for ``metrics_cache_s``), plus
  the service's own counters.
* ``GET /health`` (503 when the store cannot write), ``GET /status`` (JSON).

Decisions worth knowing:

* **Atomic joins.** A request and its response share ``Ce-Requestid``; either may come
  first. The first is kept in a ``ce_pending`` table in the collector's own SQLite file
  (without the request's features); the second deletes it and inserts the predictions in
  the same transaction (:meth:`Collector.log_atomically`), so a crash or restart neither
  loses a half nor writes a prediction twice. Each half is keyed by request id, role and
  graph node (``Ce-Modelid``).
* **Idempotent deliveries.** ``Ce-Id`` is unique per event, so ids seen within
  ``dedupe_s`` are answered ``duplicate`` and not counted again.
* **Expiry.** A half whose partner has not come within ``pending_ttl_s`` is expired by a
  background sweep: Seldon does not log a response when the model fails, so an
  unanswered request becomes an error prediction (``unanswered="drop"`` drops it
  instead); a response without its request becomes a prediction with unknown segments. A
  partner that comes later is dropped and counted as late.
* **Stage attribution.** A prediction belongs to the stage of the last notice when its
  first half arrived (stage 0, not shadow, before any notice); candidate rows of a shadow
  stage are shadow rows. The notice is read inside the ingesting transaction, so every
  event is attributed consistently with the order in which notices were committed.
* **Latency is unknown** (see :mod:`.cloudevent_join`): predictions are stored without one,
  so ``kpigate_stage_latency_seconds`` is only exported for rows that have a latency; in
  cluster mode latency KPIs come from Seldon's executor histogram.
* One service, one deployment, one rollout: a new rollout for the same deployment should
  start with a fresh data directory, since stage indexes restart at 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.concurrency import run_in_threadpool

from mlflow_kpigate.core.payloads import PayloadError
from mlflow_kpigate.core.records import PREDICTIONS_DB, ROLES, Label, Prediction, parse_feedback
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import AggregateSpec, LatencyHistogram, ScoreHistogram
from mlflow_kpigate.metrics import exposition as names
from mlflow_kpigate.metrics.cloudevent_envelope import (
    REQUEST,
    RESPONSE,
    CloudEvent,
    EventError,
    parse_cloudevent,
)
from mlflow_kpigate.metrics.cloudevent_halves import (
    RequestHalf,
    ResponseHalf,
    read_request,
    read_response,
)
from mlflow_kpigate.metrics.cloudevent_join import join_predictions, row_ids
from mlflow_kpigate.metrics.collector import Collector, CollectorError

__all__ = [
    "UNANSWERED",
    "CollectorService",
    "CollectorServiceConfig",
    "StageNotice",
    "create_collector_app",
    "parse_stage_notice",
]

logger = logging.getLogger(__name__)

#: What to do with a request whose response never came: count it as a failed prediction
#: (Seldon logs no response when the model fails) or drop it.
UNANSWERED = ("error", "drop")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PURGE_EVERY_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ce_pending (
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    model_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received REAL NOT NULL,
    stage_index INTEGER NOT NULL,
    shadow INTEGER NOT NULL,
    half TEXT NOT NULL,
    PRIMARY KEY (request_id, role, model_id, kind)
);
CREATE INDEX IF NOT EXISTS ce_pending_received ON ce_pending (received);
CREATE TABLE IF NOT EXISTS ce_expired (
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    model_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    expired_at REAL NOT NULL,
    PRIMARY KEY (request_id, role, model_id, kind)
);
CREATE TABLE IF NOT EXISTS ce_seen (event_id TEXT PRIMARY KEY, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ce_seen_received ON ce_seen (received);
CREATE TABLE IF NOT EXISTS ce_values (
    request_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (request_id, name)
);
CREATE TABLE IF NOT EXISTS ce_stage (
    deployment TEXT PRIMARY KEY,
    stage_index INTEGER NOT NULL,
    shadow INTEGER NOT NULL,
    candidate_percent REAL NOT NULL,
    revision INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ce_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _positive(value: Any, name: str, fix: str, *, allow_zero: bool = False) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be a number {bound}, got {value!r}; {fix}")
    return float(value)


@dataclass(frozen=True)
class CollectorServiceConfig:
    """What the collector service collects, and how.

    ``deployment`` is the SeldonDeployment name (events from another one are refused);
    ``spec`` the policy's segment fields and value names
    (:meth:`AggregateSpec.from_policy`); ``maturity_s`` the policy's label maturity;
    ``threshold`` turns scores into 0/1 predictions; ``versions`` maps role to the model
    version recorded with its predictions (default: the event's ``Ce-Modelid``).
    """

    deployment: str
    data_dir: Path
    spec: AggregateSpec = field(default_factory=AggregateSpec)
    maturity_s: float = 0.0
    threshold: float = 0.5
    versions: Mapping[str, str] = field(default_factory=dict)
    pending_ttl_s: float = 600.0
    unanswered: str = "error"
    dedupe_s: float = 3600.0
    retention_s: float = 7 * 86400.0
    metrics_cache_s: float = 1.0
    sweep_interval_s: float = 5.0
    max_body_bytes: int = 16 * 2**20

    def __post_init__(self) -> None:
        if not isinstance(self.deployment, str) or not _DNS_LABEL.match(self.deployment):
            raise ValueError(f"deployment: {self.deployment!r} is not a DNS-1123 label; use "
                             "the SeldonDeployment name (lower-case letters, digits, '-')")
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if not isinstance(self.spec, AggregateSpec):
            raise ValueError("spec: must be an AggregateSpec; build it with "
                             "AggregateSpec.from_policy(policy)")
        _positive(self.maturity_s, "maturity_s", "give the label maturity in seconds",
                  allow_zero=True)
        if not (isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
                and 0 < self.threshold <= 1):
            raise ValueError(f"threshold: must be in (0, 1], got {self.threshold!r}; it turns "
                             "a score into a positive prediction")
        bad = sorted(set(self.versions) - set(ROLES))
        if bad or not all(isinstance(v, str) and v for v in self.versions.values()):
            raise ValueError(f"versions: must map 'baseline'/'candidate' to non-empty version "
                             f"strings, got {dict(self.versions)!r}")
        object.__setattr__(self, "versions", dict(self.versions))
        _positive(self.pending_ttl_s, "pending_ttl_s",
                  "allow at least the logger's delivery delay (e.g. 600)")
        if self.unanswered not in UNANSWERED:
            raise ValueError(f"unanswered: must be one of {', '.join(UNANSWERED)}, got "
                             f"{self.unanswered!r}")
        _positive(self.dedupe_s, "dedupe_s", "keep event ids at least as long as the logger "
                  "may retry")
        _positive(self.retention_s, "retention_s", "e.g. 604800 for a week")
        _positive(self.metrics_cache_s, "metrics_cache_s", "0 recomputes on every scrape",
                  allow_zero=True)
        _positive(self.sweep_interval_s, "sweep_interval_s", "e.g. 5")
        if (isinstance(self.max_body_bytes, bool) or not isinstance(self.max_body_bytes, int)
                or self.max_body_bytes < 1):
            raise ValueError(f"max_body_bytes: must be a positive integer, got "
                             f"{self.max_body_bytes!r}")


@dataclass(frozen=True)
class StageNotice:
    """The controller's word on which stage new predictions belong to."""

    deployment: str
    stage_index: int
    shadow: bool
    candidate_percent: float
    revision: int
    updated_at: float = 0.0


_NOTICE_FIELDS = ("deployment", "stage_index", "shadow", "candidate_percent", "revision")


def parse_stage_notice(data: Any, deployment: str, now: float) -> StageNotice:
    """A ``POST /admin/stage`` body as a :class:`StageNotice` (``ValueError`` naming the
    field and the fix)."""
    if not isinstance(data, dict):
        raise ValueError(f"body: must be a JSON object with {', '.join(_NOTICE_FIELDS)}")
    extra = sorted(set(data) - set(_NOTICE_FIELDS))
    if extra:
        raise ValueError(f"{extra[0]}: unknown field; expected {', '.join(_NOTICE_FIELDS)}")
    missing = [k for k in _NOTICE_FIELDS if k not in data]
    if missing:
        raise ValueError(f"{missing[0]}: missing; a stage notice needs "
                         f"{', '.join(_NOTICE_FIELDS)}")
    if data["deployment"] != deployment:
        raise ValueError(f"deployment: this collector serves {deployment!r}, not "
                         f"{data['deployment']!r}; send the notice to that deployment's "
                         "collector")
    for key in ("stage_index", "revision"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key}: must be an integer >= 0, got {value!r}")
    if not isinstance(data["shadow"], bool):
        raise ValueError(f"shadow: must be true or false, got {data['shadow']!r}")
    percent = data["candidate_percent"]
    if (isinstance(percent, bool) or not isinstance(percent, (int, float))
            or not 0 <= percent <= 100):
        raise ValueError(f"candidate_percent: must be a number from 0 to 100, got {percent!r}")
    return StageNotice(deployment, data["stage_index"], data["shadow"], float(percent),
                       data["revision"], now)


# -- exposition -----------------------------------------------------------------------------


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


def stage_families(deployment: str, samples: Sequence[StageSample]) -> list[Metric]:
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
        for role, agg in (("baseline", sample.baseline), ("candidate", sample.candidate)):
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
            for name, per_value in agg.segments.items():
                for value, confusion in sorted(per_value.items()):
                    for outcome in names.CONFUSION_OUTCOMES:
                        segment.add_metric([*key, name, value, outcome],
                                           getattr(confusion, outcome))
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


# -- the service ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Half:
    """A pending half as stored."""

    kind: str
    received: float
    stage_index: int
    shadow: bool
    half: str


class CollectorService:
    """The collector behind the HTTP app: ingestion, labels, stage notices, metrics.

    Thread-safe; the app calls it from its threadpool. Owns a :class:`Collector` on
    ``data_dir/predictions.db``; :meth:`close` closes it.
    """

    def __init__(self, config: CollectorServiceConfig) -> None:
        if not isinstance(config, CollectorServiceConfig):
            raise ValueError("config must be a CollectorServiceConfig")
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.collector = Collector(config.data_dir / PREDICTIONS_DB, config.spec,
                                   retention_s=config.retention_s)
        try:
            self.collector.log_atomically(self._create_tables)
        except BaseException:
            self.collector.close()
            raise
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {}
        for kind in (REQUEST, RESPONSE):
            for outcome in names.CLOUDEVENT_OUTCOMES:
                self._counts[("events", kind, outcome)] = 0
            self._counts[("expired", kind)] = 0
            self._counts[("late", kind)] = 0
        for status in names.LABEL_STATUSES:
            self._counts[("labels", status)] = 0
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._snapshot: list[Metric] | None = None
        self._snapshot_at = -math.inf
        self._snapshot_lock = threading.Lock()
        self._last_purge = -math.inf
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]
        self._closed = False

    @staticmethod
    def _create_tables(conn: sqlite3.Connection) -> list[Prediction]:
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        return []

    # -- small helpers ------------------------------------------------------------------

    def _count(self, key: tuple[str, ...], n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (reads never take the write lock)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.collector.db_path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            with self._lock:
                if self._closed:
                    conn.close()
                    raise CollectorError("the collector service is closed")
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def _stage(self, conn: sqlite3.Connection) -> StageNotice:
        row = conn.execute(
            "SELECT stage_index, shadow, candidate_percent, revision, updated_at FROM ce_stage "
            "WHERE deployment = ?", (self.config.deployment,)).fetchone()
        if row is None:
            return StageNotice(self.config.deployment, 0, False, 0.0, -1, 0.0)
        return StageNotice(self.config.deployment, int(row[0]), bool(row[1]), float(row[2]),
                           int(row[3]), float(row[4]))

    def current_stage(self) -> StageNotice:
        """The stage new predictions are attributed to (stage 0 before any notice)."""
        return self._stage(self._reader())

    # -- ingestion ----------------------------------------------------------------------

    def _check(self, event: CloudEvent) -> str:
        if event.endpoint is None:
            raise EventError("endpoint: missing (Ce-Endpoint, the predictor name); name the "
                             "predictors 'baseline' and 'candidate'", event.kind)
        if event.endpoint not in ROLES:
            raise EventError(f"endpoint: predictor {event.endpoint!r} is neither 'baseline' "
                             "nor 'candidate'; kpigate's SeldonDeployment names its predictors "
                             "by role", event.kind)
        if event.deployment is not None and event.deployment != self.config.deployment:
            raise EventError(f"inferenceservicename: event from {event.deployment!r}, but this "
                             f"collector serves {self.config.deployment!r}; point that "
                             "deployment's logger at its own collector", event.kind)
        return event.endpoint

    def ingest(self, headers: Mapping[str, str], body: bytes,
               now: float | None = None) -> tuple[int, dict[str, Any]]:
        """Take one logger event; returns the HTTP status and JSON reply."""
        now = time.time() if now is None else float(now)
        try:
            event = parse_cloudevent(headers, body)
            role = self._check(event)
            half: RequestHalf | ResponseHalf
            if event.kind == REQUEST:
                half = read_request(event, self.config.spec.segment_fields,
                                    self.config.spec.value_names)
            else:
                half = read_response(event, self.config.threshold)
        except EventError as exc:
            self._count(("events", exc.kind, "rejected"))
            return 400, {"error": str(exc)}
        try:
            result = self._store(event, role, half, now)
        except (CollectorError, sqlite3.Error) as exc:
            logger.error("could not store event %s: %s", event.id, exc)
            return 503, {"error": f"the collector cannot write its store: {exc}"}
        self._count(("events", event.kind, result["outcome"]))
        if result.pop("late", False):
            self._count(("late", event.kind))
        return 200, result

    def _store(self, event: CloudEvent, role: str, half: RequestHalf | ResponseHalf,
               now: float) -> dict[str, Any]:
        cfg = self.config
        model_id = event.model_id or ""
        key = (event.request_id, role, model_id)
        other = RESPONSE if event.kind == REQUEST else REQUEST
        result: dict[str, Any] = {"outcome": "accepted", "id": event.id,
                                  "request_id": event.request_id, "role": role}

        def decide(conn: sqlite3.Connection) -> list[Prediction]:
            seen = conn.execute("INSERT OR IGNORE INTO ce_seen VALUES (?, ?)", (event.id, now))
            if seen.rowcount == 0:
                result.update(outcome="duplicate", reason="event id already received")
                return []
            if conn.execute("SELECT 1 FROM ce_expired WHERE request_id = ? AND role = ? AND "
                            "model_id = ? AND kind = ?", (*key, other)).fetchone():
                result.update(late=True, reason=f"its {other} expired before it came; dropped")
                return []
            row = conn.execute(
                "SELECT kind, received, stage_index, shadow, half FROM ce_pending WHERE "
                "request_id = ? AND role = ? AND model_id = ? AND kind = ?", (*key, other)
            ).fetchone()
            if row is None:
                if conn.execute(
                    "SELECT 1 FROM ce_pending WHERE request_id = ? AND role = ? AND "
                    "model_id = ? AND kind = ?", (*key, event.kind)
                ).fetchone():
                    result.update(outcome="duplicate",
                                  reason=f"a {event.kind} for this request id is already "
                                         "waiting for its partner")
                    return []
                stage = self._stage(conn)
                shadow = role == "candidate" and stage.shadow
                conn.execute("INSERT INTO ce_pending VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (*key, event.kind, event.id, now, stage.stage_index, int(shadow),
                              half.to_json()))
                self._keep_values(conn, event.request_id, half, now)
                result.update(joined=False, stage_index=stage.stage_index)
                return []
            conn.execute("DELETE FROM ce_pending WHERE request_id = ? AND role = ? AND "
                         "model_id = ? AND kind = ?", (*key, other))
            self._keep_values(conn, event.request_id, half, now)
            partner = _Half(row[0], float(row[1]), int(row[2]), bool(row[3]), row[4])
            if isinstance(half, RequestHalf):
                request, response = half, ResponseHalf.from_json(partner.half)
            else:
                request, response = RequestHalf.from_json(partner.half), half
            # The earlier half is the closer one to when the prediction was served.
            predictions = join_predictions(
                request_id=event.request_id, role=role,
                version=cfg.versions.get(role) or model_id, stage_index=partner.stage_index,
                shadow=partner.shadow, ts=min(partner.received, now),
                request=request, response=response,
            )
            result.update(joined=True, stage_index=partner.stage_index,
                          predictions=len(predictions))
            return predictions

        self.collector.log_atomically(decide)
        return result

    def _keep_values(self, conn: sqlite3.Connection, request_id: str,
                     half: RequestHalf | ResponseHalf, now: float) -> None:
        if not isinstance(half, RequestHalf):
            return
        rows = [(rid, name, value, now)
                for rid, values in zip(row_ids(request_id, half.n_rows), half.values,
                                       strict=True)
                for name, value in values.items()]
        if rows:
            conn.executemany("INSERT OR REPLACE INTO ce_values VALUES (?, ?, ?, ?)", rows)

    # -- expiry -------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """Expire halves older than ``pending_ttl_s`` and forget old event ids; returns the
        number of expired halves by kind. Run periodically by the app."""
        cfg = self.config
        now = time.time() if now is None else float(now)
        cutoff = now - cfg.pending_ttl_s
        expired = {REQUEST: 0, RESPONSE: 0}

        def decide(conn: sqlite3.Connection) -> list[Prediction]:
            rows = conn.execute(
                "SELECT request_id, role, model_id, kind, received, stage_index, shadow, half "
                "FROM ce_pending WHERE received <= ?", (cutoff,)).fetchall()
            out: list[Prediction] = []
            for request_id, role, model_id, kind, received, stage, shadow, half in rows:
                expired[kind] += 1
                conn.execute("INSERT OR REPLACE INTO ce_expired VALUES (?, ?, ?, ?, ?)",
                             (request_id, role, model_id, kind, now))
                if kind == REQUEST and cfg.unanswered == "drop":
                    continue
                out += join_predictions(
                    request_id=request_id, role=role,
                    version=cfg.versions.get(role) or model_id, stage_index=stage,
                    shadow=bool(shadow), ts=received,
                    request=RequestHalf.from_json(half) if kind == REQUEST else None,
                    response=ResponseHalf.from_json(half) if kind == RESPONSE else None,
                )
            conn.execute("DELETE FROM ce_pending WHERE received <= ?", (cutoff,))
            conn.execute("DELETE FROM ce_seen WHERE received < ?", (now - cfg.dedupe_s,))
            conn.execute("DELETE FROM ce_expired WHERE expired_at < ?", (now - cfg.dedupe_s,))
            conn.execute("DELETE FROM ce_values WHERE received < ?", (now - cfg.retention_s,))
            return out

        self.collector.log_atomically(decide)
        for kind, n in expired.items():
            if n:
                self._count(("expired", kind), n)
        if now - self._last_purge >= _PURGE_EVERY_S:
            self._last_purge = now
            self.collector.purge(now)
        return expired

    # -- labels and stage notices -------------------------------------------------------

    def _fill_values(self, labels: list[Label]) -> list[Label]:
        wanted = self.config.spec.value_names
        if not wanted:
            return labels
        conn = self._reader()
        out = []
        for i, label in enumerate(labels):
            given = dict(label.values or {})
            missing = [name for name in wanted if name not in given]
            if missing:
                stored = dict(conn.execute(
                    "SELECT name, value FROM ce_values WHERE request_id = ?",
                    (label.request_id,)).fetchall())
                for name in missing:
                    if name in stored:
                        given[name] = stored[name]
                still = [name for name in wanted if name not in given]
                if still:
                    where = f"labels[{i}]." if len(labels) > 1 else ""
                    raise PayloadError(
                        f"{where}values.{still[0]}: missing; the policy's business KPIs need "
                        f"{list(wanted)} and request {label.request_id!r} had no such column: "
                        "send the values with the label")
            out.append(Label(label.request_id, label.label, given))
        return out

    def feedback(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Labels by request id (the embedded router's ``/feedback`` body formats)."""
        try:
            labels = self._fill_values(parse_feedback(json.loads(body)))
            result = self.collector.add_labels(labels)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return 400, {"error": f"body is not valid JSON: {exc}"}
        except PayloadError as exc:
            return exc.status, {"error": str(exc)}
        except (CollectorError, sqlite3.Error) as exc:
            return 503, {"error": f"the collector cannot write its store: {exc}"}
        except ValueError as exc:  # the collector's own checks
            return 400, {"error": str(exc)}
        self._count(("labels", "matched"), result.matched)
        self._count(("labels", "unknown"), len(result.unknown))
        self._count(("labels", "duplicate"), result.duplicates)
        return 200, {"matched": result.matched, "unknown": list(result.unknown),
                     "duplicates": result.duplicates}

    def set_stage(self, body: bytes, now: float | None = None) -> tuple[int, dict[str, Any]]:
        """Apply a stage notice unless its revision is older than the stored one."""
        now = time.time() if now is None else float(now)
        try:
            notice = parse_stage_notice(json.loads(body), self.config.deployment, now)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return 400, {"error": f"body is not valid JSON: {exc}"}
        except ValueError as exc:
            return 400, {"error": str(exc)}
        outcome: dict[str, Any] = {}

        def decide(conn: sqlite3.Connection) -> list[Prediction]:
            current = self._stage(conn)
            if notice.revision < current.revision:
                outcome.update(ignored=True, current=asdict(current))
                return []
            conn.execute("INSERT OR REPLACE INTO ce_stage VALUES (?, ?, ?, ?, ?, ?)",
                         (notice.deployment, notice.stage_index, int(notice.shadow),
                          notice.candidate_percent, notice.revision, notice.updated_at))
            outcome.update(ignored=False, current=asdict(notice))
            return []

        try:
            self.collector.log_atomically(decide)
        except (CollectorError, sqlite3.Error) as exc:
            return 503, {"error": f"the collector cannot write its store: {exc}"}
        if not outcome["ignored"]:
            self._snapshot = None  # the stage gauge changed
        return 200, outcome

    # -- metrics, health, status --------------------------------------------------------

    def _pending(self) -> dict[str, int]:
        rows = self._reader().execute(
            "SELECT kind, COUNT(*) FROM ce_pending GROUP BY kind").fetchall()
        out = {REQUEST: 0, RESPONSE: 0}
        out.update({kind: int(n) for kind, n in rows})
        return out

    def _build(self) -> list[Metric]:
        cfg = self.config
        dep = cfg.deployment
        families = stage_families(dep, self.collector.stage_samples(time.time(),
                                                                    cfg.maturity_s))
        stage = GaugeMetricFamily(names.COLLECTOR_STAGE, "Stage new predictions are "
                                  "attributed to.", labels=[names.LABEL_DEPLOYMENT])
        stage.add_metric([dep], self.current_stage().stage_index)
        pending = GaugeMetricFamily(names.CLOUDEVENTS_PENDING, "Halves waiting for their "
                                    "partner.", labels=[names.LABEL_DEPLOYMENT, names.LABEL_TYPE])
        for kind, n in self._pending().items():
            pending.add_metric([dep, kind], n)
        return [*families, stage, pending]

    def collect(self) -> Iterator[Metric]:
        """prometheus_client collector protocol: the snapshot plus the live counters."""
        with self._snapshot_lock:
            fresh = time.monotonic() - self._snapshot_at < self.config.metrics_cache_s
            if self._snapshot is None or not fresh:
                self._snapshot = self._build()
                self._snapshot_at = time.monotonic()
            snapshot = self._snapshot
        yield from snapshot
        yield from self._counter_families()

    def _counter_families(self) -> list[Metric]:
        dep = self.config.deployment
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
        with self._lock:
            counts = dict(self._counts)
        for key, n in sorted(counts.items()):
            if key[0] == "events":
                events.add_metric([dep, key[1], key[2]], n)
            elif key[0] == "labels":
                labels.add_metric([dep, key[1]], n)
            elif key[0] == "expired":
                expired.add_metric([dep, key[1]], n)
            elif key[0] == "late":
                late.add_metric([dep, key[1]], n)
        return [events, labels, expired, late]

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, list[str]]:
        """Whether the store accepts writes (a real write of a probe row)."""

        def probe(conn: sqlite3.Connection) -> list[Prediction]:
            conn.execute("INSERT OR REPLACE INTO ce_meta VALUES ('health_probe', ?)",
                         (repr(time.time()),))
            return []

        try:
            self.collector.log_atomically(probe)
        except (CollectorError, sqlite3.Error) as exc:
            return False, [f"the store cannot write: {exc}"]
        return True, []

    def status(self) -> dict[str, Any]:
        """Stage, stored counts, pending halves and event/label counters (JSON-ready)."""
        with self._lock:
            counts = dict(self._counts)
        try:
            stats: dict[str, Any] = self.collector.stats()
            pending: dict[str, Any] = self._pending()
            stage: dict[str, Any] | None = asdict(self.current_stage())
        except (CollectorError, sqlite3.Error) as exc:
            stats, pending, stage = {"error": str(exc)}, {}, None
        events: dict[str, dict[str, int]] = {}
        for key, n in counts.items():
            if key[0] == "events":
                events.setdefault(key[1], {})[key[2]] = n
        return {
            "deployment": self.config.deployment,
            "stage": stage,
            "collector": stats,
            "pending": pending,
            "events": events,
            "expired": {k[1]: n for k, n in counts.items() if k[0] == "expired"},
            "late": {k[1]: n for k, n in counts.items() if k[0] == "late"},
            "labels": {k[1]: n for k, n in counts.items() if k[0] == "labels"},
            "maturity_s": self.config.maturity_s,
            "threshold": self.config.threshold,
        }

    def close(self) -> None:
        """Close the read connections and the collector (writes everything queued)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self.collector.close()


# -- the app --------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": f"body is larger than {limit} bytes; log smaller requests "
                                  "or raise max_body_bytes"}, status_code=413)


async def _sweeper(service: CollectorService, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await run_in_threadpool(service.sweep)
        except Exception:  # keep sweeping; the next round retries
            logger.warning("expiring pending CloudEvent halves failed", exc_info=True)
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), service.config.sweep_interval_s)


def create_collector_app(config: CollectorServiceConfig) -> FastAPI:
    """The collector service app (endpoints in the module docstring).

    Opens the store at once (so a bad data directory fails here); the app's lifespan runs
    the expiry sweep and closes the store on shutdown. ``app.state.service`` is the
    :class:`CollectorService`.
    """
    service = CollectorService(config)
    limit = config.max_body_bytes

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        sweeper = asyncio.get_running_loop().create_task(_sweeper(service, stop))
        try:
            yield
        finally:
            stop.set()
            await sweeper
            await run_in_threadpool(service.close)

    app = FastAPI(title=f"kpigate collector: {config.deployment}", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    async def cloudevent(request: Request) -> Response:
        try:
            body = await _body(request, limit)
        except _TooLarge:
            service._count(("events", "unknown", "rejected"))
            return _too_large(limit)
        status, reply = await run_in_threadpool(service.ingest, dict(request.headers), body)
        return JSONResponse(reply, status_code=status)

    app.add_api_route("/cloudevents", cloudevent, methods=["POST"])
    app.add_api_route("/", cloudevent, methods=["POST"])

    def body_route(handle: Callable[[bytes], tuple[int, Any]]
                   ) -> Callable[[Request], Awaitable[Response]]:
        """A POST handler: the size-limited body to ``handle``, its reply as JSON."""

        async def route(request: Request) -> Response:
            try:
                body = await _body(request, limit)
            except _TooLarge:
                return _too_large(limit)
            status, reply = await run_in_threadpool(handle, body)
            return JSONResponse(reply, status_code=status)

        return route

    app.add_api_route("/feedback", body_route(service.feedback), methods=["POST"])
    app.add_api_route("/admin/stage", body_route(service.set_stage), methods=["POST"])

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            text = await run_in_threadpool(service.metrics_text)
        except (CollectorError, sqlite3.Error) as exc:
            return JSONResponse({"error": f"the store cannot be read: {exc}"}, status_code=503)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> Response:
        ok, problems = await run_in_threadpool(service.health)
        if ok:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)

    @app.get("/status")
    async def status() -> Response:
        return JSONResponse(await run_in_threadpool(service.status))

    return app
