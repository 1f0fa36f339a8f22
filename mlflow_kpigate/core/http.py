"""Outbound HTTP with bounded retries: one ``requests`` session on urllib3's ``Retry``.

Every call kpigate makes to another service goes through :class:`RetryingSession`: the
alert webhooks (``notify``), the GitHub REST client (``github``, which the webhook
bridge's dispatcher uses too) and the Seldon collector notice. It owns the rules they
share:

* A call is tried at most ``RetryPolicy.attempts`` times. Connection errors, 429 and 5xx
  are retried (plus, per policy, statuses that carry ``Retry-After``: GitHub's 403
  secondary rate limit); every other answer is final.
* Between tries it waits ``backoff_s``, ``2 × backoff_s``, ``4 × backoff_s`` … or what
  ``Retry-After`` asks for. A ``Retry-After`` longer than ``max_retry_after_s`` is not
  waited for: the call stops there and :class:`HttpError` says so.
* POST and PATCH are retried after the request may have reached the server only when the
  policy says repeating them is harmless (``retry_unsafe_methods``); a connection that
  was never made is retried for every method.
* ``Authorization`` is sent only to the origin it was set for: a redirect elsewhere drops
  it, and no credentials are taken from ``~/.netrc``. No cookies are kept.
* :meth:`RetryingSession.call` raises :class:`HttpError` (one line naming the method and
  the URL without its query or credentials) for anything but a 2xx answer.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from mlflow_kpigate.core.errors import KpigateError

__all__ = [
    "RETRY_STATUSES",
    "HttpError",
    "RetryPolicy",
    "RetryingSession",
    "attempts_made",
    "parse_retry_after",
    "safe_url",
    "tries",
]

logger = logging.getLogger("mlflow_kpigate.http")

#: Answers worth another try: the server was busy or broken, not the request.
RETRY_STATUSES = frozenset({429, *range(500, 600)})


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of call is retried.

    ``attempts`` counts every try, the first included. ``retry_after_statuses`` are
    retried only when they carry ``Retry-After`` (GitHub answers a secondary rate limit
    with 403 and one); :data:`RETRY_STATUSES` are always retried.
    """

    attempts: int = 3
    backoff_s: float = 0.5
    max_retry_after_s: float = 60.0
    retry_unsafe_methods: bool = False
    retry_after_statuses: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("backoff_s and max_retry_after_s must not be negative")


class HttpError(KpigateError):
    """A call that did not end in a 2xx answer.

    ``status`` is the last HTTP status (None: no answer, ``detail`` says why), ``response``
    the last answer, ``attempts`` how many tries were made (1 when an error without an
    answer was not retried: the count of earlier tries is not known then).
    """

    def __init__(self, message: str, *, status: int | None, detail: str, attempts: int,
                 response: requests.Response | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.attempts = attempts
        self.response = response


def parse_retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delta-seconds or an HTTP date); else None."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def safe_url(url: str) -> str:
    """``url`` fit for a message: no credentials, query or fragment (they may hold secrets)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a port; requests will say so
        port = None
    if port is not None:
        host += f":{port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def attempts_made(response: requests.Response) -> int:
    """How many tries it took to get ``response`` (1 when it came at the first)."""
    retries = getattr(response.raw, "retries", None)
    return 1 + len(retries.history) if isinstance(retries, Retry) else 1


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _describe(error: BaseException) -> str:
    """The root cause of a failed connection, e.g. ``ConnectionRefusedError``.

    requests wraps urllib3's MaxRetryError, which wraps the last error, which wraps the
    socket's; only the innermost is worth showing, and it never holds the request's path
    (MaxRetryError's text does, and a path may be a secret).
    """
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        if isinstance(current, MaxRetryError) and current.reason is not None:
            current = current.reason
        elif current.__cause__ is not None:
            current = current.__cause__
        else:
            current = next((a for a in current.args if isinstance(a, BaseException)), None)
    root = seen[-1]
    text = (root.strerror or str(root)) if isinstance(root, OSError) else ""
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


class _Retry(Retry):
    """urllib3's Retry with the waits and the ``Retry-After`` bound of a :class:`RetryPolicy`.

    ``sleep`` is injectable (tests record the waits instead of sleeping); ``new`` carries
    both extra attributes to the copies Retry makes on every increment.
    """

    sleeper: Callable[[float], None] = time.sleep
    max_retry_after_s: float = 60.0

    def new(self, **kw: Any) -> Any:
        retry = super().new(**kw)
        retry.sleeper = self.sleeper
        retry.max_retry_after_s = self.max_retry_after_s
        retry.RETRY_AFTER_STATUS_CODES = self.RETRY_AFTER_STATUS_CODES
        return retry

    def get_backoff_time(self) -> float:
        # urllib3 skips the wait before the first retry (0, 2b, 4b …); kpigate has always
        # documented b, 2b, 4b … between tries, so the first retry waits too.
        failures = len(self.history)
        return 0.0 if failures == 0 else min(self.backoff_max,
                                             self.backoff_factor * 2 ** (failures - 1))

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        wait = None
        if response is not None and self.respect_retry_after_header:
            wait = parse_retry_after(response.headers.get("Retry-After"))
        if wait is None:
            wait = self.get_backoff_time()
        if self.history:  # no URL in the log: a webhook's path may be its secret
            last = self.history[-1]
            cause = f"HTTP {last.status}" if last.status else type(last.error).__name__
            logger.info("HTTP attempt %d failed (%s); retrying in %gs", len(self.history),
                        cause, wait)
        self.sleeper(wait)

    def increment(self, method: str | None = None, url: str | None = None,
                  response: BaseHTTPResponse | None = None, error: Exception | None = None,
                  _pool: ConnectionPool | None = None,
                  _stacktrace: TracebackType | None = None) -> Any:
        # Retry can only cap a long Retry-After (retry_after_max) and then still sleeps it;
        # a caller here would rather stop and report a rate limit at once. MaxRetryError
        # makes urllib3 hand back this response, since raise_on_status is off.
        if response is not None:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            if wait is not None and wait > self.max_retry_after_s:
                # urllib3's own increment raises with the same (possibly None) pool.
                raise MaxRetryError(cast(ConnectionPool, _pool), url or "",
                                    ResponseError(f"Retry-After {wait:g}s is too long"))
        return super().increment(method, url, response, error, _pool, _stacktrace)


class _QuietRetries(logging.Filter):
    """Drops urllib3's "Retrying … after connection broken …: /path" warnings for our calls.

    They name the request's path, and an alert webhook's path is its secret; :class:`_Retry`
    logs each retry without it. Other users of urllib3 keep their warnings.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and args and isinstance(args[0], _Retry))


