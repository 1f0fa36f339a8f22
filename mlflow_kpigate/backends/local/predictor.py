"""One predict request in the candidate's worker: body in, :class:`PredictResponse` out.

:class:`Predictor` does in the worker process what the router does in its own for the
baseline: parse the body with the model's input schema
(:func:`~mlflow_kpigate.core.payloads.parse_payload`), call the model
(:func:`.model_calls.predict_attempt`, so errors and signature rejections read the same),
format the answer as MLflow's scoring server would
(:func:`~mlflow_kpigate.core.payloads.format_predictions`) and interpret it for the KPIs.
It never raises. It also tracks when each running predict started, for the worker's
hang watchdog.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from mlflow_kpigate.backends.local.candidate_protocol import PredictRequest, PredictResponse
from mlflow_kpigate.backends.local.model_calls import (
    describe_error,
    input_schema,
    predict_attempt,
)
from mlflow_kpigate.core.payloads import PayloadError, format_predictions, parse_payload

__all__ = ["Predictor"]


class Predictor:
    """A loaded model and the way one request is scored with it (thread-safe)."""

    def __init__(self, model: Any, version: str, threshold: float) -> None:
        self.model, self.version, self.threshold = model, version, threshold
        self.schema = input_schema(model)
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # running predict → its monotonic start
        self._ids = itertools.count()

    @property
    def running(self) -> int:
        """How many predicts are running now."""
        with self._lock:
            return len(self._started)

    def oldest_age(self) -> float | None:
        """Seconds the longest-running predict has run, ``None`` when none runs."""
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return None if oldest is None else time.monotonic() - oldest

    def predict(self, request: PredictRequest) -> PredictResponse:
        """Score one request (blocking; the worker runs it in a pool thread)."""
        token = next(self._ids)
        with self._lock:
            self._started[token] = time.monotonic()
        try:
            return self._predict(request)
        except Exception as exc:  # a bug here must answer, not leave the router waiting
            return PredictResponse(False, None, [], [], False, 0.0, describe_error(exc))
        finally:
            with self._lock:
                del self._started[token]

    def _predict(self, request: PredictRequest) -> PredictResponse:
        try:
            payload = parse_payload(request.body, request.content_type, self.schema)
        except PayloadError as exc:
            return PredictResponse(False, None, [], [], False, 0.0, str(exc),
                                   parse_status=exc.status)
        attempt = predict_attempt(self.model, "candidate", self.version, payload,
                                  self.threshold)
        out = attempt.output
        if attempt.error is not None:
            return PredictResponse(False, None, out.scores, out.predicted, False,
                                   attempt.latency_s, attempt.error, attempt.invalid_input)
        try:
            body = format_predictions(attempt.raw).encode("utf-8")
        except Exception as exc:  # output MLflow's encoder cannot serialise
            n = len(payload.frame)
            return PredictResponse(
                False, None, [None] * n, [None] * n, False, attempt.latency_s,
                f"model output is not JSON-serialisable: {describe_error(exc)}")
        return PredictResponse(True, body, out.scores, out.predicted, out.understood,
                               attempt.latency_s)
