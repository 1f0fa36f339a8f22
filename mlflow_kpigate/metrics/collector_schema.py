"""The prediction log's tables, its binning check, and the columns of the policy's fields.

One ``predictions`` row per logged prediction, with a ``meta`` table (binning, schema
version, the count of labels for unknown ids), a ``segment_offsets`` table (how much of
each router segment file is ingested, :mod:`.segment_ingest`; created in existing files
too) and a ``fields`` table naming the dynamic columns: the policy's segment fields are
stored in ``s0``, ``s1``…, its business values in ``v0``, ``v1``…, so no user string ever
becomes an SQL identifier. A spec with new segment fields or value names adds columns
(older rows read as ``"unknown"`` / no value); a spec with other binning is refused, since
stored bins could not be compared.

Privacy by design: a row holds what the KPIs need (id, time, role, version, stage, shadow
flag, latency, error flag, score, predicted label, the policy's segment values, the label
and the policy's business values), never the request's features unless the collector
was opened with ``store_features=True``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow_kpigate.core.records import ROLES
from mlflow_kpigate.kpis import AggregateSpec, LatencyHistogram, RoleAggregate, ScoreHistogram
from mlflow_kpigate.metrics.collector_db import transaction

__all__ = [
    "BASE_COLUMNS",
    "OUTCOME",
    "ROLE_CODE",
    "UNKNOWN_LATENCY_BIN",
    "Layout",
    "open_schema",
]

#: ``role`` column value of each role.
ROLE_CODE = {role: code for code, role in enumerate(ROLES)}
#: Confusion cell of a stored ``(label, predicted)`` pair.
OUTCOME = {(1, 1): "tp", (0, 1): "fp", (0, 0): "tn", (1, 0): "fn"}
# Bucket of rows whose latency is unknown (real buckets are 0..len(edges)). Storing it
# as a bucket keeps the table's NOT NULL columns, and so files written by earlier versions.
UNKNOWN_LATENCY_BIN = -1
_SCHEMA_VERSION = 1

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
CREATE TABLE IF NOT EXISTS segment_offsets (
    name TEXT PRIMARY KEY,
    "offset" INTEGER NOT NULL,
    torn INTEGER NOT NULL DEFAULT 0
);
"""

#: The ``predictions`` columns every insert fills, before the segment columns.
BASE_COLUMNS = (
    "request_id", "ts", "role", "version", "stage_index", "shadow", "latency_s",
    "log_latency", "latency_bin", "error", "score", "score_bin", "predicted", "features",
)


@dataclass(frozen=True)
class Layout:
    """How one file stores a spec: the bins and the column of each field.

    ``latency`` and ``scores`` are empty histograms, kept for their bucket layout;
    ``log_low`` and ``log_growth`` place a log-latency relative to its bucket's lower edge.
    ``segment_cols`` and ``value_cols`` map the spec's names to columns, in spec order.
    """

    spec: AggregateSpec
    latency: LatencyHistogram
    scores: ScoreHistogram
    log_low: float
    log_growth: float
    segment_cols: Mapping[str, str]
    value_cols: Mapping[str, str]


def open_schema(conn: sqlite3.Connection, db_path: Path, spec: AggregateSpec) -> Layout:
    """Create the tables if needed, check the file's binning against ``spec`` (``ValueError``
    if it differs) and add columns for its new segment fields and value names."""
    latency = LatencyHistogram(growth=spec.latency_growth)
    scores = RoleAggregate(spec).scores
    layout = json.dumps(
        {
            "score_bins": spec.score_bins,
            "latency": [latency.low, latency.high, latency.growth],
        },
        sort_keys=True,
    )
    conn.executescript(_SCHEMA)
    with transaction(conn):
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "layout" not in meta:
            conn.execute("INSERT INTO meta VALUES ('layout', ?)", (layout,))
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                         (str(_SCHEMA_VERSION),))
            conn.execute("INSERT INTO meta VALUES ('unknown_labels', '0')")
        elif meta["layout"] != layout:
            raise ValueError(
                f"{db_path} was written with binning {meta['layout']}, but this "
                f"spec asks for {layout}: open it with the same score_bins and "
                "latency_growth"
            )
        segment_cols = _ensure_columns(conn, "segment", spec.segment_fields, "TEXT")
        value_cols = _ensure_columns(conn, "value", spec.value_names, "REAL")
    return Layout(
        spec=spec,
        latency=latency,
        scores=scores,
        log_low=math.log(latency.low),
        log_growth=math.log(latency.growth),
        segment_cols=segment_cols,
        value_cols=value_cols,
    )


def _ensure_columns(
    conn: sqlite3.Connection, kind: str, names: Sequence[str], sql_type: str
) -> dict[str, str]:
    """Column of each name, adding missing ones (``s0``, ``v0``…, named in ``fields``)."""
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
