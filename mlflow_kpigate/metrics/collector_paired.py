"""The paired part of shadow strata, read from the prediction log in SQL.

In a shadow stage the router logs the baseline's answer and the candidate's shadow answer
under the same request id and stage (during the bake it is the reverse), and a label
joins both rows. :func:`read_paired` joins the two roles' rows of each request for the
stages that have shadow rows and returns one
:class:`~mlflow_kpigate.kpis.PairedAggregate` per such stage (docs/statistics.md, "Paired
comparison in shadow"):

* every request both roles answered (the ``since`` window on both rows): the error 2×2
  table, and the candidate − baseline log-latency when both latencies are known. The
  differences are summed per offset of the two rows' latency buckets, relative to the
  offset's edge difference (a residual smaller than one bucket's width: no cancellation),
  and the offsets merged with Chan's formula, as the role scans merge their buckets;
* every request both roles predicted and whose label arrived, both rows served at or
  before the maturity cutoff: the (label, baseline predicted, candidate predicted) table,
  and where both have a score, the pair of score bins.

The join starts from the candidate's rows of the shadow stages and finds the baseline's
row of the same request through the index on ``request_id``. A request id has one row per
role (a fallback answer in the bake — the candidate failed, the baseline answered — is a
pair too: the candidate's failed row and the baseline's answer). The result size depends
on the distinct score-bin pairs, not on the number of rows.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np

from mlflow_kpigate.kpis import Moments, PairedAggregate
from mlflow_kpigate.kpis.moments import _chan
from mlflow_kpigate.metrics.collector_schema import UNKNOWN_LATENCY_BIN, Layout

__all__ = ["read_paired"]

_JOIN = (
    "FROM predictions AS c JOIN predictions AS b "
    "ON b.request_id = c.request_id AND b.stage_index = c.stage_index AND b.role = 0 "
    "WHERE c.role = 1 AND c.stage_index IN ({stages})"
)


def read_paired(conn: sqlite3.Connection, layout: Layout, since: float | None,
                cutoff: float) -> dict[int, PairedAggregate]:
    """The paired part of every stage with shadow rows (inside the caller's read
    transaction); ``cutoff`` is ``now − maturity`` for the labelled rows."""
    since_args: tuple[float, ...]
    window_args: tuple[float, ...]
    since_sql, since_args = "", ()
    if since is not None:
        since_sql, since_args = " AND ts >= ?", (float(since),)
    stages = [int(s) for (s,) in conn.execute(
        f"SELECT DISTINCT stage_index FROM predictions WHERE shadow = 1{since_sql}",
        since_args)]
    if not stages:
        return {}
    out = {s: PairedAggregate(layout.spec.score_bins) for s in stages}
    join = _JOIN.format(stages=", ".join(str(s) for s in stages))
    window, window_args = "", ()
    if since is not None:
        window, window_args = " AND b.ts >= ? AND c.ts >= ?", (float(since), float(since))
    _read_requests(conn, layout, join + window, window_args, out)
    labelled = (" AND b.label IS NOT NULL AND c.label IS NOT NULL AND b.predicted IS NOT "
                "NULL AND c.predicted IS NOT NULL AND b.ts <= ? AND c.ts <= ?")
    _read_labelled(conn, join + window + labelled, (*window_args, cutoff, cutoff), out)
    return out


def _read_requests(conn: sqlite3.Connection, layout: Layout, where: str,
                   args: tuple[Any, ...], out: dict[int, PairedAggregate]) -> None:
    g = layout.log_growth
    known = f"b.latency_bin != {UNKNOWN_LATENCY_BIN} AND c.latency_bin != {UNKNOWN_LATENCY_BIN}"
    # The residual of a pair's log-latency difference from its buckets' edge difference.
    resid = "(c.log_latency - b.log_latency - (c.latency_bin - b.latency_bin) * ?)"
    rows = conn.execute(
        f"SELECT c.stage_index, b.error, c.error, "
        f"CASE WHEN {known} THEN c.latency_bin - b.latency_bin END AS k, COUNT(*), "
        f"SUM(CASE WHEN {known} THEN {resid} END), "
        f"SUM(CASE WHEN {known} THEN {resid} * {resid} END) "
        f"{where} GROUP BY 1, 2, 3, 4",
        (g, g, g, *args),
    ).fetchall()
    moments: dict[int, tuple[int, float, float]] = {}
    for stage, err_b, err_c, offset, count, s1, s2 in rows:
        paired = out[stage]
        paired.errors[int(err_b), int(err_c)] += int(count)
        if offset is None:
            continue
        mean = s1 / count
        m2 = max(s2 - s1 * mean, 0.0)
        n, mu, ss = moments.get(stage, (0, 0.0, 0.0))
        moments[stage] = _chan(n, mu, ss, int(count), offset * g + mean, m2)
    for stage, (n, mu, ss) in moments.items():
        out[stage].log_latency.merge(_moments(n, float(mu), float(ss)))


def _read_labelled(conn: sqlite3.Connection, where: str, args: tuple[Any, ...],
                   out: dict[int, PairedAggregate]) -> None:
    rows = conn.execute(
        "SELECT c.stage_index, c.label, b.predicted, c.predicted, b.score_bin, c.score_bin, "
        f"COUNT(*) {where} GROUP BY 1, 2, 3, 4, 5, 6", args,
    ).fetchall()
    if not rows:
        return
    data = np.array([[-1 if v is None else v for v in row] for row in rows], dtype=np.int64)
    for stage in np.unique(data[:, 0]):
        part = data[data[:, 0] == stage]
        paired = out[int(stage)]
        label, pred_b, pred_c, bin_b, bin_c, count = part[:, 1:].T
        np.add.at(paired.outcomes, (label, pred_b, pred_c), count)
        scored = (bin_b >= 0) & (bin_c >= 0)
        paired.add_score_pairs(label[scored], bin_b[scored], bin_c[scored], count[scored])


def _moments(n: int, mean: float, m2: float) -> Moments:
    out = Moments()
    out.n, out.mean, out.m2 = n, mean, m2
    return out
