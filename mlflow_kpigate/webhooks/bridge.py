"""The webhook bridge: MLflow registry webhooks in, GitHub ``repository_dispatch`` out.

MLflow cannot call GitHub's dispatch API itself: it sends its own JSON envelope and an
HMAC signature, while GitHub wants a bearer token and ``{"event_type", "client_payload"}``.
The bridge sits between the two::

    MLflow ──POST /webhook (signed)──▶ Bridge ──POST /repos/O/R/dispatches (token)──▶ GitHub

For each delivery :class:`Bridge` checks, in this order: the signature and the timestamp's
age (:mod:`.signature`), the JSON envelope, that the delivery id was not seen within the
freshness window (:class:`ReplayGuard`), and whether the event is selected (:func:`route`).
Selected ``model_version.created`` and ``model_version_alias.created`` events become one
dispatch, sent synchronously so that MLflow learns of a failure (502) and retries the same
delivery; the id is then released so that the retry is not taken for a replay. Everything
else that is authentic — notably ``model_version_tag.set``, which kpigate's own
``kpigate.*`` tags cause on every evaluation — is answered 200 and only logged.

The HTTP side is a stdlib ``ThreadingHTTPServer`` rather than FastAPI: one POST route and
a health check need no framework, and the bridge then starts in well under a second.
Neither the shared secret nor the GitHub token is ever logged or put in a response; both
are excluded from :class:`BridgeConfig`'s ``repr``.
"""

from __future__ import annotations

import heapq
import json
import logging
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.webhooks.signature import Rejected, verify_delivery

__all__ = [
    "ALIAS_CREATED",
    "FORWARDED_EVENTS",
    "TAG_SET",
    "VERSION_CREATED",
    "WEBHOOK_PATH",
    "Bridge",
    "BridgeConfig",
    "BridgeServer",
    "DispatchError",
    "Dispatcher",
    "GitHubDispatcher",
    "RegistryEvent",
    "ReplayGuard",
    "Reply",
    "Route",
    "parse_event",
    "pr_number_from",
    "route",
]

logger = logging.getLogger("mlflow_kpigate.webhook_bridge")

VERSION_CREATED = "model_version.created"
ALIAS_CREATED = "model_version_alias.created"
TAG_SET = "model_version_tag.set"
FORWARDED_EVENTS = frozenset({VERSION_CREATED, ALIAS_CREATED})
WEBHOOK_PATH = "/webhook"
HEALTH_PATH = "/health"
SOURCE = "mlflow-webhook"

_REPO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")
_PR_TEXT = re.compile(r"#?(\d{1,9})|.*/pull/(\d{1,9})/?")
_MAX_EVENT_TYPE = 100  # GitHub rejects longer event types


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeConfig:
    """What the bridge accepts and where it dispatches. Raises UsageError when invalid.

    ``models`` / ``aliases`` empty means every model / every alias. ``aliases`` filters
    alias events only; ``events`` chooses which of the two forwarded event types are on.
    """

    repo: str
    secret: str = field(repr=False)
    token: str = field(repr=False)
    api_url: str = "https://api.github.com"
    event_type: str = "kpigate-rollout"
    models: frozenset[str] = frozenset()
    aliases: frozenset[str] = frozenset()
    events: frozenset[str] = FORWARDED_EVENTS
    pr_tag: str = "github.pr"
    max_age: float = 300.0
    max_body_bytes: int = 1 << 20
    replay_capacity: int = 100_000
    dispatch_attempts: int = 4
    retry_backoff: float = 0.5
    request_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not _REPO.fullmatch(self.repo):
            raise UsageError(f"--repo: {self.repo!r} is not a repository; write OWNER/NAME, "
                             "e.g. acme/fraud-models")
        if not self.secret:
            raise UsageError("--secret-env: the shared secret is empty; set the variable to "
                             "the secret the MLflow webhook was created with")
        if not self.token:
            raise UsageError("GITHUB_TOKEN: not set; export a token that may create "
                             f"repository dispatches on {self.repo} (contents: write)")
        parsed = urllib.parse.urlsplit(self.api_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"GITHUB_API_URL: {self.api_url!r} is not an http(s) URL; use "
                             "https://api.github.com or https://HOST/api/v3 (Enterprise)")
        if not self.event_type or len(self.event_type) > _MAX_EVENT_TYPE:
            raise UsageError(f"--event-type: must be 1 to {_MAX_EVENT_TYPE} characters")
        unknown = sorted(self.events - FORWARDED_EVENTS)
        if unknown or not self.events:
            raise UsageError(f"--event: {', '.join(unknown) or 'none given'}; choose from "
                             f"{', '.join(sorted(FORWARDED_EVENTS))}")
        if not self.max_age > 0:
            raise UsageError("--max-age: must be positive, e.g. 300s")
        if not self.pr_tag:
            raise UsageError("--pr-tag: must not be empty (default github.pr)")

    @property
    def dispatch_url(self) -> str:
        """``{api_url}/repos/{owner}/{repo}/dispatches`` (a GHES path prefix is kept)."""
        return f"{self.api_url.rstrip('/')}/repos/{self.repo}/dispatches"


