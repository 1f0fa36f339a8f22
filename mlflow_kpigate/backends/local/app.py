"""The embedded Model Router: an ASGI app serving a baseline and a candidate model.

Endpoints:

* ``POST /invocations``: MLflow's scoring protocol. The whole request goes to one role,
  chosen by the sticky split (:mod:`.routing`); per-row prediction ids are ``REQID`` for a
  one-row request and ``REQID/i`` for row ``i`` of a larger one. The response carries
  ``X-Kpigate-Request-Id``, ``X-Kpigate-Role`` and ``X-Kpigate-Version`` (of the model
  whose answer it is). A client may send its own ``X-Kpigate-Request-Id`` (e.g. its
  transaction id) and later post labels under it. Callers never see the candidate fail:
  if it raises on live traffic the baseline answers (``X-Kpigate-Fallback:
  candidate-error``) and both attempts are logged. In shadow mode the baseline answers
  and the candidate scores a copy in a background task, with a timeout and a cap on
  copies in flight (beyond it copies are skipped and counted, never queued behind a slow
  candidate).
* ``POST /feedback``: labels by request id, one or a batch.
* ``GET /metrics`` (Prometheus), ``GET /health`` (and ``/ping``), ``GET /status``,
  ``POST /admin/reload`` (re-read the weights now).

Every prediction is logged to the :class:`~mlflow_kpigate.metrics.Collector`; latency is
the model's ``predict`` time for the whole request, recorded on each of its rows. If the
collector fails, serving goes on (a metrics fault must not become an outage) but
``/health`` turns 503 and ``kpigate_collector_errors_total`` counts the lost batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool

from mlflow_kpigate.backends.local.routing import RoutingKey, choose_role, unit_interval
from mlflow_kpigate.core.payloads import (
    ModelOutput,
    ParsedPayload,
    PayloadError,
    format_predictions,
    interpret_output,
    parse_payload,
)
from mlflow_kpigate.core.records import LabelResult, Prediction, parse_feedback
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.metrics import Collector, CollectorError

__all__ = ["RouterConfig", "create_app"]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Kpigate-Request-Id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNKNOWN_SEGMENT = "unknown"
_SCHEMA_FAILURE = "SCHEMA_ENFORCEMENT_FAILED"  # MlflowException.error_class of pyfunc
# Model latencies are milliseconds to seconds; the default buckets are too coarse below 5 ms.
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class RouterConfig:
    """What the router serves and how.

    ``baseline_model``/``candidate_model`` are objects with ``.predict(DataFrame)`` (MLflow
    pyfunc models); ``candidate_model`` may be ``None`` once the candidate is detached.
    ``routing_key`` is ``"header:NAME"`` or ``"column:NAME"`` (default: the
    ``X-Kpigate-Routing-Key`` header). ``salt`` defaults to deployment and candidate
    version, so each rollout samples its own set of routing keys.
    """

    deployment: str
    baseline_version: str
    candidate_version: str | None
    baseline_model: Any = field(repr=False)
    candidate_model: Any | None = field(repr=False)
    routing_key: str | None = None
    segment_fields: tuple[str, ...] = ()
    threshold: float = 0.5
    shadow_timeout_s: float = 5.0
    store_features: bool = False
    shadow_max_inflight: int = 16
    salt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.deployment, str) or not self.deployment:
            raise ValueError("deployment must be a non-empty string")
        RoutingKey.parse(self.routing_key)  # fail at construction, not on the first request
        object.__setattr__(self, "segment_fields", tuple(self.segment_fields))
        if not (isinstance(self.threshold, (int, float)) and 0 < self.threshold <= 1):
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold!r}")
        if not (isinstance(self.shadow_timeout_s, (int, float)) and self.shadow_timeout_s > 0):
            raise ValueError(f"shadow_timeout_s must be > 0, got {self.shadow_timeout_s!r}")
        if not (isinstance(self.shadow_max_inflight, int) and self.shadow_max_inflight >= 1):
            raise ValueError(
                f"shadow_max_inflight must be an integer >= 1, got {self.shadow_max_inflight!r}"
            )


@dataclass(frozen=True)
class _Attempt:
    """One model call on one request."""

    role: str
    version: str
    raw: Any
    error: str | None
    latency_s: float
    output: ModelOutput
    invalid_input: bool = False  # MLflow rejected the input against the model's signature


@dataclass(frozen=True)
class _RequestInfo:
    """Per-request data every logged row of the request shares."""

    ids: list[str]
    ts: float
    stage_index: int
    segments: list[dict[str, str]]
    features: list[dict[str, Any]] | None


@dataclass(frozen=True)
class _Served:
    """What the threadpool part of ``/invocations`` hands back to the event loop."""

    response: Response
    shadow: tuple[ParsedPayload, _RequestInfo] | None = None


class _Metrics:
    """The router's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kpigate_requests", "Model calls by role and outcome (ok|error).",
            ["deployment", "role", "version", "outcome"], registry=r)
        self.duration = Histogram(
            "kpigate_request_duration_seconds", "Model predict time per request.",
            ["deployment", "role", "version"], buckets=_DURATION_BUCKETS, registry=r)
        self.outcomes = Counter(
            "kpigate_outcomes", "Labelled predictions by confusion cell (tp|fp|tn|fn).",
            ["deployment", "role", "version", "outcome"], registry=r)
        self.labels = Counter(
            "kpigate_labels", "Labels received by status (matched|unknown|duplicate).",
            ["deployment", "status"], registry=r)
        self.weight = Gauge(
            "kpigate_traffic_weight", "Share of live traffic served by each role (0-1).",
            ["deployment", "role"], registry=r)
        self.stage = Gauge(
            "kpigate_stage_index", "Rollout stage the router is serving.", ["deployment"],
            registry=r)
        self.shadow = Counter(
            "kpigate_shadow_requests", "Mirrored requests scored by the candidate, by "
            "outcome (ok|error|timeout|skipped).", ["deployment", "version", "outcome"],
            registry=r)
        self.invalid = Counter(
            "kpigate_invalid_requests", "Requests whose input the baseline model's signature "
            "rejected (not counted as model errors).", ["deployment"], registry=r)
        self.collector_errors = Counter(
            "kpigate_collector_errors", "Prediction batches the collector refused.",
            ["deployment"], registry=r)

    def observe(self, attempt: _Attempt) -> None:
        outcome = "error" if attempt.error else "ok"
        self.requests.labels(self.deployment, attempt.role, attempt.version, outcome).inc()
        self.duration.labels(self.deployment, attempt.role, attempt.version).observe(
            attempt.latency_s)

    def set_weights(self, weights: Weights, stage_index: int) -> None:
        live = weights.candidate_attached and not weights.shadow
        share = weights.candidate_percent / 100.0 if live else 0.0
        self.weight.labels(self.deployment, "candidate").set(share)
        self.weight.labels(self.deployment, "baseline").set(1.0 - share)
        self.stage.labels(self.deployment).set(stage_index)


