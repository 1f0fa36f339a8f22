"""The collector's read path: per-stage KPI samples from the prediction log, and retention.

**Aggregation is SQL.** Rows are binned at insert time
(:mod:`mlflow_kpigate.metrics.collector_rows`), so :meth:`LogReader.stage_samples` is a handful
of ``GROUP BY`` scans whose result size depends on the number of bins and segments, not of
rows. Log-latency moments are summed per bucket relative to the bucket's lower edge (no
cancellation), then merged across buckets with Chan's formula; business-value co-moments
use two passes (means, then centred products). The latency histogram is rebuilt through
its serialised form rather than ``LatencyHistogram.add_binned`` so that the exact minimum
and maximum (used to interpolate quantiles in the edge buckets) survive; results equal a
:class:`~mlflow_kpigate.kpis.RoleAggregate` fed row by row, up to float rounding.

Rows of unknown latency (bucket ``-1``) count as requests and errors but stay out of the
latency histogram, so latency KPIs are "missing" rather than made up.

Stages with shadow rows (a shadow stage, the bake) also get their paired part, the two
roles' rows of each request joined (:mod:`.collector_paired`), in the same snapshot.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from typing import Any

import numpy as np

from mlflow_kpigate.core.records import UNKNOWN_SEGMENT
from mlflow_kpigate.core.records import is_number as _is_number
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import CoMoments, Confusion, LatencyHistogram, RoleAggregate
from mlflow_kpigate.kpis.moments import _chan
from mlflow_kpigate.metrics.collector_db import Connections, transaction
from mlflow_kpigate.metrics.collector_paired import read_paired
from mlflow_kpigate.metrics.collector_schema import OUTCOME, UNKNOWN_LATENCY_BIN, Layout

__all__ = ["LogReader"]

# The aggregate of a (stage index, role code), created on first use.
_Aggregates = Callable[[int, int], RoleAggregate]


class LogReader:
    """Reads one prediction log through its collector's connections."""

    def __init__(self, connections: Connections, layout: Layout) -> None:
        self._connections = connections
        self._layout = layout

    def stage_samples(
        self, now: float, maturity_s: float, since: float | None
    ) -> list[StageSample]:
        """One :class:`StageSample` per stage index seen, in stage order (see
        :meth:`mlflow_kpigate.metrics.Collector.stage_samples`)."""
        if not (_is_number(now) and math.isfinite(now)):
            raise ValueError(f"now must be a finite number, got {now!r}")
        if not (_is_number(maturity_s) and maturity_s >= 0):
            raise ValueError(f"maturity_s must be a number >= 0, got {maturity_s!r}")
        since_sql = ""
        since_args: tuple[float, ...] = ()
        if since is not None:
            since_sql, since_args = " AND ts >= ?", (float(since),)
        labelled = f"label IS NOT NULL AND predicted IS NOT NULL AND ts <= ?{since_sql}"
        labelled_args = (float(now) - float(maturity_s), *since_args)
        layout = self._layout

        aggregates: dict[tuple[int, int], RoleAggregate] = {}

        def agg(stage: int, role: int) -> RoleAggregate:
            key = (stage, role)
            if key not in aggregates:
                aggregates[key] = RoleAggregate(layout.spec)
            return aggregates[key]

        conn = self._connections.this_thread()
        # A read transaction makes all the scans below see one snapshot.
        conn.execute("BEGIN")
        try:
            _read_requests(conn, layout, since_sql, since_args, agg)
            _read_labelled(conn, layout, labelled, labelled_args, agg)
            _read_segments(conn, layout, labelled, labelled_args, agg)
            _read_values(conn, layout, labelled, labelled_args, agg)
            paired = read_paired(conn, layout, since, labelled_args[0])
        finally:
            conn.execute("COMMIT")
        stages = sorted({stage for stage, _ in aggregates})
        return [StageSample(stage, agg(stage, 0), agg(stage, 1), paired.get(stage))
                for stage in stages]

    def counts(self) -> tuple[int, int, int]:
        """Rows stored, of which labelled, and labels for unknown ids (cumulative)."""
        conn = self._connections.this_thread()
        (predictions, labelled) = conn.execute(
            "SELECT COUNT(*), COUNT(label) FROM predictions"
        ).fetchone()
        (unknown,) = conn.execute(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'unknown_labels'"
        ).fetchone()
        return int(predictions), int(labelled), int(unknown)

    def purge(self, now: float, retention_s: float) -> int:
        """Delete rows served more than ``retention_s`` before ``now``; returns how many."""
        if not (_is_number(now) and math.isfinite(now)):
            raise ValueError(f"now must be a finite number, got {now!r}")
        conn = self._connections.this_thread()
        with transaction(conn):
            cur = conn.execute("DELETE FROM predictions WHERE ts < ?", (now - retention_s,))
        return int(cur.rowcount)


