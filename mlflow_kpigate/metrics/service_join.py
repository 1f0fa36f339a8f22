"""Joining logger events into predictions in the collector's own SQLite file.

Every function here runs inside a transaction of
:meth:`~mlflow_kpigate.metrics.Collector.log_atomically` and returns the predictions to
insert with it:

* **Atomic joins.** A request and its response share ``Ce-Requestid``; either may come
  first. The first is kept in a ``ce_pending`` table in the collector's own SQLite file
  (without the request's features); the second deletes it and inserts the predictions in
  the same transaction, so a crash or restart neither loses a half nor writes a prediction
  twice. Each half is keyed by request id, role and graph node (``Ce-Modelid``).
* **Idempotent deliveries.** ``Ce-Id`` is unique per event, so ids seen within
  ``dedupe_s`` (``ce_seen``) are answered ``duplicate`` and not counted again.
* **Expiry.** A half whose partner has not come within ``pending_ttl_s`` is expired by a
  periodic sweep: Seldon does not log a response when the model fails, so an unanswered
  request becomes an error prediction (``unanswered="drop"`` drops it instead); a response
  without its request becomes a prediction with unknown segments. A partner that comes
  later is dropped and counted as late (``ce_expired``).
* **Business values** found among a request's columns are kept (``ce_values``, for
  ``retention_s``) so that ``/feedback`` labels may leave them out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.core.payloads import PayloadError
from mlflow_kpigate.core.records import ROLES, Label, Prediction
from mlflow_kpigate.metrics.cloudevent_envelope import REQUEST, RESPONSE, CloudEvent, EventError
from mlflow_kpigate.metrics.cloudevent_halves import RequestHalf, ResponseHalf
from mlflow_kpigate.metrics.cloudevent_join import join_predictions, row_ids
from mlflow_kpigate.metrics.service_config import CollectorServiceConfig
from mlflow_kpigate.metrics.service_notices import read_stage

__all__ = [
    "create_join_tables",
    "event_role",
    "expire_halves",
    "fill_values",
    "join_event",
    "pending_counts",
]

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
"""


@dataclass(frozen=True)
class _Half:
    """A pending half as stored."""

    kind: str
    received: float
    stage_index: int
    shadow: bool
    half: str


def create_join_tables(conn: sqlite3.Connection) -> None:
    """Create the tables of pending, expired and seen events and of kept values."""
    for statement in filter(str.strip, _SCHEMA.split(";")):
        conn.execute(statement)


def event_role(event: CloudEvent, deployment: str) -> str:
    """The role of the predictor that logged ``event`` (``EventError`` if it is not one of
    ``deployment``'s roles)."""
    if event.endpoint is None:
        raise EventError("endpoint: missing (Ce-Endpoint, the predictor name); name the "
                         "predictors 'baseline' and 'candidate'", event.kind)
    if event.endpoint not in ROLES:
        raise EventError(f"endpoint: predictor {event.endpoint!r} is neither 'baseline' "
                         "nor 'candidate'; kpigate's SeldonDeployment names its predictors "
                         "by role", event.kind)
    if event.deployment is not None and event.deployment != deployment:
        raise EventError(f"inferenceservicename: event from {event.deployment!r}, but this "
                         f"collector serves {deployment!r}; point that "
                         "deployment's logger at its own collector", event.kind)
    return event.endpoint


def join_event(
    conn: sqlite3.Connection, cfg: CollectorServiceConfig, event: CloudEvent, role: str,
    half: RequestHalf | ResponseHalf, now: float,
) -> tuple[list[Prediction], dict[str, Any]]:
    """Record one event's half: keep it pending, or join it with its partner.

    Returns the predictions to insert (none until both halves are in) and the reply:
    ``outcome`` (``accepted`` or ``duplicate``), ``joined``, ``stage_index``, and ``late``
    when the partner had already expired.
    """
    model_id = event.model_id or ""
    key = (event.request_id, role, model_id)
    other = RESPONSE if event.kind == REQUEST else REQUEST
    result: dict[str, Any] = {"outcome": "accepted", "id": event.id,
                              "request_id": event.request_id, "role": role}
    seen = conn.execute("INSERT OR IGNORE INTO ce_seen VALUES (?, ?)", (event.id, now))
    if seen.rowcount == 0:
        result.update(outcome="duplicate", reason="event id already received")
        return [], result
    if conn.execute("SELECT 1 FROM ce_expired WHERE request_id = ? AND role = ? AND "
                    "model_id = ? AND kind = ?", (*key, other)).fetchone():
        result.update(late=True, reason=f"its {other} expired before it came; dropped")
        return [], result
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
            return [], result
        stage = read_stage(conn, cfg.deployment)
        shadow = role == "candidate" and stage.shadow
        conn.execute("INSERT INTO ce_pending VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (*key, event.kind, event.id, now, stage.stage_index, int(shadow),
                      half.to_json()))
        _keep_values(conn, event.request_id, half, now)
        result.update(joined=False, stage_index=stage.stage_index)
        return [], result
    conn.execute("DELETE FROM ce_pending WHERE request_id = ? AND role = ? AND "
                 "model_id = ? AND kind = ?", (*key, other))
    _keep_values(conn, event.request_id, half, now)
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
    return predictions, result


def _keep_values(conn: sqlite3.Connection, request_id: str,
                 half: RequestHalf | ResponseHalf, now: float) -> None:
    if not isinstance(half, RequestHalf):
        return
    rows = [(rid, name, value, now)
            for rid, values in zip(row_ids(request_id, half.n_rows), half.values,
                                   strict=True)
            for name, value in values.items()]
    if rows:
        conn.executemany("INSERT OR REPLACE INTO ce_values VALUES (?, ?, ?, ?)", rows)


def expire_halves(
    conn: sqlite3.Connection, cfg: CollectorServiceConfig, now: float
) -> tuple[list[Prediction], dict[str, int]]:
    """Expire halves older than ``pending_ttl_s`` and forget old event ids and values.

    Returns the predictions of the expired halves and the number expired by kind.
    """
    cutoff = now - cfg.pending_ttl_s
    expired = {REQUEST: 0, RESPONSE: 0}
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
    return out, expired


def fill_values(conn: sqlite3.Connection, wanted: Sequence[str],
                labels: list[Label]) -> list[Label]:
    """``labels`` with the business values they lack taken from their request's columns
    (``PayloadError`` naming the first one still missing)."""
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


def pending_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Halves waiting for their partner, by kind."""
    rows = conn.execute("SELECT kind, COUNT(*) FROM ce_pending GROUP BY kind").fetchall()
    out = {REQUEST: 0, RESPONSE: 0}
    out.update({kind: int(n) for kind, n in rows})
    return out