def _input_schema(model: Any) -> Any:
    metadata = getattr(model, "metadata", None)
    getter = getattr(metadata, "get_input_schema", None)
    if getter is None:
        return None
    try:
        return getter()
    except Exception:  # a model without a readable signature has no schema
        return None


def _describe(exc: BaseException) -> str:
    """``Type: first line of the message`` (one line for logs and error bodies)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _error_response(status: int, message: str, headers: Mapping[str, str]) -> Response:
    # MLflow's scoring server error shape, so existing clients parse it.
    code = "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
    return JSONResponse({"error_code": code, "message": message}, status_code=status,
                        headers=dict(headers))


class _Router:
    """The state behind one app: models, split, metrics, shadow tasks, collector."""

    def __init__(self, config: RouterConfig, collector: Collector,
                 weights: Callable[[], tuple[Weights, int]]) -> None:
        self.config = config
        self.collector = collector
        self.weights_source = weights
        self.key = RoutingKey.parse(config.routing_key)
        self.salt = config.salt if config.salt is not None else (
            f"{config.deployment}:{config.candidate_version}")
        self.metrics = _Metrics(config.deployment)
        self.schema = _input_schema(config.baseline_model)
        self.collector_error: str | None = None
        self.executor = ThreadPoolExecutor(max_workers=config.shadow_max_inflight,
                                           thread_name_prefix="kpigate-shadow")
        self.shadow_inflight = 0
        self.shadow_tasks: set[asyncio.Task[None]] = set()

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

    def predict(self, role: str, payload: ParsedPayload) -> _Attempt:
        """Call one model; exceptions become an errored attempt, never propagate."""
        cfg = self.config
        if role == "baseline":
            model, version, frame = cfg.baseline_model, cfg.baseline_version, payload.frame
        else:
            # The candidate gets its own copy: a model that edits its input in place must
            # not change what the baseline sees on fallback or concurrently in shadow.
            model, version = cfg.candidate_model, cfg.candidate_version or ""
            frame = payload.frame.copy()
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
            message = _describe(exc)
            if invalid:
                # MLflow's message embeds the whole input; its cause is the last part.
                cause = str(getattr(exc, "message", exc)).rpartition("Error: ")[2]
                message = f"input does not match the model's signature: {cause.strip()}"
            return _Attempt(role, version, None, message, latency,
                            ModelOutput([None] * n, [None] * n, False), invalid)
        latency = max(time.perf_counter() - start, 1e-9)
        return _Attempt(role, version, raw, None, latency,
                        interpret_output(raw, n, cfg.threshold))

    def rows(self, attempt: _Attempt, info: _RequestInfo, shadow: bool) -> list[Prediction]:
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

    def log(self, rows: Sequence[Prediction]) -> None:
        try:
            self.collector.log(rows)
        except CollectorError as exc:
            # Serving goes on; /health reports the fault and the counter shows the loss.
            self.collector_error = str(exc)
            self.metrics.collector_errors.labels(self.config.deployment).inc()
            logger.error("prediction log failed: %s", exc)

    def serve(self, body: bytes, content_type: str | None,
              headers: Mapping[str, str]) -> _Served:
        ts = time.time()
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not _REQUEST_ID.match(request_id):
            return _Served(_error_response(
                400, f"{REQUEST_ID_HEADER} must be 1-128 letters, digits or '.', '_', ':', '-'",
                {}))
        out_headers = {REQUEST_ID_HEADER: request_id}
        try:
            payload = parse_payload(body, content_type, self.schema)
        except PayloadError as exc:
            return _Served(_error_response(exc.status, str(exc), out_headers))
        frame = payload.frame
        weights, stage = self.weights()
        available = self.candidate_available(weights)
        role = "baseline"
        if available:
            key = self._routing_value(headers, frame) or request_id
            role = choose_role(unit_interval(key, self.salt), weights)
        n = len(frame)
        info = _RequestInfo(
            ids=[request_id] if n == 1 else [f"{request_id}/{i}" for i in range(n)],
            ts=ts, stage_index=stage, segments=self._segments(frame),
            features=frame.to_dict(orient="records") if self.config.store_features else None,
        )
        attempts: list[_Attempt] = []
        if role == "candidate":
            attempts.append(self.predict("candidate", payload))
            if attempts[0].error is not None:
                out_headers["X-Kpigate-Fallback"] = "candidate-error"
                logger.warning("candidate failed on request %s, baseline answers: %s",
                               request_id, attempts[0].error)
        if not attempts or attempts[0].error is not None:
            attempts.append(self.predict("baseline", payload))
        served = attempts[-1]
        out_headers["X-Kpigate-Role"] = served.role
        out_headers["X-Kpigate-Version"] = served.version
        if served.role == "baseline" and served.invalid_input:
            # The serving model's signature rejects the input: the client's mistake, so it
            # is counted apart and logged for neither model (it would otherwise raise both
            # error rates, the baseline's twice when the request fell back).
            self.metrics.invalid.labels(self.config.deployment).inc()
            return _Served(_error_response(400, served.error or "invalid input", out_headers))
        rows: list[Prediction] = []
        for attempt in attempts:
            self.metrics.observe(attempt)
            rows += self.rows(attempt, info, shadow=False)
        self.log(rows)
        if served.error is not None:
            # As MLflow's scoring server: a model that cannot score the input is a 400.
            return _Served(_error_response(400, f"model failed to predict: {served.error}",
                                           out_headers))
        try:
            body_out = format_predictions(served.raw)
        except Exception as exc:  # output MLflow's encoder cannot serialise
            return _Served(_error_response(
                500, f"model output is not JSON-serialisable: {type(exc).__name__}: {exc}",
                out_headers))
        response = Response(body_out, status_code=200, media_type="application/json",
                            headers=out_headers)
        shadow = (payload, info) if available and weights.shadow else None
        return _Served(response, shadow)

    # -- shadow ---------------------------------------------------------------------------

    def start_shadow(self, payload: ParsedPayload, info: _RequestInfo) -> None:
        version = self.config.candidate_version or ""
        if self.shadow_inflight >= self.config.shadow_max_inflight:
            # A slow candidate must not build a backlog (memory, threads); the copy is a
            # sample, so skipping it only costs evidence, never a caller's latency.
            self.metrics.shadow.labels(self.config.deployment, version, "skipped").inc()
            return
        self.shadow_inflight += 1
        task = asyncio.get_running_loop().create_task(self._shadow(payload, info))
        self.shadow_tasks.add(task)
        task.add_done_callback(self.shadow_tasks.discard)

    def _release(self, _: object) -> None:
        self.shadow_inflight -= 1

    async def _shadow(self, payload: ParsedPayload, info: _RequestInfo) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        future = loop.run_in_executor(self.executor, self.predict, "candidate", payload)
        # The slot frees when the thread does, not at the timeout: a hung candidate keeps
        # its thread busy, and the cap must count it.
        future.add_done_callback(self._release)
        timeout = self.config.shadow_timeout_s
        try:
            attempt = await asyncio.wait_for(asyncio.shield(future), timeout)
            outcome = "error" if attempt.error else "ok"
        except asyncio.TimeoutError:
            n = len(info.ids)
            attempt = _Attempt("candidate", self.config.candidate_version or "", None,
                               f"timeout after {timeout:g} s",
                               max(time.perf_counter() - start, 1e-9),
                               ModelOutput([None] * n, [None] * n, False))
            outcome = "timeout"
        self.metrics.observe(attempt)
        self.metrics.shadow.labels(self.config.deployment, attempt.version, outcome).inc()
        self.log(self.rows(attempt, info, shadow=True))

    async def drain(self) -> None:
        """Let in-flight shadow copies finish (each is bounded by the timeout)."""
        tasks = set(self.shadow_tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.shadow_timeout_s + 1.0)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- the rest -----------------------------------------------------------------------

    def record_labels(self, result: LabelResult) -> None:
        dep = self.config.deployment
        self.metrics.labels.labels(dep, "matched").inc(result.matched)
        self.metrics.labels.labels(dep, "unknown").inc(len(result.unknown))
        self.metrics.labels.labels(dep, "duplicate").inc(result.duplicates)
        for o in result.outcomes:
            self.metrics.outcomes.labels(dep, o.role, o.version, o.outcome).inc()

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
            "weights": asdict(weights),
            "stage": stage,
            "routing_key": str(self.key),
            "collector": stats,
            "collector_error": self.collector_error,
            "shadow_inflight": self.shadow_inflight,
        }


def create_app(
    config: RouterConfig,
    collector: Collector,
    weights: Callable[[], tuple[Weights, int]],
) -> FastAPI:
    """The router app. ``weights()`` returns the current :class:`Weights` and stage index
    (called on every request: cache it, e.g. with
    :class:`~mlflow_kpigate.backends.local.routing.CachedWeights`, whose ``refresh`` is
    used by ``POST /admin/reload``). The caller owns ``collector`` and closes it after the
    app shuts down; on shutdown the app waits for shadow copies and flushes it."""
    router = _Router(config, collector, weights)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        await run_in_threadpool(router.weights)  # fail fast on an unreadable state
        yield
        await router.drain()
        try:
            await run_in_threadpool(collector.flush)
        except CollectorError as exc:
            logger.error("could not flush the prediction log on shutdown: %s", exc)

    app = FastAPI(title=f"kpigate router: {config.deployment}", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = router

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        body = await request.body()
        served = await run_in_threadpool(
            router.serve, body, request.headers.get("content-type"), request.headers)
        if served.shadow is not None:
            router.start_shadow(*served.shadow)
        return served.response

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error_response(400, f"body is not valid JSON: {exc}", {})
        try:
            labels = parse_feedback(data)
            result = await run_in_threadpool(collector.add_labels, labels)
        except PayloadError as exc:
            return _error_response(exc.status, str(exc), {})
        except CollectorError as exc:
            return _error_response(503, str(exc), {})
        except ValueError as exc:  # the collector's checks, e.g. a missing business value
            return _error_response(400, str(exc), {})
        router.record_labels(result)
        return JSONResponse({"matched": result.matched, "unknown": list(result.unknown),
                             "duplicates": result.duplicates})

    @app.get("/metrics")
    async def metrics() -> Response:
        await run_in_threadpool(router.weights)  # the gauges show the weights as of now
        return Response(generate_latest(router.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    @app.get("/ping")
    async def health() -> Response:
        ok, problems = await run_in_threadpool(router.health)
        if ok:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)

    @app.get("/status")
    async def status() -> Response:
        return JSONResponse(await run_in_threadpool(router.status))

    @app.post("/admin/reload")
    async def reload() -> Response:
        weights_now, stage = await run_in_threadpool(router.reload)
        return JSONResponse({"weights": asdict(weights_now), "stage": stage})

    return app
