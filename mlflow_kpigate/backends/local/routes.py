"""The embedded Model Router's HTTP app: :func:`create_app` and its routes.

Endpoints:

* ``POST /invocations``: MLflow's scoring protocol, answered by :class:`.serving.Router`
  (role choice, candidate fallback, prediction log); in shadow mode the candidate then
  scores a copy in the background (:mod:`.shadow`).
* ``POST /feedback``: labels by request id, one or a batch.
* ``GET /metrics`` (Prometheus, :mod:`.router_metrics`), ``GET /health`` (and ``/ping``),
  ``GET /status``, ``POST /admin/reload`` (re-read the weights now).

Parsing and the baseline's ``predict`` run on the router's own scoring executor
(``scoring_threads``, default one thread: a pyfunc model holding the GIL gains nothing from
more, and each extra thread adds switching), never on anyio's shared pool, so
``/health``, ``/metrics`` and ``/feedback`` do not wait behind scoring. The candidate is
awaited on the event loop through its scorer (its own process, with a timeout and a cap on
calls in flight), so a slow candidate holds none of the baseline's threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.scorers import Scorer
from mlflow_kpigate.backends.local.serving import Routed, Router, Served, error_response
from mlflow_kpigate.core.payloads import PayloadError
from mlflow_kpigate.core.records import Prediction, parse_feedback
from mlflow_kpigate.core.request_body import BodyTooLarge, read_limited
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.metrics import Collector, CollectorError

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(
    config: RouterConfig,
    collector: Collector,
    weights: Callable[[], tuple[Weights, int]],
    *,
    log: Callable[[Sequence[Prediction]], None] | None = None,
    candidate: Scorer | None = None,
) -> FastAPI:
    """The router app. ``weights()`` returns the current :class:`Weights` and stage index
    (called on every request: cache it, e.g. with
    :class:`~mlflow_kpigate.backends.local.routing.CachedWeights`, whose ``refresh`` is
    used by ``POST /admin/reload``). ``log`` appends predictions durably before each answer
    (default ``collector.log``); ``candidate`` reaches the candidate (default: the config's
    in-process model). The caller owns ``collector`` and closes it after the app shuts
    down; on shutdown the app waits for shadow copies and flushes it."""
    router = Router(config, collector, weights, log=log, candidate=candidate)
    scoring = ThreadPoolExecutor(max_workers=config.scoring_threads,
                                 thread_name_prefix="kpigate-scoring")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(router.weights)  # fail fast on an unreadable state
        if router.candidate is not None:
            await router.candidate.start()
        yield
        await router.shadow.drain()
        scoring.shutdown(wait=True)
        try:
            await run_in_threadpool(collector.flush)
        except CollectorError as exc:
            logger.error("could not flush the prediction log on shutdown: %s", exc)

    app = FastAPI(title=f"kpigate router: {config.deployment}", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = router

    async def read_body(request: Request) -> bytes | Response:
        """The body, or a 413 once it passes ``max_body_bytes`` (read no further)."""
        limit = config.max_body_bytes
        too_large = error_response(
            413, f"request body is larger than the router's limit of {limit:,} bytes "
            "(-C max_body)", {})
        try:
            return await read_limited(request, limit)
        except BodyTooLarge:
            return too_large

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        body = await read_body(request)
        if isinstance(body, Response):
            return body
        content_type = request.headers.get("content-type")
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(scoring, router.handle, body, content_type,
                                            request.headers)
        served: Served
        if isinstance(result, Routed):
            scorer = router.candidate
            assert scorer is not None  # the split only picks a candidate that has one
            attempt = await scorer.score(result.payload, body, content_type,
                                         config.candidate_timeout_s)
            if attempt.error is None:
                recorded = router.answer_candidate(result, attempt)
                served = recorded if recorded is not None else await loop.run_in_executor(
                    scoring, router.serve_baseline, result)
            else:
                served = await loop.run_in_executor(scoring, router.fall_back, result,
                                                    attempt)
        else:
            served = result
        if served.shadow is not None:
            payload, info, role = served.shadow
            router.shadow.start(payload, info, role, body, content_type)
        return served.response

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        body = await read_body(request)
        if isinstance(body, Response):
            return body
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return error_response(400, f"body is not valid JSON: {exc}", {})
        try:
            labels = parse_feedback(data)
            result = await run_in_threadpool(collector.add_labels, labels)
        except PayloadError as exc:
            return error_response(exc.status, str(exc), {})
        except CollectorError as exc:
            return error_response(503, str(exc), {})
        except ValueError as exc:  # the collector's checks, e.g. a missing business value
            return error_response(400, str(exc), {})
        router.metrics.record_labels(result)
        return JSONResponse({"matched": result.matched, "unknown": list(result.unknown),
                             "duplicates": result.duplicates})

    @app.get("/metrics")
    async def metrics() -> Response:
        await run_in_threadpool(router.weights)  # the gauges show the weights as of now
        return Response(generate_latest(router.metrics.exposition()),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    @app.get("/ping")
    async def health() -> Response:
        ok, problems = await run_in_threadpool(router.health)
        headers = {"X-Kpigate-Rollout": config.rollout} if config.rollout else None
        if ok:
            return JSONResponse({"status": "ok"}, headers=headers)
        return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503,
                            headers=headers)

    @app.get("/status")
    async def status() -> Response:
        return JSONResponse(await run_in_threadpool(router.status))

    @app.post("/admin/reload")
    async def reload() -> Response:
        weights_now, stage = await run_in_threadpool(router.reload)
        return JSONResponse({"weights": weights_now.to_dict(), "stage": stage})

    return app
