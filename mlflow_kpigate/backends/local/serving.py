"""Scoring ``POST /invocations``: the role choice, candidate fallback and prediction log.

:meth:`Router.serve` answers one request in MLflow's scoring protocol. The whole request
goes to one role, chosen by the sticky split (:mod:`.routing`); per-row prediction ids are
``REQID`` for a one-row request and ``REQID/i`` for row ``i`` of a larger one. The response
carries ``X-Kpigate-Request-Id``, ``X-Kpigate-Role`` and ``X-Kpigate-Version`` (of the model
whose answer it is). A client may send its own ``X-Kpigate-Request-Id`` (e.g. its
transaction id) and later post labels under it. Callers never see the candidate fail: if
it raises on live traffic the baseline answers (``X-Kpigate-Fallback: candidate-error``)
and both attempts are logged. In shadow mode the baseline answers and the request is
handed back for a shadow copy (:mod:`.shadow`); while the rollout bakes (the weights'
``baseline_shadow``) it is the reverse: the candidate answers every request and the
baseline scores the copy (none when the baseline already answered, after a fallback).

Every prediction is logged to the :class:`~mlflow_kpigate.metrics.Collector`. If the
collector fails, serving goes on (a metrics fault must not become an outage) but
:meth:`Router.health` reports it and ``kpigate_collector_errors_total`` counts the lost
batches. Errors are answered in the shape of MLflow's scoring server
(:func:`error_response`).
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from fastapi.responses import JSONResponse, Response

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.model_calls import (
    Attempt,
    RequestInfo,
    call_model,
    prediction_rows,
)
from mlflow_kpigate.backends.local.router_metrics import RouterMetrics
from mlflow_kpigate.backends.local.routing import RoutingKey, choose_role, unit_interval
from mlflow_kpigate.backends.local.shadow import ShadowCopies
from mlflow_kpigate.core.payloads import (
    ParsedPayload,
    PayloadError,
    format_predictions,
    parse_payload,
)
from mlflow_kpigate.core.records import Prediction
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.metrics import Collector, CollectorError

__all__ = ["REQUEST_ID_HEADER", "UNKNOWN_SEGMENT", "Router", "Served", "error_response"]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Kpigate-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNKNOWN_SEGMENT = "unknown"


def error_response(status: int, message: str, headers: Mapping[str, str]) -> Response:
    """An error answer with ``status`` (4xx: the caller's fault, else the router's)."""
    # MLflow's scoring server error shape, so existing clients parse it.
    code = "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
    return JSONResponse({"error_code": code, "message": message}, status_code=status,
                        headers=dict(headers))


def _input_schema(model: Any) -> Any:
    metadata = getattr(model, "metadata", None)
    getter = getattr(metadata, "get_input_schema", None)
    if getter is None:
        return None
    try:
        return getter()
    except Exception:  # a model without a readable signature has no schema
        return None


@dataclass(frozen=True)
class Served:
    """What the threadpool part of ``/invocations`` hands back to the event loop."""

    response: Response
    # (payload, rows' info, the role that scores the copy: candidate in shadow, baseline
    # while baking)
    shadow: tuple[ParsedPayload, RequestInfo, str] | None = None


class Router:
    """The state behind one app: models, split, metrics, shadow copies, collector."""

    def __init__(self, config: RouterConfig, collector: Collector,
                 weights: Callable[[], tuple[Weights, int]]) -> None:
        self.config = config
        self.collector = collector
        self.weights_source = weights
        self.key = RoutingKey.parse(config.routing_key)
        self.salt = config.salt if config.salt is not None else (
            f"{config.deployment}:{config.candidate_version}")
        self.metrics = RouterMetrics(config.deployment)
        self.schema = _input_schema(config.baseline_model)
        self.collector_error: str | None = None
        self.shadow = ShadowCopies(config, self.metrics, self.log)

    # -- weights ------------------------------------------------------------------------

    def weights(self) -> tuple[Weights, int]:
        weights, stage = self.weights_source()
        self.metrics.set_weights(weights, stage)
        return weights, stage

    def reload(self) -> tuple[Weights, int]:
        refresh = getattr(self.weights_source, "refresh", None)
        weights, stage = refresh() if callable(refresh) else self.weights_source()
        self.metrics.set_weights(weights, stage)
        return weights, stage

    def candidate_available(self, weights: Weights) -> bool:
        return weights.candidate_attached and self.config.candidate_model is not None

    # -- serving ------------------------------------------------------------------------

    def _routing_value(self, headers: Mapping[str, str], frame: pd.DataFrame) -> str | None:
        if self.key.source == "header":
            value = headers.get(self.key.name)
            return value or None
        if self.key.name not in frame.columns:
            return None
        # The whole request goes to one role, so a multi-row request follows its first row.
        value = frame[self.key.name].iloc[0]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return str(value)

    def _segments(self, frame: pd.DataFrame) -> list[dict[str, str]]:
        n = len(frame)
        columns: dict[str, list[str]] = {}
        for name in self.config.segment_fields:
            if name not in frame.columns:
                columns[name] = [UNKNOWN_SEGMENT] * n
                continue
            columns[name] = [
                UNKNOWN_SEGMENT if v is None or (isinstance(v, float) and math.isnan(v))
                or v == "" else str(v)
                for v in frame[name].tolist()
            ]
        return [{name: col[i] for name, col in columns.items()} for i in range(n)]

    def log(self, rows: Sequence[Prediction]) -> None:
        try:
            self.collector.log(rows)
        except CollectorError as exc:
            # Serving goes on; /health reports the fault and the counter shows the loss.
            self.collector_error = str(exc)
            self.metrics.collector_errors.labels(self.config.deployment).inc()
            logger.error("prediction log failed: %s", exc)

    def serve(self, body: bytes, content_type: str | None,
              headers: Mapping[str, str]) -> Served:
        """Answer one request (blocking: the app runs it in a worker thread)."""
        ts = time.time()
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not _REQUEST_ID.match(request_id):
            return Served(error_response(
                400, f"{REQUEST_ID_HEADER} must be 1-128 letters, digits or '.', '_', ':', '-'",
                {}))
        out_headers = {REQUEST_ID_HEADER: request_id}
        try:
            payload = parse_payload(body, content_type, self.schema)
        except PayloadError as exc:
            return Served(error_response(exc.status, str(exc), out_headers))
        frame = payload.frame
        weights, stage = self.weights()
        available = self.candidate_available(weights)
        role = "baseline"
        if available:
            key = self._routing_value(headers, frame) or request_id
            role = choose_role(unit_interval(key, self.salt), weights)
        n = len(frame)
        info = RequestInfo(
            ids=[request_id] if n == 1 else [f"{request_id}/{i}" for i in range(n)],
            ts=ts, stage_index=stage, segments=self._segments(frame),
            features=frame.to_dict(orient="records") if self.config.store_features else None,
        )
        attempts: list[Attempt] = []
        if role == "candidate":
            attempts.append(call_model(self.config, "candidate", payload))
            if attempts[0].error is not None:
                out_headers["X-Kpigate-Fallback"] = "candidate-error"
                logger.warning("candidate failed on request %s, baseline answers: %s",
                               request_id, attempts[0].error)
        if not attempts or attempts[0].error is not None:
            attempts.append(call_model(self.config, "baseline", payload))
        served = attempts[-1]
        out_headers["X-Kpigate-Role"] = served.role
        out_headers["X-Kpigate-Version"] = served.version
        if served.role == "baseline" and served.invalid_input:
            # The serving model's signature rejects the input: the client's mistake, so it
            # is counted apart and logged for neither model (it would otherwise raise both
            # error rates, the baseline's twice when the request fell back).
            self.metrics.invalid.labels(self.config.deployment).inc()
            return Served(error_response(400, served.error or "invalid input", out_headers))
        rows: list[Prediction] = []
        for attempt in attempts:
            self.metrics.observe(attempt)
            rows += prediction_rows(attempt, info, shadow=False)
        self.log(rows)
        if served.error is not None:
            # As MLflow's scoring server: a model that cannot score the input is a 400.
            return Served(error_response(400, f"model failed to predict: {served.error}",
                                         out_headers))
        try:
            body_out = format_predictions(served.raw)
        except Exception as exc:  # output MLflow's encoder cannot serialise
            return Served(error_response(
                500, f"model output is not JSON-serialisable: {type(exc).__name__}: {exc}",
                out_headers))
        response = Response(body_out, status_code=200, media_type="application/json",
                            headers=out_headers)
        shadow = None
        if available and weights.shadow:
            shadow = (payload, info, "candidate")
        elif available and weights.baseline_shadow and served.role == "candidate":
            shadow = (payload, info, "baseline")
        return Served(response, shadow)

    # -- health and status --------------------------------------------------------------

    def health(self) -> tuple[bool, list[str]]:
        problems = []
        if self.config.baseline_model is None:
            problems.append("baseline model is not loaded")
        weights, _ = self.weights()
        if weights.candidate_attached and self.config.candidate_model is None:
            problems.append("candidate model is not loaded")
        if self.collector_error:
            problems.append(f"collector: {self.collector_error}")
        return not problems, problems

    def status(self) -> dict[str, Any]:
        weights, stage = self.weights()
        cfg = self.config
        try:
            stats: dict[str, Any] = self.collector.stats()
        except Exception as exc:  # status must answer even when the DB fails
            stats = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "deployment": cfg.deployment,
            "versions": {"baseline": cfg.baseline_version, "candidate": cfg.candidate_version},
            "weights": weights.to_dict(),
            "stage": stage,
            "routing_key": str(self.key),
            "collector": stats,
            "collector_error": self.collector_error,
            "shadow_inflight": self.shadow.inflight,
        }
