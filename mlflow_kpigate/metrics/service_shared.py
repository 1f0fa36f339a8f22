"""A shared collector's HTTP app: every rollout of a namespace behind one port.

``kpigate collector --shared`` runs this app. Rollouts are registered by the operator
(:mod:`.shared_registry`); each registered rollout NAME is served by its own
one-deployment app (:func:`~.service_app.create_collector_app`, deployment NAME, its own
prediction log), reached under ``/rollouts/NAME``:

* ``POST /rollouts/NAME/cloudevents/<ingest token>`` and ``POST /rollouts/NAME/cloudevents``
  (``ingest``): logger events; an event of another deployment is refused as in a
  one-deployment collector;
* ``POST /rollouts/NAME/feedback`` (``labels``): labels;
* ``POST /rollouts/NAME/admin/stage`` (``operator``): stage notices, checked against
  NAME's own policy and stages;
* ``GET /rollouts/NAME/metrics|health|status``: that rollout alone (open, like ``GET``
  everywhere else).

The shared collector's own endpoints:

* ``PUT /rollouts/NAME`` (``operator``): register a rollout (body and semantics in
  :mod:`.shared_registry`): ``201 {"outcome": "created"|"replaced"}``, ``200
  {"outcome": "unchanged"}``, ``400`` naming the bad field, ``409`` for another
  registration of the same versions;
* ``DELETE /rollouts/NAME`` (``operator``): end it (its data is kept under ``ended/``);
* ``GET /rollouts`` (``operator``): the registrations, policy text included. Unlike the
  other ``GET`` endpoints it needs a token: it shows each rollout's whole policy (margins,
  segment fields), which is the operator's business, not the scraper's;
* ``GET /metrics``: every rollout's series in one exposition, each family once, each series
  labelled ``deployment=NAME``, so the gate's PromQL (``{deployment="NAME"}``) reads a
  shared collector as it reads a collector of its own; plus the collector's own refusals
  under ``deployment="_collector"`` (not a DNS label, so never a rollout's name);
* ``GET /health``: ``503`` when the data directory or any rollout's store cannot write;
* ``GET /status``: every rollout's status, and the directories that could not be loaded.

A request for a NAME that is not registered is checked for its token like any other (so
an unauthenticated caller learns nothing new), then answered ``404`` with one line and
counted in ``kpigate_collector_rejected_requests_total{deployment="_collector",
reason="unknown_rollout"}``; nothing else is recorded. Refusals of a registered
rollout's posts count under that rollout's name, as in a one-deployment collector.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector as PrometheusCollector
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from mlflow_kpigate.core.request_body import BodyTooLarge, read_limited
from mlflow_kpigate.metrics.collector_db import CollectorError
from mlflow_kpigate.metrics.service_auth import (
    ENDPOINT_SCOPES,
    REJECT_REASONS,
    SHARED_ENDPOINT_SCOPES,
    authorize,
    bearer_token,
)
from mlflow_kpigate.metrics.service_exposition import counter_families
from mlflow_kpigate.metrics.shared_registry import RolloutRegistry, SharedCollectorConfig

__all__ = ["COLLECTOR_LABEL", "UNKNOWN_ROLLOUT", "SharedCollectorApp",
           "create_shared_collector_app", "merge_families"]

logger = logging.getLogger("mlflow_kpigate.metrics.service")

#: The ``deployment`` label of the shared collector's own counters.
COLLECTOR_LABEL = "_collector"
#: The refusal reason of a post to a rollout that is not registered.
UNKNOWN_ROLLOUT = "unknown_rollout"
_ROLLOUT_PATH = re.compile(r"^/rollouts/([^/]+)(/.*)$")
# The endpoint a POST to a rollout's sub-path is for (to check the token of a post to a
# rollout that is not registered); anything else is a plain 404.
_POST_PATHS = {"/cloudevents": "/cloudevents", "/": "/cloudevents", "/feedback": "/feedback",
               "/admin/stage": "/admin/stage"}


def merge_families(families: Iterable[Metric]) -> list[Metric]:
    """Metric families of the same name as one family (their samples together), in the
    order first seen; the inputs are not changed (a service's cached snapshot is reused)."""
    merged: dict[str, Metric] = {}
    for family in families:
        into = merged.get(family.name)
        if into is None:
            into = merged[family.name] = Metric(family.name, family.documentation,
                                                family.type, family.unit)
        elif into.type != family.type:
            raise ValueError(f"metric {family.name} has types {into.type} and {family.type}")
        into.samples.extend(family.samples)
    return list(merged.values())


class _Exposition(PrometheusCollector):
    """Every rollout's families, merged, and the collector's own counters."""

    def __init__(self, registry: RolloutRegistry, counts: _Counts) -> None:
        self.registry = registry
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        families: list[Metric] = []
        for service in self.registry.services().values():
            families.extend(service.collect())
        families.extend(counter_families(COLLECTOR_LABEL, self.counts.snapshot()))
        return merge_families(families)


class _Counts:
    """The collector's own refusal counters (every endpoint x reason, from 0)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, ...], int] = {
            ("refused", endpoint, reason): 0
            for endpoint in [*ENDPOINT_SCOPES, *SHARED_ENDPOINT_SCOPES]
            for reason in [*REJECT_REASONS, UNKNOWN_ROLLOUT]}

    def add(self, endpoint: str, reason: str) -> None:
        with self._lock:
            key = ("refused", endpoint, reason)
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return dict(self._counts)

    def by_endpoint(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (_, endpoint, reason), n in self.snapshot().items():
            out.setdefault(endpoint, {})[reason] = n
        return out


class SharedCollectorApp:
    """The ASGI app: ``/rollouts/NAME/...`` of a registered NAME goes to that rollout's
    app (the path without the prefix), everything else to the shared endpoints."""

    def __init__(self, registry: RolloutRegistry, admin: FastAPI) -> None:
        self.registry = registry
        self.admin = admin
        self.state = admin.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = _ROLLOUT_PATH.match(scope["path"])
            if match:
                app = self.registry.app(match.group(1))
                if app is not None:
                    rest = match.group(2)
                    await app({**scope, "path": rest, "raw_path": rest.encode()},
                              receive, send)
                    return
        await self.admin(scope, receive, send)


def _refusal(counts: _Counts, config: SharedCollectorConfig, request: Request,
             endpoint: str, path_token: str | None = None) -> Response | None:
    """None when the request's token opens ``endpoint``, else the counted 401/403."""
    if config.insecure_no_auth:
        return None
    presented = path_token if path_token is not None else \
        bearer_token(request.headers.get("authorization"))
    verdict = authorize(config.tokens, endpoint, presented, request.method)
    if verdict.allowed:
        return None
    counts.add(endpoint, verdict.reason or "invalid_token")
    return JSONResponse({"error": verdict.message}, status_code=verdict.status,
                        headers={"WWW-Authenticate": verdict.challenge})


async def _sweeper(registry: RolloutRegistry, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name, service in registry.services().items():
            try:
                await run_in_threadpool(service.sweep)
            except Exception:  # keep sweeping; the next round retries
                logger.warning("expiring pending CloudEvent halves of %s failed", name,
                               exc_info=True)
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _health(registry: RolloutRegistry) -> list[str]:
    problems = []
    try:
        with tempfile.TemporaryFile(dir=registry.config.data_dir):
            pass
    except OSError as exc:
        problems.append(f"the data directory cannot be written: {exc}")
    for name, service in registry.services().items():
        ok, found = service.health()
        problems += [f"{name}: {p}" for p in found] if not ok else []
    return problems


def create_shared_collector_app(config: SharedCollectorConfig) -> SharedCollectorApp:
    """The shared collector (endpoints in the module docstring); reloads the registered
    rollouts at once, so a broken data directory fails here. ``app.state.registry`` is
    the :class:`RolloutRegistry`."""
    registry = RolloutRegistry(config)
    registry.load()
    counts = _Counts()
    metrics_registry = CollectorRegistry(auto_describe=False)
    metrics_registry.register(_Exposition(registry, counts))
    if config.insecure_no_auth:
        logger.warning("authentication is OFF (insecure_no_auth): anyone who can reach this "
                       "port can register rollouts and post events, labels and stage "
                       "notices; use it only for local tests and demos")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        sweeper = asyncio.get_running_loop().create_task(
            _sweeper(registry, config.sweep_interval_s, stop))
        try:
            yield
        finally:
            stop.set()
            await sweeper
            await run_in_threadpool(registry.close)

    admin = FastAPI(title="kpigate shared collector", lifespan=lifespan, docs_url=None,
                    redoc_url=None, openapi_url=None)
    admin.state.registry = registry

    @admin.put("/rollouts/{name}")
    async def register(name: str, request: Request) -> Response:
        refusal = _refusal(counts, config, request, "/rollouts")
        if refusal is not None:
            return refusal
        try:
            body = await read_limited(request, config.max_registration_bytes)
        except BodyTooLarge:
            return JSONResponse({"error": f"body: larger than "
                                          f"{config.max_registration_bytes} bytes"},
                                status_code=413)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": f"body: not valid JSON ({exc})"}, status_code=400)
        status, reply = await run_in_threadpool(registry.register, name, data)
        return JSONResponse(reply, status_code=status)

    @admin.delete("/rollouts/{name}")
    async def deregister(name: str, request: Request) -> Response:
        refusal = _refusal(counts, config, request, "/rollouts")
        if refusal is not None:
            return refusal
        status, reply = await run_in_threadpool(registry.deregister, name)
        return JSONResponse(reply, status_code=status)

    @admin.get("/rollouts")
    async def registrations(request: Request) -> Response:
        refusal = _refusal(counts, config, request, "/rollouts")
        if refusal is not None:
            return refusal
        listed = {n: r.to_json() for n, r in registry.registrations().items()}
        return JSONResponse({"rollouts": listed, "unloaded": dict(registry.unloaded)})

    @admin.api_route("/rollouts/{name}/{rest:path}", methods=["GET", "POST"])
    async def unknown_rollout(name: str, rest: str, request: Request) -> Response:
        # Only reached when NAME is not registered (SharedCollectorApp routes the others).
        message = (f"no rollout named {name!r} is registered with this collector; the "
                   f"operator registers it (PUT /rollouts/{name}) before its "
                   "SeldonDeployment logs to it")
        path, token = "/" + rest, None
        if rest.startswith("cloudevents/"):  # the ingest token in the path
            path, token = "/cloudevents", rest[len("cloudevents/"):] or None
        endpoint = _POST_PATHS.get(path) if request.method == "POST" else None
        if endpoint is None:
            return JSONResponse({"error": message}, status_code=404)
        refusal = _refusal(counts, config, request, endpoint, token)
        if refusal is not None:
            return refusal
        counts.add(endpoint, UNKNOWN_ROLLOUT)
        return JSONResponse({"error": message}, status_code=404)

    @admin.get("/metrics")
    async def metrics() -> Response:
        try:
            text = await run_in_threadpool(generate_latest, metrics_registry)
        except (CollectorError, sqlite3.Error) as exc:
            return JSONResponse({"error": f"a store cannot be read: {exc}"}, status_code=503)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @admin.get("/health")
    async def health() -> Response:
        problems = await run_in_threadpool(_health, registry)
        if not problems:
            return JSONResponse({"status": "ok", "rollouts": len(registry.services())})
        return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)

    @admin.get("/status")
    async def status() -> Response:
        def gather() -> dict[str, Any]:
            rollouts: Mapping[str, Any] = {n: s.status()
                                           for n, s in registry.services().items()}
            return {"mode": "shared", "rollouts": rollouts,
                    "unloaded": dict(registry.unloaded), "refused": counts.by_endpoint(),
                    "auth": "off" if config.insecure_no_auth else "bearer tokens"}

        return JSONResponse(await run_in_threadpool(gather))

    return SharedCollectorApp(registry, admin)
