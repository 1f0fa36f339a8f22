"""The collector service: what its HTTP app (:mod:`.service_app`) calls.

:class:`CollectorService` owns the service's :class:`~mlflow_kpigate.metrics.Collector`
and turns request bodies into replies: logger events are checked and joined
(:mod:`.service_join`), labels completed with the request's business values and joined,
stage notices applied (:mod:`.service_notices`), and ``/metrics`` computed from the
collector's stage samples (:mod:`.service_exposition`). Every write runs in one
:meth:`~mlflow_kpigate.metrics.Collector.log_atomically` transaction; reads use a
separate connection per thread, which never takes the write lock.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PrometheusCollector

from mlflow_kpigate.core.payloads import PayloadError
from mlflow_kpigate.core.records import PREDICTIONS_DB, Label, Prediction, parse_feedback
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
from mlflow_kpigate.metrics.collector import Collector, CollectorError
from mlflow_kpigate.metrics.service_auth import ENDPOINT_SCOPES, REJECT_REASONS
from mlflow_kpigate.metrics.service_config import CollectorServiceConfig
from mlflow_kpigate.metrics.service_exposition import (
    counter_families,
    stage_families,
    state_families,
)
from mlflow_kpigate.metrics.service_join import (
    create_join_tables,
    event_role,
    expire_halves,
    fill_values,
    join_event,
    pending_counts,
)
from mlflow_kpigate.metrics.service_notices import (
    NoticeRefused,
    StageNotice,
    apply_stage_notice,
    check_against_policy,
    create_stage_table,
    parse_stage_notice,
    read_stage,
)

__all__ = ["CollectorService"]

logger = logging.getLogger(__name__)

_PURGE_EVERY_S = 3600.0
# The service's own keys: :meth:`CollectorService.health` writes its probe row there.
_META_SCHEMA = "CREATE TABLE IF NOT EXISTS ce_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class CollectorService(PrometheusCollector):
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
        for endpoint in ENDPOINT_SCOPES:
            for reason in REJECT_REASONS:
                self._counts[("refused", endpoint, reason)] = 0
        self._started = time.time()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._snapshot: list[Metric] | None = None
        self._snapshot_at = -math.inf
        self._snapshot_lock = threading.Lock()
        self._last_purge = -math.inf
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._closed = False

    @staticmethod
    def _create_tables(conn: sqlite3.Connection) -> list[Prediction]:
        create_join_tables(conn)
        create_stage_table(conn)
        conn.execute(_META_SCHEMA)
        return []

    # -- small helpers ------------------------------------------------------------------

    def _count(self, key: tuple[str, ...], n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def reject_unread(self) -> None:
        """Count an event refused before it could be read (its body was too large)."""
        self._count(("events", "unknown", "rejected"))

    def refuse(self, endpoint: str, reason: str) -> None:
        """Count a request refused for its credentials (nothing else is recorded)."""
        self._count(("refused", endpoint, reason))

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

    def current_stage(self) -> StageNotice:
        """The stage new predictions are attributed to (stage 0 before any notice)."""
        return read_stage(self._reader(), self.config.deployment)

    # -- ingestion ----------------------------------------------------------------------

    def ingest(self, headers: Mapping[str, str], body: bytes,
               now: float | None = None) -> tuple[int, dict[str, Any]]:
        """Take one logger event; returns the HTTP status and JSON reply."""
        now = time.time() if now is None else float(now)
        try:
            event = parse_cloudevent(headers, body)
            role = event_role(event, self.config.deployment)
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
        result: dict[str, Any] = {}

        def decide(conn: sqlite3.Connection) -> list[Prediction]:
            predictions, reply = join_event(conn, self.config, event, role, half, now)
            result.update(reply)
            return predictions

        self.collector.log_atomically(decide)
        return result

    # -- expiry -------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """Expire halves older than ``pending_ttl_s`` and forget old event ids; returns the
        number of expired halves by kind. Run periodically by the app."""
        now = time.time() if now is None else float(now)
        expired = {REQUEST: 0, RESPONSE: 0}

        def decide(conn: sqlite3.Connection) -> list[Prediction]:
            predictions, counts = expire_halves(conn, self.config, now)
            expired.update(counts)
            return predictions

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
        return fill_values(self._reader(), wanted, labels)

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
        """Apply a stage notice that fits the policy, unless its revision is older than
        the stored one (:mod:`.service_notices`)."""
        now = time.time() if now is None else float(now)
        try:
            notice = parse_stage_notice(json.loads(body), self.config.deployment, now)
            check_against_policy(notice, self.config.stages)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return 400, {"error": f"body is not valid JSON: {exc}"}
        except ValueError as exc:
            return 400, {"error": str(exc)}
        outcome: dict[str, Any] = {}

        def decide(conn: sqlite3.Connection) -> list[Prediction]:
            ignored, current = apply_stage_notice(conn, notice, self._started)
            outcome.update(ignored=ignored, current=asdict(current))
            return []

        try:
            self.collector.log_atomically(decide)
        except NoticeRefused as exc:  # rolled back: nothing stored
            return 400, {"error": str(exc)}
        except (CollectorError, sqlite3.Error) as exc:
            return 503, {"error": f"the collector cannot write its store: {exc}"}
        if not outcome["ignored"]:
            self._snapshot = None  # the stage gauge changed
        return 200, outcome

    # -- metrics, health, status --------------------------------------------------------

    def _pending(self) -> dict[str, int]:
        return pending_counts(self._reader())

    def _build(self) -> list[Metric]:
        cfg = self.config
        families = stage_families(cfg.deployment,
                                  self.collector.stage_samples(time.time(), cfg.maturity_s),
                                  cfg.max_segment_values)
        return [*families,
                *state_families(cfg.deployment, self.current_stage().stage_index,
                                self._pending())]

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
        with self._lock:
            counts = dict(self._counts)
        return counter_families(self.config.deployment, counts)

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
            "refused": _refused(counts),
            "auth": "off" if self.config.insecure_no_auth else "bearer tokens",
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


def _refused(counts: Mapping[tuple[str, ...], int]) -> dict[str, dict[str, int]]:
    """Refused requests by endpoint and reason, for ``/status``."""
    out: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        if key[0] == "refused":
            out.setdefault(key[1], {})[key[2]] = n
    return out
