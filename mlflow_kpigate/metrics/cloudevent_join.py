"""Joining a request half and its response half into predictions (pure: no I/O).

The response is logged only when the node succeeded, so a request whose response never
comes is the sign of a failed prediction.

What the events do not carry is the model's latency: ``Ce-Time`` is stamped when a
logger worker sends the event from its queue, so the difference between a response's and
its request's ``Ce-Time`` mixes queueing delay into the model time. Predictions built here
therefore have ``latency_s=None`` (unknown); in cluster mode latency KPIs come from
Seldon's executor histogram (``seldon_api_executor_server_requests_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mlflow_kpigate.core.records import ROLES, Prediction
from mlflow_kpigate.metrics.cloudevent_halves import RequestHalf, ResponseHalf

__all__ = ["join_predictions", "row_ids"]


def row_ids(request_id: str, n_rows: int) -> list[str]:
    """Per-row prediction ids, as the embedded router makes them: the request id for one
    row, ``REQID/i`` for row ``i`` of a larger request."""
    return [request_id] if n_rows == 1 else [f"{request_id}/{i}" for i in range(n_rows)]


def join_predictions(
    *,
    request_id: str,
    role: str,
    version: str,
    stage_index: int,
    shadow: bool,
    ts: float,
    request: RequestHalf | None,
    response: ResponseHalf | None,
) -> list[Prediction]:
    """The predictions of one request/response pair (either may be missing).

    * both halves: one row per request row, scored from the response (if the response has
      another row count, or failed, no scores; a failure makes the rows errors);
    * request only (its response never came, which Seldon's logger does when the model
      failed): error rows without scores;
    * response only (its request was lost): rows with unknown segments.

    Latency is unknown (``None``): see the module docstring.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if request is not None:
        n = request.n_rows
    elif response is not None:
        n = response.n_rows
    else:
        return []
    if response is not None and response.error is not None:
        n = request.n_rows if request is not None else 1
    segments: Iterable[Mapping[str, str]] = (
        request.segments if request is not None else [{}] * n)
    failed = response is None or response.error is not None
    answered = response if response is not None and not failed and response.n_rows == n \
        else None
    out = []
    for i, (rid, segs) in enumerate(zip(row_ids(request_id, n), segments, strict=True)):
        score = answered.scores[i] if answered is not None else None
        predicted = answered.predicted[i] if answered is not None else None
        out.append(Prediction(
            request_id=rid, ts=ts, role=role, version=version, stage_index=stage_index,
            shadow=shadow, latency_s=None, error=failed, score=score, predicted=predicted,
            segments=dict(segs),
        ))
    return out
