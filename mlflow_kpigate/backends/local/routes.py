"""The embedded Model Router's HTTP app: :func:`create_app` and its routes.

Endpoints:

* ``POST /invocations``: MLflow's scoring protocol, answered by :meth:`.serving.Router.serve`
  (role choice, candidate fallback, prediction log); in shadow mode the candidate then
  scores a copy in the background (:mod:`.shadow`).
* ``POST /feedback``: labels by request id, one or a batch.
* ``GET /metrics`` (Prometheus, :mod:`.router_metrics`), ``GET /health`` (and ``/ping``),
  ``GET /status``, ``POST /admin/reload`` (re-read the weights now).

Blocking work (models, the collector, the weights source) runs in the threadpool, so the
event loop only moves bytes and starts shadow copies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.serving import Router, error_response
from mlflow_kpigate.core.payloads import PayloadError
from mlflow_kpigate.core.records import parse_feedback
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.metrics import Collector, CollectorError

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


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
    router = Router(config, collector, weights)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(router.weights)  # fail fast on an unreadable state
        yield
        await router.shadow.drain()
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
            router.shadow.start(*served.shadow)
        return served.response

    @app.post("/feedback")
    async def feedback(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
        return JSONResponse({"weights": weights_now.to_dict(), "stage": stage})

    return app