logging.getLogger("urllib3.connectionpool").addFilter(_QuietRetries())


class _NoNetrcAuth(AuthBase):
    # A session with an ``auth`` never looks in ~/.netrc, whose entry would otherwise
    # replace the caller's own Authorization header.
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class RetryingSession(requests.Session):
    """A ``requests.Session`` whose every call follows ``policy`` (see the module doc).

    Use :meth:`call` for a checked request; the inherited methods (``get``, ``post`` …)
    retry the same way but return any answer. Thread-safe for :meth:`call`: the session
    keeps no cookies and is not changed after construction.
    """

    def __init__(self, policy: RetryPolicy | None = None, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        self.policy = policy if policy is not None else RetryPolicy()
        retry = _Retry(
            total=self.policy.attempts - 1,
            status_forcelist=RETRY_STATUSES,
            # None: every method; else urllib3's idempotent ones (no POST, no PATCH).
            allowed_methods=None if self.policy.retry_unsafe_methods
            else Retry.DEFAULT_ALLOWED_METHODS,
            backoff_factor=self.policy.backoff_s,
            respect_retry_after_header=True,
            # Hand back the last answer rather than raise, so callers see its status/body.
            raise_on_status=False,
        )
        retry.sleeper = sleep
        retry.max_retry_after_s = self.policy.max_retry_after_s
        retry.RETRY_AFTER_STATUS_CODES = self.policy.retry_after_statuses
        adapter = HTTPAdapter(max_retries=retry)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self.auth = _NoNetrcAuth()
        # None of these APIs uses cookies (the stdlib clients kept none), and a cookie jar
        # is the state that would make sharing the session between threads unsafe.
        self.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))

    def rebuild_auth(self, prepared_request: requests.PreparedRequest,
                     response: requests.Response) -> None:
        # requests keeps Authorization across an http→https upgrade and may add ~/.netrc
        # credentials; here a token goes to its exact origin (scheme, host, port) only.
        previous = response.request.url or ""
        if _origin(prepared_request.url or "") != _origin(previous):
            prepared_request.headers.pop("Authorization", None)

    def call(self, method: str, url: str, *, timeout_s: float, json_body: Any = None,
             data: bytes | None = None, headers: Mapping[str, str] | None = None,
             follow_redirects: bool = True) -> requests.Response:
        """One call with the policy's retries; the 2xx answer, or :class:`HttpError`.

        ``json_body`` (not None) is sent as JSON; ``data`` as it is. With
        ``follow_redirects=False`` a 3xx answer is an error too.
        """
        sent = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            sent.setdefault("Content-Type", "application/json")
        what = f"{method.upper()} {safe_url(url)}"
        try:
            response = self.request(method, url, data=data, headers=sent, timeout=timeout_s,
                                    allow_redirects=follow_redirects)
        except requests.RequestException as exc:
            exhausted = bool(exc.args) and isinstance(exc.args[0], MaxRetryError)
            attempts = self.policy.attempts if exhausted else 1
            detail = _describe(exc)
            raise HttpError(_message(what, attempts, detail), status=None, detail=detail,
                            attempts=attempts) from None
        if 200 <= response.status_code < 300:
            return response
        status = response.status_code
        attempts = attempts_made(response)
        detail = f"HTTP {status}"
        wait = parse_retry_after(response.headers.get("Retry-After"))
        retried = status in RETRY_STATUSES or status in self.policy.retry_after_statuses
        if retried and wait is not None and wait > self.policy.max_retry_after_s:
            detail += (f"; Retry-After {wait:g}s is longer than the "
                       f"{self.policy.max_retry_after_s:g}s this call waits")
        raise HttpError(_message(what, attempts, detail), status=status, detail=detail,
                        attempts=attempts, response=response)


def tries(attempts: int) -> str:
    """`` after N attempts`` when a call was retried, else nothing (for messages)."""
    return f" after {attempts} attempts" if attempts > 1 else ""


def _message(what: str, attempts: int, detail: str) -> str:
    return f"{what} failed{tries(attempts)} ({detail})"