# --------------------------------------------------------------------------------------
# Events and routing (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryEvent:
    """The parts of an MLflow webhook envelope the bridge uses."""

    event: str  # "<entity>.<action>", as in MLflow's webhook event names
    model: str | None
    version: str | None = None
    alias: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    tag_key: str | None = None


def _text(data: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise Rejected(400, f"{where}.{key}: missing or not a string; MLflow sends it for "
                            "this event")
    return value


def parse_event(body: bytes) -> RegistryEvent:
    """Read MLflow's envelope ``{"entity", "action", "timestamp", "data": {...}}``.

    Fields a forwarded event needs (``data.name``, ``data.version``, ``data.alias``) must be
    present; other events are parsed leniently because they are only logged. Raises
    :class:`Rejected` (400) with the offending field.
    """
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejected(400, "body: not JSON; send MLflow's webhook envelope") from None
    if not isinstance(envelope, dict):
        raise Rejected(400, "body: not a JSON object; send MLflow's webhook envelope")
    entity = _text(envelope, "entity", "body", required=True)
    action = _text(envelope, "action", "body", required=True)
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise Rejected(400, "body.data: missing or not an object")
    event = f"{entity}.{action}"
    if event not in (*FORWARDED_EVENTS, TAG_SET):
        name = data.get("name")
        return RegistryEvent(event, name if isinstance(name, str) else None)
    model = _text(data, "name", "body.data", required=True)
    version = _text(data, "version", "body.data", required=True)
    tags = data.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise Rejected(400, "body.data.tags: not an object of string values")
    return RegistryEvent(
        event, model, version,
        alias=_text(data, "alias", "body.data", required=True) if event == ALIAS_CREATED
        else None,
        tags=dict(tags),
        tag_key=_text(data, "key", "body.data", required=True) if event == TAG_SET else None,
    )


def pr_number_from(value: str | None) -> int | None:
    """A pull-request number from a tag value: ``42``, ``#42`` or ``…/pull/42``; else None."""
    if value is None:
        return None
    match = _PR_TEXT.fullmatch(value.strip())
    if match is None:
        return None
    number = int(match.group(1) or match.group(2))
    return number if number > 0 else None


@dataclass(frozen=True)
class Route:
    """Where one authentic event goes: ``payload`` to dispatch, or None and why not."""

    payload: dict[str, Any] | None
    reason: str


def route(event: RegistryEvent, config: BridgeConfig, delivery_id: str) -> Route:
    """Decide whether ``event`` becomes a dispatch, and build its ``client_payload``."""
    if event.event == TAG_SET:
        return Route(None, f"{TAG_SET} ({event.tag_key}) is never forwarded: kpigate's own "
                           "tags cause these events")
    if event.event not in config.events:
        return Route(None, f"{event.event} is not forwarded")
    if config.models and event.model not in config.models:
        return Route(None, f"model {event.model!r} is not selected (--model)")
    if event.event == ALIAS_CREATED and config.aliases and event.alias not in config.aliases:
        return Route(None, f"alias {event.alias!r} is not selected (--alias)")
    payload: dict[str, Any] = {"model": event.model, "version": event.version}
    if event.alias is not None:
        payload["alias"] = event.alias
    raw_pr = event.tags.get(config.pr_tag)
    pr = pr_number_from(raw_pr)
    if pr is not None:
        payload["pr_number"] = pr
    elif raw_pr is not None:
        logger.warning("delivery %s: tag %s=%r is not a pull-request number; dispatching "
                       "without pr_number", delivery_id, config.pr_tag, raw_pr[:80])
    payload["source"] = SOURCE
    payload["delivery_id"] = delivery_id
    return Route(payload, f"{event.event} {event.model} v{event.version}"
                          + (f" @{event.alias}" if event.alias else ""))


# --------------------------------------------------------------------------------------
# Replay protection
# --------------------------------------------------------------------------------------


class ReplayGuard:
    """Delivery ids seen within the freshness window, in bounded memory (thread-safe).

    An id is remembered until its delivery's timestamp plus ``window``: after that the
    timestamp check rejects a replay anyway. When ``capacity`` ids are remembered, new
    deliveries are refused (503, so MLflow retries later) rather than forgetting an id
    early, which would let a replay through.
    """

    def __init__(self, window: float, capacity: int) -> None:
        self._window = window
        self._capacity = capacity
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            expiry, delivery_id = heapq.heappop(self._heap)
            if self._expiry.get(delivery_id) == expiry:
                del self._expiry[delivery_id]
        if len(self._heap) > 2 * self._capacity:  # entries left behind by release()
            self._heap = [(e, d) for d, e in self._expiry.items()]
            heapq.heapify(self._heap)

    def claim(self, delivery_id: str, timestamp: float, now: float) -> None:
        """Remember ``delivery_id``; raise :class:`Rejected` if it was seen or memory is full."""
        with self._lock:
            self._prune(now)
            if delivery_id in self._expiry:
                raise Rejected(401, f"X-MLflow-Delivery-Id: {delivery_id[:64]} was already "
                                    "received; replayed deliveries are refused")
            if len(self._expiry) >= self._capacity:
                raise Rejected(503, "too many deliveries within the replay window; retry "
                                    "later or shorten --max-age")
            expiry = timestamp + self._window
            self._expiry[delivery_id] = expiry
            heapq.heappush(self._heap, (expiry, delivery_id))

    def release(self, delivery_id: str) -> None:
        """Forget ``delivery_id`` (its dispatch failed; MLflow's retry must be accepted)."""
        with self._lock:
            self._expiry.pop(delivery_id, None)


# --------------------------------------------------------------------------------------
# Dispatching to GitHub
# --------------------------------------------------------------------------------------


class DispatchError(Exception):
    """A dispatch that GitHub did not accept; the message holds no token."""


class Dispatcher(Protocol):
    """Sends one ``repository_dispatch`` event."""

    def dispatch(self, event_type: str, client_payload: Mapping[str, Any]) -> None:
        """Send the event or raise :class:`DispatchError`."""
        ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302 with the Authorization header to wherever it points,
    # possibly another host; a redirect is reported instead (as an HTTPError).
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class GitHubDispatcher:
    """``POST /repos/{owner}/{repo}/dispatches``; retries 5xx, 429 and connection errors.

    Retries back off exponentially (``backoff``, 2×, 4× …). A 4xx other than 429 is not
    retried: a wrong token or repository does not fix itself. Redirects are not followed,
    so the token only ever goes to ``GITHUB_API_URL``.
    """

    def __init__(self, config: BridgeConfig, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._url = config.dispatch_url
        self._token = config.token
        self._attempts = max(1, config.dispatch_attempts)
        self._backoff = config.retry_backoff
        self._timeout = config.request_timeout
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirects)

    def _request(self, body: bytes) -> urllib.request.Request:
        return urllib.request.Request(self._url, data=body, method="POST", headers={
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "User-Agent": "mlflow-kpigate-webhook-bridge",
            "X-GitHub-Api-Version": "2022-11-28",
        })

    def dispatch(self, event_type: str, client_payload: Mapping[str, Any]) -> None:
        """Send the event; raise :class:`DispatchError` once retries are used up."""
        body = json.dumps({"event_type": event_type,
                           "client_payload": dict(client_payload)}).encode()
        last = ""
        for attempt in range(self._attempts):
            try:
                with self._opener.open(self._request(body), timeout=self._timeout):
                    return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if 300 <= exc.code < 400:
                    raise DispatchError(
                        f"GitHub answered {last}, a redirect, which is not followed so that "
                        "the token goes nowhere else; check --repo (renamed or moved?) and "
                        "GITHUB_API_URL") from None
                if exc.code != 429 and exc.code < 500:
                    raise DispatchError(
                        f"GitHub refused the dispatch ({last}): check --repo and that the "
                        "token may create repository dispatches there (contents: write)"
                    ) from None
            except OSError as exc:
                last = type(exc).__name__
            if attempt + 1 < self._attempts:
                delay = self._backoff * 2 ** attempt
                logger.info("dispatch attempt %d failed (%s); retrying in %.1fs",
                            attempt + 1, last, delay)
                self._sleep(delay)
        raise DispatchError(f"GitHub did not accept the dispatch after {self._attempts} "
                            f"attempts ({last})")


# --------------------------------------------------------------------------------------
# The bridge (transport-independent)
# --------------------------------------------------------------------------------------


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
