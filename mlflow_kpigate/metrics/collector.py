"""The embedded Metrics Collector: a prediction log and label join in SQLite.

The router logs one :class:`Prediction` per served (or shadow-scored) input row; labels
arrive later by request id (:meth:`Collector.add_labels`); the controller asks for
:meth:`Collector.stage_samples`, the per-stage :class:`~mlflow_kpigate.gate.StageSample`
the gate consumes. Router and controller are separate processes with separate
``Collector`` instances on the same file; SQLite's WAL mode lets the controller read while
the router writes.

Privacy by design: a row holds what the KPIs need (id, time, role, version, stage, shadow
flag, latency, error flag, score, predicted label, the policy's segment values, the label
and the policy's business values), never the request's features unless
``store_features=True``, and :meth:`Collector.purge` deletes rows past the retention.

Decisions worth knowing:

* **Writes are queued.** :meth:`Collector.log` only appends to an in-memory queue; one
  writer thread commits batches. Nothing is dropped: :meth:`Collector.close` drains the
  queue, and if the writer fails the unwritten rows stay queued and every later
  :meth:`~Collector.log`, :meth:`~Collector.flush`, :meth:`~Collector.add_labels` and
  :meth:`~Collector.close` raises :class:`CollectorError` naming the cause.
* **The first label wins.** A label for a request id that is already labelled is counted
  as a duplicate and ignored, so a client that retries a feedback call (at-least-once
  delivery) cannot double-count or flip an outcome; corrections are not supported.
* **A label applies to every row of its request id**, including rows logged after the
  label (a shadow copy that finished scoring after the caller posted the label): the
  writer copies an existing label onto new rows of the same id in the same transaction.
* **Aggregation is SQL.** Score bin, latency bucket and log-latency are computed once at
  insert time, so :meth:`Collector.stage_samples` is a handful of ``GROUP BY`` scans whose
  result size depends on the number of bins and segments, not of rows. Log-latency moments
  are summed per bucket relative to the bucket's lower edge (no cancellation), then merged
  across buckets with Chan's formula; business-value co-moments use two passes (means,
  then centred products). The latency histogram is rebuilt through its serialised form
  rather than ``LatencyHistogram.add_binned`` so that the exact minimum and maximum (used
  to interpolate quantiles in the edge buckets) survive; results equal a
  :class:`~mlflow_kpigate.kpis.RoleAggregate` fed row by row, up to float rounding.
* Durability: WAL with ``synchronous=NORMAL``: committed rows survive a crash of either
  process; the last commits may be lost on power loss, an accepted trade for a log.
* **Latency may be unknown** (``latency_s=None``): the in-cluster collector service learns
  of predictions from Seldon's request logger, which carries no model latency. Such rows
  count as requests (and errors) but stay out of the latency histogram, so latency KPIs
  are "missing" rather than made up. They are stored with the bucket ``-1`` (real buckets
  are ``>= 0``), which keeps the table's ``NOT NULL`` columns and so files written by
  earlier versions.
* :meth:`Collector.log_atomically` writes predictions synchronously in one transaction
  with a caller's own statements on the same file (the collector service's pending
  CloudEvent halves), so neither can be committed without the other.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_kpigate.core.records import (
    ROLES,
    Label,
    LabelOutcome,
    LabelResult,
    Prediction,
)
from mlflow_kpigate.core.records import is_number as _is_number
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import AggregateSpec, CoMoments, Confusion, LatencyHistogram, RoleAggregate
from mlflow_kpigate.kpis.moments import _chan

__all__ = ["Collector", "CollectorError"]

_ROLE_CODE = {role: code for code, role in enumerate(ROLES)}
UNKNOWN_SEGMENT = "unknown"
_SCHEMA_VERSION = 1
# Bucket of rows whose latency is unknown (real buckets are 0..len(edges)).
_UNKNOWN_LATENCY_BIN = -1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    role INTEGER NOT NULL,
    version TEXT NOT NULL,
    stage_index INTEGER NOT NULL,
    shadow INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    log_latency REAL NOT NULL,
    latency_bin INTEGER NOT NULL,
    error INTEGER NOT NULL,
    score REAL,
    score_bin INTEGER,
    predicted INTEGER,
    label INTEGER,
    labelled_at REAL,
    features TEXT
);
CREATE INDEX IF NOT EXISTS predictions_request ON predictions (request_id);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fields (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    col TEXT NOT NULL UNIQUE,
    PRIMARY KEY (kind, name)
);
"""

