"""Scoring ``POST /invocations``: the role choice, candidate fallback and prediction log.

:meth:`Router.handle` reads one request in MLflow's scoring protocol and picks its role
by the sticky split (:mod:`.routing`): the whole request goes to one role. The baseline
is answered there and then (on the router's scoring thread); for the candidate it hands
back a :class:`Routed` request, which the app awaits on the candidate's
:class:`~.scorers.Scorer` (its own process, with a timeout) and finishes with
:meth:`Router.answer_candidate`, or, if the candidate failed, :meth:`Router.fall_back`: callers
never see the candidate fail; the baseline answers (``X-Kpigate-Fallback:
candidate-error``) and both attempts are logged, so the failure is candidate evidence.
Per-row prediction ids are ``REQID`` for a one-row request and ``REQID/i`` for row ``i``
of a larger one. The response carries ``X-Kpigate-Request-Id``, ``X-Kpigate-Role`` and
``X-Kpigate-Version`` (of the model whose answer it is). A client may send its own
``X-Kpigate-Request-Id`` (e.g. its transaction id) and later post labels under it. In
shadow mode the baseline answers and the request is handed back for a shadow copy
(:mod:`.shadow`); while the rollout bakes (the weights' ``baseline_shadow``) it is the
reverse: the candidate answers every request and the baseline scores the copy (none when
the baseline already answered, after a fallback).

Every prediction is logged before its answer is built (:meth:`Router.log`: in a router
worker, an append to its segment of the prediction log). If logging fails, serving goes
on with the baseline (a metrics fault must not become an outage), but a candidate answer
never goes out unrecorded (the baseline answers that request instead), the candidate gets
no traffic until a write succeeds, :meth:`Router.health` reports the fault, and
``kpigate_unrecorded_predictions_total`` / ``kpigate_prediction_log_failing`` show it (the
controller holds on them: :mod:`.evidence`). The next append that succeeds ends it.
Errors are answered in the shape of MLflow's scoring server (:func:`error_response`).
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
    input_schema,
    prediction_rows,
)
from mlflow_kpigate.backends.local.router_metrics import RouterMetrics
from mlflow_kpigate.backends.local.routing import RoutingKey, choose_role, unit_interval
from mlflow_kpigate.backends.local.scorers import Scorer, ThreadScorer
from mlflow_kpigate.backends.local.shadow import WARM, ShadowCopies
from mlflow_kpigate.core.payloads import (
    ParsedPayload,
    PayloadError,
    format_predictions,
    parse_payload,
)
from mlflow_kpigate.core.records import Prediction
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.metrics import Collector, CollectorError

__all__ = ["REQUEST_ID_HEADER", "UNKNOWN_SEGMENT", "Routed", "Router", "Served",
           "error_response"]

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


@dataclass(frozen=True)
class Served:
    """The answer to one ``/invocations`` call, and the shadow copy it asks for."""

    response: Response
    # (payload, rows' info, the role that scores the copy: candidate in shadow, baseline
    # while baking)
    shadow: tuple[ParsedPayload, RequestInfo, str] | None = None


@dataclass(frozen=True)
class Routed:
    """A parsed request the split sent to the candidate: the event loop awaits its scorer."""

    payload: ParsedPayload
    info: RequestInfo
    weights: Weights
    headers: dict[str, str]


class Router:
    """The state behind one app: models, split, metrics, shadow copies, prediction log.

    ``log`` appends predictions durably before a response is sent (a segment writer;
    default: ``collector.log``, which only queues them). ``candidate`` is the candidate's
    :class:`~.scorers.Scorer` (its own process in production; default: the config's
    in-process ``candidate_model`` on a thread pool of its own).
    """

    def __init__(self, config: RouterConfig, collector: Collector,
                 weights: Callable[[], tuple[Weights, int]], *,
                 log: Callable[[Sequence[Prediction]], None] | None = None,
                 candidate: Scorer | None = None) -> None:
        self.config = config
        self.collector = collector
        self.weights_source = weights
        self._append = log if log is not None else collector.log
        self.key = RoutingKey.parse(config.routing_key)
        self.salt = config.salt if config.salt is not None else (
            f"{config.deployment}:{config.candidate_version}")
        self.metrics = RouterMetrics(config.deployment)
        self.schema = input_schema(config.baseline_model)
        self.collector_error: str | None = None
        self.log_failing = False
        if candidate is None and config.candidate_model is not None:
            candidate = ThreadScorer(config, "candidate",
                                     max_inflight=config.shadow_max_inflight)
        self.candidate = candidate
        scorers: dict[str, Scorer] = {
            "baseline": ThreadScorer(config, "baseline",
                                     max_inflight=config.shadow_max_inflight)}
        if candidate is not None:
            scorers["candidate"] = candidate
        self.shadow = ShadowCopies(config, self.metrics, self.log, scorers)

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
        # No evidence can be recorded while the log fails: the candidate gets no traffic.
        return (weights.candidate_attached and self.candidate is not None
                and self.candidate.ready and not self.log_failing)

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

    def log(self, rows: Sequence[Prediction]) -> bool:
        """Append ``rows`` to the prediction log; ``False`` (reported, never raised) if it
        could not."""
        try:
            self._append(rows)
        except CollectorError as exc:
            # Serving goes on (the baseline's answers are the production service), but
            # /health reports the fault, the counters show the loss, and the candidate
            # gets no traffic until a write succeeds again.
            self.collector_error = str(exc)
            self.log_failing = True
            self.metrics.collector_errors.labels(self.config.deployment).inc()
            self.metrics.log_unrecorded(len(rows))
            logger.error("prediction log failed: %s", exc)
            return False
        if self.log_failing:
            logger.info("the prediction log records again")
            self.collector_error = None
            self.log_failing = False
            self.metrics.log_recovered()
        return True

    def handle(self, body: bytes, content_type: str | None,
               headers: Mapping[str, str]) -> Served | Routed:
        """Parse and route one request; answer it at once unless the candidate is chosen
        (blocking: runs on the router's scoring thread)."""
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
        role = "baseline"
        if self.candidate_available(weights):
            key = self._routing_value(headers, frame) or request_id
            role = choose_role(unit_interval(key, self.salt), weights)
        n = len(frame)
        info = RequestInfo(
            ids=[request_id] if n == 1 else [f"{request_id}/{i}" for i in range(n)],
            ts=ts, stage_index=stage, segments=self._segments(frame),
            features=frame.to_dict(orient="records") if self.config.store_features else None,
        )
        routed = Routed(payload, info, weights, out_headers)
        if role == "candidate":
            return routed
        return self.answer(routed, [call_model(self.config, "baseline", payload)])

    def fall_back(self, routed: Routed, failed: Attempt) -> Served:
        """The baseline answers a request the candidate failed (blocking)."""
        routed.headers["X-Kpigate-Fallback"] = "candidate-error"
        logger.warning("candidate failed on request %s, baseline answers: %s",
                       routed.info.ids[0], failed.error)
        return self.answer(routed, [failed, call_model(self.config, "baseline",
                                                       routed.payload)])

    def answer(self, routed: Routed, attempts: list[Attempt]) -> Served:
        """Log every attempt, then build the response from the last one."""
        served = attempts[-1]
        if served.role == "baseline" and served.invalid_input:
            # The serving model's signature rejects the input: the client's mistake, so it
            # is counted apart and logged for neither model (it would otherwise raise both
            # error rates, the baseline's twice when the request fell back).
            self.metrics.invalid.labels(self.config.deployment).inc()
            return Served(error_response(400, served.error or "invalid input",
                                         self._headers(routed, served)))
        self._record(routed, attempts)
        return self._respond(routed, served)

    def answer_candidate(self, routed: Routed, attempt: Attempt) -> Served | None:
        """The candidate's answer, if it could be recorded; ``None`` if the log failed:
        a candidate answer never goes out unrecorded (the baseline answers instead)."""
        if not self._record(routed, [attempt]):
            return None
        return self._respond(routed, attempt)

    def serve_baseline(self, routed: Routed) -> Served:
        """The baseline answers a request (blocking): after the candidate's answer could
        not be recorded."""
        return self.answer(routed, [call_model(self.config, "baseline", routed.payload)])

    def _record(self, routed: Routed, attempts: list[Attempt]) -> bool:
        rows: list[Prediction] = []
        for attempt in attempts:
            self.metrics.observe(attempt)
            rows += prediction_rows(attempt, routed.info, shadow=False)
        # Logged before the answer exists: a crash after this point loses no evidence.
        return self.log(rows)

    @staticmethod
    def _headers(routed: Routed, served: Attempt) -> dict[str, str]:
        headers = dict(routed.headers)
        headers["X-Kpigate-Role"] = served.role
        headers["X-Kpigate-Version"] = served.version
        return headers

    def _respond(self, routed: Routed, served: Attempt) -> Served:
        out_headers = self._headers(routed, served)
        if served.error is not None:
            # As MLflow's scoring server: a model that cannot score the input is a 400.
            return Served(error_response(400, f"model failed to predict: {served.error}",
                                         out_headers))
        body_out: bytes | str
        if served.body is not None:
            body_out = served.body
        else:
            try:
                body_out = format_predictions(served.raw)
            except Exception as exc:  # output MLflow's encoder cannot serialise
                return Served(error_response(
                    500, f"model output is not JSON-serialisable: {type(exc).__name__}: "
                    f"{exc}", out_headers))
        response = Response(body_out, status_code=200, media_type="application/json",
                            headers=out_headers)
        weights = routed.weights
        shadow = None
        if self.candidate_available(weights) and weights.shadow:
            shadow = (routed.payload, routed.info, "candidate")
        elif (self.candidate_available(weights) and weights.baseline_shadow
              and served.role == "candidate"):
            shadow = (routed.payload, routed.info, "baseline")
        elif (self.config.warm_candidate and served.role == "baseline"
              and 0 < weights.candidate_percent < 100 and not weights.baseline_shadow
              and "X-Kpigate-Fallback" not in routed.headers
              and self.candidate_available(weights)):
            shadow = (routed.payload, routed.info, WARM)
        return Served(response, shadow)

    # -- health and status --------------------------------------------------------------

    def health(self) -> tuple[bool, list[str]]:
        problems = []
        if self.config.baseline_model is None:
            problems.append("baseline model is not loaded")
        weights, _ = self.weights()
        if weights.candidate_attached and self.candidate is None:
            problems.append("candidate model is not loaded")
        elif weights.candidate_attached and self.candidate is not None and \
                not self.candidate.ready:
            problems.append("candidate process is starting (it gets traffic once it "
                            "answers)")
        if self.collector_error:
            problems.append(f"collector: {self.collector_error}")
        state_error = getattr(self.weights_source, "error", None)
        if state_error:
            # Still serving the last approved weights, but nothing can change them.
            problems.append(f"rollout state: {state_error}")
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
            "candidate": None if self.candidate is None else {
                "ready": self.candidate.ready, "inflight": self.candidate.inflight},
            "log_failing": self.log_failing,
            "unrecorded_predictions": self.metrics.unrecorded_total,
        }
