"""The webhook bridge: MLflow registry webhooks in, GitHub ``repository_dispatch`` out.

MLflow cannot call GitHub's dispatch API itself: it sends its own JSON envelope and an
HMAC signature, while GitHub wants a bearer token and ``{"event_type", "client_payload"}``.
The bridge sits between the two::

    MLflow ──POST /webhook (signed)──▶ Bridge ──POST /repos/O/R/dispatches (token)──▶ GitHub

This module owns :class:`Bridge` (transport-independent) and its HTTP server. For each
delivery :class:`Bridge` checks, in this order: the signature and the timestamp's age
(:mod:`.signature`), the JSON envelope (:mod:`.events`), that the delivery id was not seen
within the freshness window (:mod:`.replay`), and whether the event is selected
(:func:`.events.route`). Selected ``model_version.created`` and
``model_version_alias.created`` events become one dispatch (:mod:`.dispatch`), sent
synchronously so that MLflow learns of a failure (502) and retries the same delivery; the
id is then released so that the retry is not taken for a replay. Everything else that is
authentic — notably ``model_version_tag.set``, which kpigate's own ``kpigate.*`` tags
cause on every evaluation — is answered 200 and only logged.

The HTTP side is a stdlib ``ThreadingHTTPServer`` rather than FastAPI: one POST route and
a health check need no framework, and the bridge then starts in well under a second.
Neither the shared secret nor the GitHub token is ever logged or put in a response; both
are excluded from :class:`~.config.BridgeConfig`'s ``repr``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.webhooks.config import BridgeConfig
from mlflow_kpigate.webhooks.dispatch import Dispatcher, DispatchError, GitHubDispatcher
from mlflow_kpigate.webhooks.events import parse_event, route
from mlflow_kpigate.webhooks.replay import ReplayGuard
from mlflow_kpigate.webhooks.signature import Rejected, verify_delivery

__all__ = ["HEALTH_PATH", "WEBHOOK_PATH", "Bridge", "BridgeServer", "Reply"]

logger = logging.getLogger("mlflow_kpigate.webhook_bridge")

WEBHOOK_PATH = "/webhook"
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class Reply:
    """The HTTP status and JSON body answered to one delivery."""

    status: int
    body: dict[str, Any]


class Bridge:
    """Verify, filter and forward deliveries; counts outcomes for ``/health``."""

    def __init__(self, config: BridgeConfig, dispatcher: Dispatcher | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._dispatcher = dispatcher if dispatcher is not None else GitHubDispatcher(config)
        self._clock = clock
        self._replays = ReplayGuard(config.max_age, config.replay_capacity)
        self._counts = {"forwarded": 0, "ignored": 0, "rejected": 0, "failed": 0}
        self._lock = threading.Lock()

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def reject(self, status: int, reason: str) -> Reply:
        """Count, log and answer a request refused before or during verification."""
        self._count("rejected")
        logger.warning("delivery rejected (%d): %s", status, reason)
        return Reply(status, {"status": "rejected", "reason": reason})

    def counts(self) -> dict[str, int]:
        """Deliveries so far by outcome: forwarded, ignored, rejected, failed."""
        with self._lock:
            return dict(self._counts)

    def handle(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """The reply to one POSTed delivery (dispatching it first when selected)."""
        try:
            signed = verify_delivery(headers, body, self.config.secret, now=self._clock(),
                                     max_age=self.config.max_age)
            event = parse_event(signed.body)
            self._replays.claim(signed.delivery_id, signed.timestamp, self._clock())
        except Rejected as exc:
            return self.reject(exc.status, exc.reason)
        delivery_id = signed.delivery_id
        decision = route(event, self.config, delivery_id)
        if decision.payload is None:
            self._count("ignored")
            logger.info("delivery %s ignored: %s", delivery_id, decision.reason)
            return Reply(200, {"status": "ignored", "reason": decision.reason})
        try:
            self._dispatcher.dispatch(self.config.event_type, decision.payload)
        except DispatchError as exc:
            self._replays.release(delivery_id)
            self._count("failed")
            logger.error("delivery %s not forwarded: %s", delivery_id, exc)
            return Reply(502, {"status": "failed", "reason": str(exc)})
        self._count("forwarded")
        logger.info("delivery %s forwarded to %s as %s: %s", delivery_id, self.config.repo,
                    self.config.event_type, decision.reason)
        return Reply(200, {"status": "forwarded", "delivery_id": delivery_id,
                           "client_payload": decision.payload})



# --------------------------------------------------------------------------------------
# HTTP transport
# --------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    timeout = 30  # seconds a client may take to send its request (slow clients)
    server_version = "kpigate-webhook-bridge"
    sys_version = ""

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: int, reason: str) -> None:
        reply = self.server.bridge.reject(status, reason)
        self._reply(reply.status, reply.body)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == HEALTH_PATH:
            self._reply(200, {"status": "ok", **self.server.bridge.counts()})
        else:
            self._reply(404, {"status": "not found",
                              "reason": f"POST deliveries to {WEBHOOK_PATH}"})

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != WEBHOOK_PATH:
            self._reply(404, {"status": "not found",
                              "reason": f"POST deliveries to {WEBHOOK_PATH}"})
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            self._refuse(411, "Content-Length: required")
            return
        length = int(length_text)
        limit = self.server.bridge.config.max_body_bytes
        if length > limit:
            self._refuse(413, f"body: {length} bytes is over the {limit}-byte limit")
            return
        body = self.rfile.read(length)
        if len(body) < length:  # the client hung up mid-body: nobody to answer
            logger.warning("request from %s ended after %d of %d body bytes",
                           self.client_address[0], len(body), length)
            self.close_connection = True
            return
        reply = self.server.bridge.handle(dict(self.headers.items()), body)
        self._reply(reply.status, reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class _HttpServer(ThreadingHTTPServer):
    # Handler threads are joined on close, so stopping the server leaves none running.
    block_on_close = True

    def __init__(self, address: tuple[str, int], bridge: Bridge) -> None:
        self.bridge = bridge
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stalls or hangs up mid-request is routine for a public endpoint:
        # one log line, not the traceback socketserver prints by default.
        error = sys.exc_info()[1]
        logger.warning("request from %s failed: %s", client_address[0],
                       type(error).__name__ if error else "unknown error")


class BridgeServer:
    """The bridge on ``host:port`` (port 0 picks a free one), served from a thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, bridge: Bridge, host: str = "127.0.0.1", port: int = 8787) -> None:
        self.bridge = bridge
        try:
            self._http = _HttpServer((host, port), bridge)
        except OSError as exc:
            raise UsageError(f"--host/--port: cannot listen on {host}:{port} ({exc.strerror});"
                             " choose a free port or another address") from None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8787``; the webhook is ``url + /webhook``."""
        host, port = self._http.server_address[:2]
        host = str(host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> BridgeServer:
        """Serve in a background thread."""
        # A short poll interval only makes stop() return sooner; requests are not polled.
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.1,),
                                        name="kpigate-webhook-bridge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wait for requests in progress and close the socket."""
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
