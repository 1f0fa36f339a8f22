"""Inserting predictions: one ``predictions`` row each, binned once at insert time.

Score bin, latency bucket and log-latency are computed here, once per row, so that reading
stage samples (:mod:`mlflow_kpigate.metrics.collector_reader`) is a handful of ``GROUP BY``
scans. Latency may be unknown (``latency_s=None``: the in-cluster collector service learns
of predictions from Seldon's request logger, which carries no model latency); such rows
are stored with 0 s in bucket ``-1``, which every reader skips, so they count as requests
(and errors) but stay out of the latency histogram.

**A label applies to every row of its request id**, including rows logged after the label
(a shadow copy that finished scoring after the caller posted the label): an insert copies
an existing label onto new rows of the same id in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlflow_kpigate.core.records import UNKNOWN_SEGMENT, Prediction
from mlflow_kpigate.metrics.collector_schema import (
    BASE_COLUMNS,
    ROLE_CODE,
    UNKNOWN_LATENCY_BIN,
    Layout,
)

__all__ = ["insert_predictions"]


def _rows(
    layout: Layout, batch: Sequence[Prediction], store_features: bool
) -> list[tuple[Any, ...]]:
    known = np.fromiter((p.latency_s is not None for p in batch), dtype=bool,
                        count=len(batch))
    # Unknown latencies are stored as 0 s in bucket -1, which every reader skips.
    latency = np.fromiter((p.latency_s or 0.0 for p in batch), dtype=np.float64,
                          count=len(batch))
    log_latency = np.zeros(len(batch))
    np.log(latency, out=log_latency, where=known)
    # Bucket i is [edges[i-1], edges[i]): exactly the histogram's own layout.
    latency_bin = np.searchsorted(layout.latency.edges, latency, side="right")
    latency_bin[~known] = UNKNOWN_LATENCY_BIN
    score_bin: list[int | None] = [None] * len(batch)
    scored = [i for i, p in enumerate(batch) if p.score is not None]
    if scored:
        bins = layout.scores.bin_index([float(batch[i].score or 0.0) for i in scored])
        for i, b in zip(scored, bins.tolist(), strict=True):
            score_bin[i] = b
    rows = []
    for i, p in enumerate(batch):
        features = None
        if store_features and p.features is not None:
            features = json.dumps(dict(p.features), default=str)
        segments = []
        for name in layout.segment_cols:
            value = p.segments.get(name)
            segments.append(UNKNOWN_SEGMENT if value is None or value == "" else str(value))
        rows.append((
            p.request_id, float(p.ts), ROLE_CODE[p.role], p.version, int(p.stage_index),
            int(bool(p.shadow)), float(latency[i]), float(log_latency[i]),
            int(latency_bin[i]), int(bool(p.error)),
            None if p.score is None else float(p.score), score_bin[i],
            None if p.predicted is None else int(p.predicted), features, *segments,
        ))
    return rows


def insert_predictions(
    conn: sqlite3.Connection, layout: Layout, batch: Sequence[Prediction],
    *, store_features: bool,
) -> None:
    """Insert ``batch`` inside the caller's transaction."""
    rows = _rows(layout, batch, store_features)
    columns = (*BASE_COLUMNS, *layout.segment_cols.values())
    insert = (
        f"INSERT INTO predictions ({', '.join(columns)}) "
        f"VALUES ({', '.join('?' * len(columns))})"
    )
    copied = ("label", "labelled_at", *layout.value_cols.values())
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
