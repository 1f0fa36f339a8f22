"""The collector service's HTTP app, fed by Seldon's request logger.

In cluster mode nothing of kpigate sits on the request path: Seldon Core routes traffic
between the ``baseline`` and ``candidate`` predictors and its executor logs every request
and response as a CloudEvent to this service, which joins them into predictions in the
same :class:`~mlflow_kpigate.metrics.Collector` (SQLite, WAL) the embedded router uses,
takes labels on ``/feedback`` and exports per-stage KPI aggregates for Prometheus, where
the controller's metrics source reads them. Endpoints:

* ``POST /cloudevents`` (and ``POST /``): one logger event, binary or structured mode
  (:mod:`.cloudevent_envelope`). 200 with ``{"outcome": "accepted" | "duplicate", ...}``;
  400 with ``{"error": reason}`` for an event that cannot be used (nothing is recorded);
  503 if the store cannot write.
* ``POST /feedback``: labels by request id, as the embedded router's ``/feedback``.
  Business values missing from a label are taken from the request's columns of that
  name, when it had them.
* ``POST /admin/stage``: the controller's stage notice ``{"deployment", "stage_index",
  "shadow", "candidate_percent", "revision"}`` (:mod:`.service_notices`); persisted; a
  lower revision than the last one is ignored (``{"ignored": true}``).
* ``GET /metrics``: the ``kpigate_stage_*`` series of :mod:`.exposition`, computed from
  :meth:`Collector.stage_samples` at scrape time (cached for ``metrics_cache_s``), plus
  the service's own counters (:mod:`.service_exposition`).
* ``GET /health`` (503 when the store cannot write), ``GET /status`` (JSON).

Every ``POST`` body is read up to ``max_body_bytes`` (413 beyond). The handlers are
:class:`~mlflow_kpigate.metrics.service.CollectorService` methods, run in the threadpool;
the app's lifespan runs the expiry sweep every ``sweep_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from mlflow_kpigate.core.request_body import BodyTooLarge, read_limited
from mlflow_kpigate.metrics.collector_db import CollectorError
from mlflow_kpigate.metrics.service import CollectorService
from mlflow_kpigate.metrics.service_config import CollectorServiceConfig

__all__ = ["create_collector_app"]

# One logger for the whole collector service, whichever of its modules logs.
logger = logging.getLogger("mlflow_kpigate.metrics.service")


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": f"body is larger than {limit} bytes; log smaller requests "
                                  "or raise max_body_bytes"}, status_code=413)


async def _sweeper(service: CollectorService, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await run_in_threadpool(service.sweep)
        except Exception:  # keep sweeping; the next round retries
            logger.warning("expiring pending CloudEvent halves failed", exc_info=True)
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), service.config.sweep_interval_s)


def create_collector_app(config: CollectorServiceConfig) -> FastAPI:
    """The collector service app (endpoints in the module docstring).

    Opens the store at once (so a bad data directory fails here); the app's lifespan runs
    the expiry sweep and closes the store on shutdown. ``app.state.service`` is the
    :class:`CollectorService`.
    """
    service = CollectorService(config)
    limit = config.max_body_bytes

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        sweeper = asyncio.get_running_loop().create_task(_sweeper(service, stop))
        try:
            yield
        finally:
            stop.set()
            await sweeper
            await run_in_threadpool(service.close)

    app = FastAPI(title=f"kpigate collector: {config.deployment}", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    async def cloudevent(request: Request) -> Response:
        try:
            body = await read_limited(request, limit)
        except BodyTooLarge:
            service.reject_unread()
            return _too_large(limit)
        status, reply = await run_in_threadpool(service.ingest, dict(request.headers), body)
        return JSONResponse(reply, status_code=status)

    app.add_api_route("/cloudevents", cloudevent, methods=["POST"])
    app.add_api_route("/", cloudevent, methods=["POST"])

    def body_route(handle: Callable[[bytes], tuple[int, Any]]
                   ) -> Callable[[Request], Awaitable[Response]]:
        """A POST handler: the size-limited body to ``handle``, its reply as JSON."""

        async def route(request: Request) -> Response:
            try:
                body = await read_limited(request, limit)
            except BodyTooLarge:
                return _too_large(limit)
            status, reply = await run_in_threadpool(handle, body)
            return JSONResponse(reply, status_code=status)

        return route

    app.add_api_route("/feedback", body_route(service.feedback), methods=["POST"])
    app.add_api_route("/admin/stage", body_route(service.set_stage), methods=["POST"])

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            text = await run_in_threadpool(service.metrics_text)
        except (CollectorError, sqlite3.Error) as exc:
            return JSONResponse({"error": f"the store cannot be read: {exc}"}, status_code=503)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> Response:
        ok, problems = await run_in_threadpool(service.health)
        if ok:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)

    @app.get("/status")
    async def status() -> Response:
        return JSONResponse(await run_in_threadpool(service.status))

    return app
