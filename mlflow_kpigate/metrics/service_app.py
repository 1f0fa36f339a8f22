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

Every ``POST`` needs a token of its endpoint's scope (:mod:`.service_auth`), checked
before the body is read: ``401`` with ``WWW-Authenticate: Bearer`` when it is missing or
nobody's, ``403`` when it belongs to another scope; a refused request is counted in
``kpigate_collector_rejected_requests_total`` and nowhere else. ``POST
/cloudevents/<token>`` carries the ``ingest`` token in its path, for Seldon's request
logger, which cannot send headers. The ``GET`` endpoints stay open. With
``insecure_no_auth`` every request is accepted, and the app logs a warning when built.

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
from mlflow_kpigate.metrics.service_auth import SCOPES, authorize, bearer_token
from mlflow_kpigate.metrics.service_config import CollectorServiceConfig

__all__ = ["create_collector_app"]

# One logger for the whole collector service, whichever of its modules logs.
logger = logging.getLogger("mlflow_kpigate.metrics.service")


def _too_large(limit: int) -> Response:
    return JSONResponse({"error": f"body is larger than {limit} bytes; log smaller requests "
                                  "or raise max_body_bytes"}, status_code=413)


def _announce(config: CollectorServiceConfig) -> None:
    """Say once, at start, how requests are authenticated."""
    if config.insecure_no_auth:
        logger.warning("authentication is OFF (insecure_no_auth): anyone who can reach this "
                       "port can post events, labels and stage notices; use it only for "
                       "local tests and demos")
        return
    closed = [s for s in SCOPES if s not in config.tokens.scopes]
    for scope in closed:
        logger.warning("no %s token is configured: every POST of that scope is refused",
                       scope)


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
    _announce(config)

    def refused(request: Request, endpoint: str, path_token: str | None = None
                ) -> Response | None:
        """None when the request may proceed, else the 401/403 answer (counted)."""
        if config.insecure_no_auth:
            return None
        presented = path_token if path_token is not None else \
            bearer_token(request.headers.get("authorization"))
        verdict = authorize(config.tokens, endpoint, presented)
        if verdict.allowed:
            return None
        service.refuse(endpoint, verdict.reason or "invalid_token")
        return JSONResponse({"error": verdict.message}, status_code=verdict.status,
                            headers={"WWW-Authenticate": verdict.challenge})

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

    async def take_event(request: Request, path_token: str | None) -> Response:
        refusal = refused(request, "/cloudevents", path_token)
        if refusal is not None:
            return refusal
        try:
            body = await read_limited(request, limit)
        except BodyTooLarge:
            service.reject_unread()
            return _too_large(limit)
        status, reply = await run_in_threadpool(service.ingest, dict(request.headers), body)
        return JSONResponse(reply, status_code=status)

    async def cloudevent(request: Request) -> Response:
        return await take_event(request, None)

    async def cloudevent_with_token(request: Request, token: str) -> Response:
        # The path carries the ingest token (Seldon's logger cannot send a header); an
        # empty segment counts as no token at all.
        return await take_event(request, token or None)

    app.add_api_route("/cloudevents", cloudevent, methods=["POST"])
    app.add_api_route("/cloudevents/{token}", cloudevent_with_token, methods=["POST"])
    app.add_api_route("/", cloudevent, methods=["POST"])

    def body_route(endpoint: str, handle: Callable[[bytes], tuple[int, Any]]
                   ) -> Callable[[Request], Awaitable[Response]]:
        """A POST handler: the token check, then the size-limited body to ``handle``, its
        reply as JSON."""

        async def route(request: Request) -> Response:
            refusal = refused(request, endpoint)
            if refusal is not None:
                return refusal
            try:
                body = await read_limited(request, limit)
            except BodyTooLarge:
                return _too_large(limit)
            status, reply = await run_in_threadpool(handle, body)
            return JSONResponse(reply, status_code=status)

        return route

    app.add_api_route("/feedback", body_route("/feedback", service.feedback), methods=["POST"])
    app.add_api_route("/admin/stage", body_route("/admin/stage", service.set_stage),
                      methods=["POST"])

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