_BASE_COLUMNS = (
    "request_id", "ts", "role", "version", "stage_index", "shadow", "latency_s",
    "log_latency", "latency_bin", "error", "score", "score_bin", "predicted", "features",
)


class CollectorError(RuntimeError):
    """The collector cannot accept or persist data (writer failed, or closed)."""





_OUTCOME = {(1, 1): "tp", (0, 1): "fp", (0, 0): "tn", (1, 0): "fn"}


def _binary(value: Any) -> int | None:
    """``value`` as 0/1, or ``None`` if it is not a 0/1 number or bool."""
    if isinstance(value, bool):
        return int(value)
    if _is_number(value) and value in (0, 1):
        return int(value)
    return None


class Collector:
    """Prediction log and label join for one deployment (a SQLite file, WAL mode).

    Thread-safe. ``spec`` fixes which segment fields and business values are kept and the
    score/latency binning; the binning must match the file's (``ValueError`` otherwise),
    while new segment fields or value names are added as columns (older rows read as
    ``"unknown"`` / no value).
    """

    def __init__(
        self,
        db_path: Path,
        spec: AggregateSpec,
        *,
        retention_s: float = 7 * 86400,
        store_features: bool = False,
        flush_interval_s: float = 0.1,
        batch_size: int = 500,
    ) -> None:
        if not isinstance(spec, AggregateSpec):
            raise ValueError(f"spec must be an AggregateSpec, not {type(spec).__name__}")
        if not (_is_number(retention_s) and retention_s > 0):
            raise ValueError(f"retention_s must be a number > 0, got {retention_s!r}")
        if not (_is_number(flush_interval_s) and flush_interval_s >= 0):
            raise ValueError(f"flush_interval_s must be a number >= 0, got {flush_interval_s!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.db_path = Path(db_path)
        self.spec = spec
        self.retention_s = float(retention_s)
        self.store_features = bool(store_features)
        self.flush_interval_s = float(flush_interval_s)
        self.batch_size = batch_size

        self._latency_layout = LatencyHistogram(growth=spec.latency_growth)
        self._log_low = math.log(self._latency_layout.low)
        self._log_growth = math.log(self._latency_layout.growth)
        self._score_layout = RoleAggregate(spec).scores

        self._cond = threading.Condition()
        self._queue: deque[Prediction] = deque()
        self._enqueued = 0
        self._committed = 0
        self._flush_requested = False
        self._closing = False
        self._closed = False
        self._error: BaseException | None = None
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []

        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._segment_cols, self._value_cols = self._init_schema()

    # -- connections and schema ---------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with self._cond:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared mid-use)."""
        if self._closed:
            raise CollectorError(f"the collector for {self.db_path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
        return conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two writers (router threads, another
        # process) queue on the busy timeout instead of failing on lock upgrade.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _init_schema(self) -> tuple[dict[str, str], dict[str, str]]:
        layout = json.dumps(
            {
                "score_bins": self.spec.score_bins,
                "latency": [
                    self._latency_layout.low,
                    self._latency_layout.high,
                    self._latency_layout.growth,
                ],
            },
            sort_keys=True,
        )
        conn = self._conn()
        conn.executescript(_SCHEMA)
        with self._transaction(conn):
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if "layout" not in meta:
                conn.execute("INSERT INTO meta VALUES ('layout', ?)", (layout,))
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                             (str(_SCHEMA_VERSION),))
                conn.execute("INSERT INTO meta VALUES ('unknown_labels', '0')")
            elif meta["layout"] != layout:
                raise ValueError(
                    f"{self.db_path} was written with binning {meta['layout']}, but this "
                    f"spec asks for {layout}: open it with the same score_bins and "
                    "latency_growth"
                )
            segment_cols = self._ensure_columns(conn, "segment", self.spec.segment_fields, "TEXT")
            value_cols = self._ensure_columns(conn, "value", self.spec.value_names, "REAL")
        return segment_cols, value_cols

    @staticmethod
    def _ensure_columns(
        conn: sqlite3.Connection, kind: str, names: Sequence[str], sql_type: str
    ) -> dict[str, str]:
        """Column of each name, adding missing ones.

        Columns are named ``s0``, ``v0``… with the user-chosen names kept in ``fields``,
        so no user string ever becomes an SQL identifier.
        """
        known = dict(conn.execute("SELECT name, col FROM fields WHERE kind = ?", (kind,)))
        out = {}
        for name in names:
            if name not in known:
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM fields WHERE kind = ?", (kind,)
                ).fetchone()
                col = f"{kind[0]}{count}"
                conn.execute(f"ALTER TABLE predictions ADD COLUMN {col} {sql_type}")
                conn.execute("INSERT INTO fields VALUES (?, ?, ?)", (kind, name, col))
                known[name] = col
            out[name] = known[name]
        return out

    # -- writing predictions ------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise CollectorError(
                f"the collector's writer failed ({type(self._error).__name__}: {self._error}); "
                f"{len(self._queue)} predictions are queued but not written to {self.db_path}"
            ) from self._error
        if self._closing or self._closed:
            raise CollectorError(f"the collector for {self.db_path} is closed")

    def log(self, predictions: Sequence[Prediction]) -> None:
        """Queue predictions for writing (returns at once; a writer thread commits them)."""
        items = list(predictions)
        for i, item in enumerate(items):
            if not isinstance(item, Prediction):
                raise ValueError(f"predictions[{i}] must be a Prediction, not "
                                 f"{type(item).__name__}")
        if not items:
            with self._cond:
                self._check_usable()
            return
        with self._cond:
            self._check_usable()
            self._queue.extend(items)
            self._enqueued += len(items)
            if self._writer is None:
                # Started lazily: a reader-only instance (the controller) needs no thread.
                self._writer = threading.Thread(
                    target=self._run, name=f"kpigate-collector:{self.db_path.name}", daemon=True
                )
                self._writer.start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Block until every prediction logged so far is committed."""
        with self._cond:
            self._check_usable()
            target = self._enqueued
            if self._committed >= target:
                return
            self._flush_requested = True
            self._cond.notify_all()
            while self._committed < target:
                if self._error is not None:
                    self._check_usable()
                self._cond.wait()

    def _run(self) -> None:
        conn = self._open()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                # Wait a little for a fuller batch, unless someone is waiting for it.
                deadline = time.monotonic() + self.flush_interval_s
                while (
                    len(self._queue) < self.batch_size
                    and not self._flush_requested
                    and not self._closing
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                take = min(self.batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(take)]
                if not self._queue:
                    self._flush_requested = False
            try:
                self._write(conn, batch)
            except BaseException as exc:
                with self._cond:
                    # Back at the front, in order: nothing logged is dropped.
                    self._queue.extendleft(reversed(batch))
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._committed += len(batch)
                self._cond.notify_all()

    def _rows(self, batch: Sequence[Prediction]) -> list[tuple[Any, ...]]:
        known = np.fromiter((p.latency_s is not None for p in batch), dtype=bool,
                            count=len(batch))
        # Unknown latencies are stored as 0 s in bucket -1, which every reader skips.
        latency = np.fromiter((p.latency_s or 0.0 for p in batch), dtype=np.float64,
                              count=len(batch))
        log_latency = np.zeros(len(batch))
        np.log(latency, out=log_latency, where=known)
        # Bucket i is [edges[i-1], edges[i]): exactly the histogram's own layout.
        latency_bin = np.searchsorted(self._latency_layout.edges, latency, side="right")
        latency_bin[~known] = _UNKNOWN_LATENCY_BIN
        score_bin: list[int | None] = [None] * len(batch)
        scored = [i for i, p in enumerate(batch) if p.score is not None]
        if scored:
            bins = self._score_layout.bin_index([batch[i].score for i in scored])
            for i, b in zip(scored, bins.tolist(), strict=True):
                score_bin[i] = b
        rows = []
        for i, p in enumerate(batch):
            features = None
            if self.store_features and p.features is not None:
                features = json.dumps(dict(p.features), default=str)
            segments = []
            for name in self._segment_cols:
                value = p.segments.get(name)
                segments.append(UNKNOWN_SEGMENT if value is None or value == "" else str(value))
            rows.append((
                p.request_id, float(p.ts), _ROLE_CODE[p.role], p.version, int(p.stage_index),
                int(bool(p.shadow)), float(latency[i]), float(log_latency[i]),
                int(latency_bin[i]), int(bool(p.error)),
                None if p.score is None else float(p.score), score_bin[i],
                None if p.predicted is None else int(p.predicted), features, *segments,
            ))
        return rows

    def _write(self, conn: sqlite3.Connection, batch: Sequence[Prediction]) -> None:
        with self._transaction(conn):
            self._insert(conn, batch)

    def _insert(self, conn: sqlite3.Connection, batch: Sequence[Prediction]) -> None:
        """Insert ``batch`` inside the caller's transaction."""
        rows = self._rows(batch)
        columns = (*_BASE_COLUMNS, *self._segment_cols.values())
        insert = (
            f"INSERT INTO predictions ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})"
        )
        copied = ("label", "labelled_at", *self._value_cols.values())
        propagate = (
            f"UPDATE predictions AS p SET ({', '.join(copied)}) = "
            f"(SELECT {', '.join('s.' + c for c in copied)} FROM predictions AS s "
            " WHERE s.request_id = p.request_id AND s.label IS NOT NULL LIMIT 1) "
            "WHERE p.id > ? AND p.label IS NULL AND EXISTS (SELECT 1 FROM predictions AS s "
            " WHERE s.request_id = p.request_id AND s.label IS NOT NULL)"
        )
        (before,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM predictions").fetchone()
        conn.executemany(insert, rows)
        # Rows whose request was labelled before they were logged (a late shadow copy).
        conn.execute(propagate, (before,))

    def log_atomically(
        self, decide: Callable[[sqlite3.Connection], Sequence[Prediction]]
    ) -> int:
        """Write the predictions ``decide`` returns in one transaction with its own SQL.

        ``decide(conn)`` runs inside an immediate (write-locked) transaction on this
        thread's connection to the collector's file; it may read and write tables of its
        own there and returns the predictions to insert. Both commit together or, if
        anything raises, neither does. Unlike :meth:`log` this writes synchronously and
        bypasses the queue (predictions queued earlier by :meth:`log` may commit after).
        Returns the number of predictions written.
        """
        with self._cond:
            self._check_usable()
        conn = self._conn()
        with self._transaction(conn):
            items = list(decide(conn))
            for i, item in enumerate(items):
                if not isinstance(item, Prediction):
                    raise ValueError(f"predictions[{i}] must be a Prediction, not "
                                     f"{type(item).__name__}")
            if items:
                self._insert(conn, items)
        return len(items)

    # -- labels -------------------------------------------------------------------------

    def _check_labels(self, labels: Sequence[Label]) -> list[tuple[str, int, list[float | None]]]:
        checked = []
        for i, item in enumerate(labels):
            where = f"labels[{i}]"
            if not isinstance(item, Label):
                raise ValueError(f"{where} must be a Label, not {type(item).__name__}")
            if not isinstance(item.request_id, str) or not item.request_id:
                raise ValueError(f"{where}.request_id must be a non-empty string, "
                                 f"got {item.request_id!r}")
            label = _binary(item.label)
            if label is None:
                raise ValueError(f"{where}.label must be 0 or 1, got {item.label!r}")
            values: list[float | None] = []
            given = item.values or {}
            if not isinstance(given, Mapping):
                raise ValueError(f"{where}.values must be a mapping of name to number")
            for name in self._value_cols:
                if name not in given:
                    raise ValueError(
                        f"{where}.values is missing {name!r} (the policy's business KPIs "
                        f"need {list(self._value_cols)} with every label)"
                    )
                value = given[name]
                if not _is_number(value) or not math.isfinite(value):
                    raise ValueError(f"{where}.values[{name!r}] must be a finite number, "
                                     f"got {value!r}")
                values.append(float(value))
            checked.append((item.request_id, label, values))
        return checked

    def add_labels(self, labels: Sequence[Label]) -> LabelResult:
        """Join labels to logged predictions by request id.

        Flushes first, so a label for a request this instance just served is never
        "unknown". A label applies to every row with its id (the served row and, in
        shadow, the candidate's copy). Validates everything before writing anything
        (``ValueError`` naming the item). The first label of an id wins; later ones are
        counted as duplicates and ignored.
        """
        items = list(labels)
        checked = self._check_labels(items)
        self.flush()
        if not checked:
            return LabelResult(0, (), 0)
        now = time.time()
        sets = ", ".join(["label = ?", "labelled_at = ?",
                          *(f"{c} = ?" for c in self._value_cols.values())])
        matched, duplicates = 0, 0
        unknown: list[str] = []
        outcomes: list[LabelOutcome] = []
        conn = self._conn()
        with self._transaction(conn):
            for request_id, label, values in checked:
                rows = conn.execute(
                    "SELECT role, version, shadow, predicted, label FROM predictions "
                    "WHERE request_id = ?", (request_id,)
                ).fetchall()
                if not rows:
                    unknown.append(request_id)
                    continue
                if any(row[4] is not None for row in rows):
                    duplicates += 1
                    continue
                conn.execute(f"UPDATE predictions SET {sets} WHERE request_id = ?",
                             (label, now, *values, request_id))
                matched += 1
                for role, version, shadow, predicted, _ in rows:
                    if predicted is not None:
                        outcomes.append(LabelOutcome(
                            ROLES[role], version, bool(shadow), _OUTCOME[(label, predicted)]
                        ))
            if unknown:
                conn.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + ? "
                    "WHERE key = 'unknown_labels'", (len(unknown),)
                )
        return LabelResult(matched, tuple(unknown), duplicates, tuple(outcomes))

    # -- reading ------------------------------------------------------------------------

    def stage_samples(
        self, now: float, maturity_s: float, *, since: float | None = None
    ) -> list[StageSample]:
        """One :class:`StageSample` per stage index seen, in stage order.

        Requests, errors and latency count every row of a role (shadow copies count for
        the candidate); the labelled KPIs use rows with a label and a prediction that
        were served at or before ``now - maturity_s``. ``since`` (epoch seconds) ignores
        older rows, e.g. those of an earlier rollout in the same directory. Rows this
        instance has queued are written first.
        """
        self.flush()
        if not (_is_number(now) and math.isfinite(now)):
            raise ValueError(f"now must be a finite number, got {now!r}")
        if not (_is_number(maturity_s) and maturity_s >= 0):
            raise ValueError(f"maturity_s must be a number >= 0, got {maturity_s!r}")
        since_sql, since_args = ("", ())
        if since is not None:
            since_sql, since_args = " AND ts >= ?", (float(since),)
        labelled = f"label IS NOT NULL AND predicted IS NOT NULL AND ts <= ?{since_sql}"
        labelled_args = (float(now) - float(maturity_s), *since_args)

        aggregates: dict[tuple[int, int], RoleAggregate] = {}

        def agg(stage: int, role: int) -> RoleAggregate:
            key = (stage, role)
            if key not in aggregates:
                aggregates[key] = RoleAggregate(self.spec)
            return aggregates[key]

        conn = self._conn()
        # A read transaction makes all the scans below see one snapshot.
        conn.execute("BEGIN")
        try:
            self._read_requests(conn, since_sql, since_args, agg)
            self._read_labelled(conn, labelled, labelled_args, agg)
            self._read_segments(conn, labelled, labelled_args, agg)
            self._read_values(conn, labelled, labelled_args, agg)
        finally:
            conn.execute("COMMIT")
        stages = sorted({stage for stage, _ in aggregates})
        return [StageSample(stage, agg(stage, 0), agg(stage, 1)) for stage in stages]

    def _read_requests(self, conn: sqlite3.Connection, since_sql: str,
                       since_args: tuple[Any, ...], agg: Any) -> None:
        rows = conn.execute(
            "SELECT stage_index, role, latency_bin, COUNT(*), SUM(error), SUM(latency_s), "
            "SUM(log_latency - (? + (latency_bin - 1) * ?)), "
            "SUM((log_latency - (? + (latency_bin - 1) * ?)) "
            "  * (log_latency - (? + (latency_bin - 1) * ?))), MIN(latency_s), MAX(latency_s) "
            f"FROM predictions WHERE 1{since_sql} "
            "GROUP BY stage_index, role, latency_bin ORDER BY stage_index, role, latency_bin",
            (*(self._log_low, self._log_growth) * 3, *since_args),
        ).fetchall()
        groups: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
        for row in rows:
            groups.setdefault((row[0], row[1]), []).append(row[2:])
        for (stage, role), buckets in groups.items():
            target: RoleAggregate = agg(stage, role)
            counts = {"index": [], "count": []}
            n, mean, m2, total, errors = 0, 0.0, 0.0, 0.0, 0
            low, high = math.inf, -math.inf
            for bucket, count, err, seconds, s1, s2, lo, hi in buckets:
                if bucket == _UNKNOWN_LATENCY_BIN:
                    target.requests += count
                    target.errors += err
                    continue
                counts["index"].append(bucket)
                counts["count"].append(count)
                errors += err
                total += seconds
                low, high = min(low, lo), max(high, hi)
                # Offsets from the bucket's lower edge are tiny, so the one-pass variance
                # of a bucket cannot cancel catastrophically; buckets merge exactly.
                ref = self._log_low + (bucket - 1) * self._log_growth
                b_mean = s1 / count
                b_m2 = max(s2 - s1 * b_mean, 0.0)
                n, mean, m2 = _chan(n, mean, m2, count, ref + b_mean, b_m2)
            if n == 0:
                continue
            layout = self._latency_layout
            hist = LatencyHistogram.from_dict({
                "low": layout.low, "high": layout.high, "growth": layout.growth,
                "counts": counts, "n": n, "mean_log": mean, "m2_log": m2, "sum": total,
                "min": low, "max": high,
            })
            target.latency.merge(hist)
            target.requests += n
            target.errors += errors

    def _read_labelled(self, conn: sqlite3.Connection, labelled: str,
                       args: tuple[Any, ...], agg: Any) -> None:
        rows = conn.execute(
            "SELECT stage_index, role, score_bin, label, predicted, COUNT(*) "
            f"FROM predictions WHERE {labelled} "
            "GROUP BY stage_index, role, score_bin, label, predicted", args
        ).fetchall()
        bins = self.spec.score_bins
        cells: dict[tuple[int, int], dict[str, int]] = {}
        hists: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for stage, role, score_bin, label, predicted, count in rows:
            cell = cells.setdefault((stage, role), dict.fromkeys(("tp", "fp", "tn", "fn"), 0))
            cell[_OUTCOME[(label, predicted)]] += count
            if score_bin is not None:
                if (stage, role) not in hists:
                    hists[(stage, role)] = (np.zeros(bins, np.int64), np.zeros(bins, np.int64))
                pos, neg = hists[(stage, role)]
                (pos if label else neg)[score_bin] += count
        for key, cell in cells.items():
            agg(*key).confusion.merge(Confusion(**cell))
        for key, (pos, neg) in hists.items():
            agg(*key).scores.add_counts(pos, neg)

    def _read_segments(self, conn: sqlite3.Connection, labelled: str,
                       args: tuple[Any, ...], agg: Any) -> None:
        for name, col in self._segment_cols.items():
            rows = conn.execute(
                f"SELECT stage_index, role, COALESCE({col}, ?), label, predicted, COUNT(*) "
                f"FROM predictions WHERE {labelled} GROUP BY 1, 2, 3, 4, 5",
                (UNKNOWN_SEGMENT, *args),
            ).fetchall()
            cells: dict[tuple[int, int, str], dict[str, int]] = {}
            for stage, role, value, label, predicted, count in rows:
                cell = cells.setdefault((stage, role, value),
                                        dict.fromkeys(("tp", "fp", "tn", "fn"), 0))
                cell[_OUTCOME[(label, predicted)]] += count
            for (stage, role, value), cell in cells.items():
                per_value = agg(stage, role).segments[name]
                per_value.setdefault(value, Confusion()).merge(Confusion(**cell))

    def _read_values(self, conn: sqlite3.Connection, labelled: str,
                     args: tuple[Any, ...], agg: Any) -> None:
        if not self._value_cols:
            return
        names = list(self._value_cols)
        cols = list(self._value_cols.values())
        k = len(cols)
        present = " AND ".join(f"{c} IS NOT NULL" for c in cols)
        means = ", ".join(f"AVG({c}) AS m{i}" for i, c in enumerate(cols))
        products = ", ".join(
            f"SUM((b.{cols[i]} - m.m{i}) * (b.{cols[j]} - m.m{j}))"
            for i in range(k) for j in range(i, k)
        )
        # Two passes (means, then centred products): raw sums of squares of money
        # amounts would lose the variance to cancellation.
        rows = conn.execute(
            f"WITH b AS (SELECT stage_index, role, {', '.join(cols)} FROM predictions "
            f"  WHERE {labelled} AND {present}), "
            f"m AS (SELECT stage_index, role, COUNT(*) AS n, {means} FROM b "
            "  GROUP BY stage_index, role) "
            f"SELECT m.stage_index, m.role, m.n, {', '.join(f'm.m{i}' for i in range(k))}, "
            f"{products} FROM b JOIN m ON b.stage_index = m.stage_index AND b.role = m.role "
            "GROUP BY m.stage_index, m.role", args
        ).fetchall()
        for row in rows:
            stage, role, n = row[0], row[1], row[2]
            mean = [float(x) for x in row[3:3 + k]]
            comoment = np.zeros((k, k))
            it = iter(row[3 + k:])
            for i in range(k):
                for j in range(i, k):
                    comoment[i, j] = comoment[j, i] = float(next(it))
            part = CoMoments.from_dict({
                "names": names, "n": n, "mean": mean, "comoment": comoment.tolist(),
            })
            target = agg(stage, role)
            if target.values is not None:
                target.values.merge(part)

    def stats(self) -> dict[str, int]:
        """Counts: ``predictions`` and ``labelled`` rows stored, ``unknown_labels``
        (cumulative, across processes), ``pending`` (queued in this instance)."""
        conn = self._conn()
        (predictions, labelled) = conn.execute(
            "SELECT COUNT(*), COUNT(label) FROM predictions"
        ).fetchone()
        (unknown,) = conn.execute(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'unknown_labels'"
        ).fetchone()
        with self._cond:
            pending = self._enqueued - self._committed
        return {
            "predictions": int(predictions),
            "labelled": int(labelled),
            "unknown_labels": int(unknown),
            "pending": int(pending),
        }

    def purge(self, now: float) -> int:
        """Delete rows served more than ``retention_s`` before ``now``; returns how many."""
        if not (_is_number(now) and math.isfinite(now)):
            raise ValueError(f"now must be a finite number, got {now!r}")
        conn = self._conn()
        with self._transaction(conn):
            cur = conn.execute("DELETE FROM predictions WHERE ts < ?", (now - self.retention_s,))
        return int(cur.rowcount)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Write everything queued, stop the writer and close the database.

        Raises :class:`CollectorError` if the writer failed (the rows it could not write
        are reported, not silently dropped). Calling it again does nothing.
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        with self._cond:
            self._closed = True
            error, unwritten = self._error, len(self._queue)
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        if error is not None:
            raise CollectorError(
                f"the collector's writer failed ({type(error).__name__}: {error}); "
                f"{unwritten} predictions were not written to {self.db_path}"
            ) from error

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Collector({str(self.db_path)!r})"


