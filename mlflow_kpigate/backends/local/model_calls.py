"""One model call on one request, and the prediction rows that record it.

:func:`call_model` runs the baseline's or the candidate's ``predict`` on a parsed request
and never raises: a model failure becomes an :class:`Attempt` with an ``error`` (and
``invalid_input`` when MLflow rejected the input against the model's signature). Latency
is the model's ``predict`` time for the whole request, recorded on each of its rows
(:func:`prediction_rows`, with the :class:`RequestInfo` all rows of a request share).
:func:`predict_attempt` is the same call on a model object, for the candidate's worker
process (:mod:`.candidate_worker`), which has no :class:`RouterConfig`;
:func:`input_schema` reads the input schema a model's payloads are parsed with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.core.payloads import ModelOutput, ParsedPayload, interpret_output
from mlflow_kpigate.core.records import Prediction

__all__ = [
    "Attempt",
    "RequestInfo",
    "call_model",
    "describe_error",
    "failed_attempt",
    "input_schema",
    "predict_attempt",
    "prediction_rows",
]

_SCHEMA_FAILURE = "SCHEMA_ENFORCEMENT_FAILED"  # MlflowException.error_class of pyfunc


@dataclass(frozen=True)
class Attempt:
    """One model call on one request."""

    role: str
    version: str
    raw: Any
    error: str | None
    latency_s: float
    output: ModelOutput
    invalid_input: bool = False  # MLflow rejected the input against the model's signature
    # The response body already encoded (a model in another process sends its answer
    # as MLflow's server would); ``None``: the router encodes ``raw`` itself.
    body: bytes | None = None
    refused: bool = False  # never reached the model: too many calls in flight
    timed_out: bool = False  # no answer within the timeout


@dataclass(frozen=True)
class RequestInfo:
    """Per-request data every logged row of the request shares."""

    ids: list[str]
    ts: float
    stage_index: int
    segments: list[dict[str, str]]
    features: list[dict[str, Any]] | None


def describe_error(exc: BaseException) -> str:
    """``Type: first line of the message`` (one line for logs and error bodies)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def input_schema(model: Any) -> Any:
    """The MLflow input schema of a pyfunc ``model``, or ``None`` if it has none."""
    metadata = getattr(model, "metadata", None)
    getter = getattr(metadata, "get_input_schema", None)
    if getter is None:
        return None
    try:
        return getter()
    except Exception:  # a model without a readable signature has no schema
        return None


def call_model(config: RouterConfig, role: str, payload: ParsedPayload) -> Attempt:
    """Call one model; exceptions become an errored attempt, never propagate."""
    if role == "baseline":
        return predict_attempt(config.baseline_model, role, config.baseline_version,
                               payload, config.threshold)
    # The candidate gets its own copy: a model that edits its input in place must not
    # change what the baseline sees on fallback or concurrently in shadow.
    return predict_attempt(config.candidate_model, role, config.candidate_version or "",
                           payload, config.threshold, copy=True)


def predict_attempt(model: Any, role: str, version: str, payload: ParsedPayload,
                    threshold: float, *, copy: bool = False) -> Attempt:
    """``model.predict`` on ``payload`` (a copy of its frame if ``copy``) as an
    :class:`Attempt`; exceptions become an errored attempt, never propagate."""
    frame = payload.frame.copy() if copy else payload.frame
    n = len(payload.frame)
    start = time.perf_counter()
    try:
        if payload.params:
            raw = model.predict(frame, params=payload.params)
        else:
            raw = model.predict(frame)
    except Exception as exc:  # any model failure is an error outcome
        latency = max(time.perf_counter() - start, 1e-9)
        invalid = getattr(exc, "error_class", None) == _SCHEMA_FAILURE
        message = describe_error(exc)
        if invalid:
            # MLflow's message embeds the whole input; its cause is the last part.
            cause = str(getattr(exc, "message", exc)).rpartition("Error: ")[2]
            message = f"input does not match the model's signature: {cause.strip()}"
        return Attempt(role, version, None, message, latency,
                       ModelOutput([None] * n, [None] * n, False), invalid)
    latency = max(time.perf_counter() - start, 1e-9)
    return Attempt(role, version, raw, None, latency, interpret_output(raw, n, threshold))


def failed_attempt(role: str, version: str, n_rows: int, started: float, error: str, *,
                   refused: bool = False, timed_out: bool = False) -> Attempt:
    """A call that produced no answer (``started``: its ``time.perf_counter()`` start)."""
    return Attempt(role, version, None, error, max(time.perf_counter() - started, 1e-9),
                   ModelOutput([None] * n_rows, [None] * n_rows, False),
                   refused=refused, timed_out=timed_out)


def prediction_rows(attempt: Attempt, info: RequestInfo, shadow: bool) -> list[Prediction]:
    """One :class:`~mlflow_kpigate.core.records.Prediction` per row of the request."""
    out = attempt.output
    return [
        Prediction(
            request_id=rid, ts=info.ts, role=attempt.role, version=attempt.version,
            stage_index=info.stage_index, shadow=shadow, latency_s=attempt.latency_s,
            error=attempt.error is not None, score=out.scores[i],
            predicted=out.predicted[i], segments=info.segments[i],
            features=info.features[i] if info.features is not None else None,
        )
        for i, rid in enumerate(info.ids)
    ]