def _read_requests(conn: sqlite3.Connection, layout: Layout, since_sql: str,
                   since_args: tuple[Any, ...], agg: _Aggregates) -> None:
    rows = conn.execute(
        "SELECT stage_index, role, latency_bin, COUNT(*), SUM(error), SUM(latency_s), "
        "SUM(log_latency - (? + (latency_bin - 1) * ?)), "
        "SUM((log_latency - (? + (latency_bin - 1) * ?)) "
        "  * (log_latency - (? + (latency_bin - 1) * ?))), MIN(latency_s), MAX(latency_s) "
        f"FROM predictions WHERE 1{since_sql} "
        "GROUP BY stage_index, role, latency_bin ORDER BY stage_index, role, latency_bin",
        (*(layout.log_low, layout.log_growth) * 3, *since_args),
    ).fetchall()
    groups: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row[2:])
    for (stage, role), buckets in groups.items():
        target = agg(stage, role)
        counts: dict[str, list[int]] = {"index": [], "count": []}
        n, mean, m2, total, errors = 0, 0.0, 0.0, 0.0, 0
        low, high = math.inf, -math.inf
        for bucket, count, err, seconds, s1, s2, lo, hi in buckets:
            if bucket == UNKNOWN_LATENCY_BIN:
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
            ref = layout.log_low + (bucket - 1) * layout.log_growth
            b_mean = s1 / count
            b_m2 = max(s2 - s1 * b_mean, 0.0)
            n, mean, m2 = _chan(n, mean, m2, count, ref + b_mean, b_m2)
        if n == 0:
            continue
        edges = layout.latency
        hist = LatencyHistogram.from_dict({
            "low": edges.low, "high": edges.high, "growth": edges.growth,
            "counts": counts, "n": n, "mean_log": mean, "m2_log": m2, "sum": total,
            "min": low, "max": high,
        })
        target.latency.merge(hist)
        target.requests += n
        target.errors += errors


def _read_labelled(conn: sqlite3.Connection, layout: Layout, labelled: str,
                   args: tuple[Any, ...], agg: _Aggregates) -> None:
    rows = conn.execute(
        "SELECT stage_index, role, score_bin, label, predicted, COUNT(*) "
        f"FROM predictions WHERE {labelled} "
        "GROUP BY stage_index, role, score_bin, label, predicted", args
    ).fetchall()
    bins = layout.spec.score_bins
    cells: dict[tuple[int, int], dict[str, int]] = {}
    hists: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for stage, role, score_bin, label, predicted, count in rows:
        cell = cells.setdefault((stage, role), dict.fromkeys(("tp", "fp", "tn", "fn"), 0))
        cell[OUTCOME[(label, predicted)]] += count
        if score_bin is not None:
            if (stage, role) not in hists:
                hists[(stage, role)] = (np.zeros(bins, np.int64), np.zeros(bins, np.int64))
            pos, neg = hists[(stage, role)]
            (pos if label else neg)[score_bin] += count
    for key, cell in cells.items():
        agg(*key).confusion.merge(Confusion(**cell))
    for key, (pos, neg) in hists.items():
        agg(*key).scores.add_counts(pos, neg)


def _read_segments(conn: sqlite3.Connection, layout: Layout, labelled: str,
                   args: tuple[Any, ...], agg: _Aggregates) -> None:
    for name, col in layout.segment_cols.items():
        rows = conn.execute(
            f"SELECT stage_index, role, COALESCE({col}, ?), label, predicted, COUNT(*) "
            f"FROM predictions WHERE {labelled} GROUP BY 1, 2, 3, 4, 5",
            (UNKNOWN_SEGMENT, *args),
        ).fetchall()
        cells: dict[tuple[int, int, str], dict[str, int]] = {}
        for stage, role, value, label, predicted, count in rows:
            cell = cells.setdefault((stage, role, value),
                                    dict.fromkeys(("tp", "fp", "tn", "fn"), 0))
            cell[OUTCOME[(label, predicted)]] += count
        for (stage, role, value), cell in cells.items():
            per_value = agg(stage, role).segments[name]
            per_value.setdefault(value, Confusion()).merge(Confusion(**cell))


def _read_values(conn: sqlite3.Connection, layout: Layout, labelled: str,
                 args: tuple[Any, ...], agg: _Aggregates) -> None:
    if not layout.value_cols:
        return
    names = list(layout.value_cols)
    cols = list(layout.value_cols.values())
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
