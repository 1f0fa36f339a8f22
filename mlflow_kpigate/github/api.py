"""A small GitHub REST client: token auth, pagination through ``Link``, bounded retries.

HTTP and its retries are :class:`~mlflow_kpigate.core.http.RetryingSession`'s; this module
adds what is GitHub's:

* The base URL is ``GITHUB_API_URL`` (``https://api.github.com`` by default; GitHub
  Enterprise Server uses ``https://HOST/api/v3``). Paths are joined under it, so a GHES
  path prefix is kept.
* The token travels in the ``Authorization`` header only, and only to the API's own
  origin: a ``Link`` or redirect that points elsewhere is not sent the token. It never
  appears in an exception's text (any echo of it in a response is redacted).
* Connection errors, 5xx and 429 responses are retried with exponential backoff, a
  bounded number of times, and so is a 403 that carries ``Retry-After`` (a secondary rate
  limit); ``Retry-After`` is honoured when it asks for a short wait, and a longer one is
  reported as a rate limit at once. Every other 4xx is final and raised at once as
  :class:`GitHubError` (a 401/403/404 as :class:`GitHubPermissionError`, which callers
  turn into a warning about the token).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.http import (
    RETRY_STATUSES,
    HttpError,
    RetryingSession,
    RetryPolicy,
    parse_retry_after,
)

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "mlflow-kpigate"
#: Longest ``Retry-After`` the client waits for; a longer one fails the call instead.
MAX_RETRY_AFTER_S = 60.0
#: Pages followed at most by :meth:`GitHubClient.paginate` (100 items each by default).
MAX_PAGES = 100
REDACTED = "***"


class GitHubError(KpigateError):
    """A GitHub API call failed; ``status`` is the HTTP status (None: no response).

    ``detail`` is the redacted cause in parentheses of the message (``HTTP 404: Not
    Found``); ``rate_limited`` says that GitHub asked to wait rather than refused.
    """

    def __init__(self, message: str, status: int | None = None, *, detail: str = "",
                 rate_limited: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.rate_limited = rate_limited


class GitHubPermissionError(GitHubError):
    """The token may not do this (401, 403 or 404 on a resource it cannot see)."""


@dataclass(frozen=True)
class Response:
    """A successful API response."""

    status: int
    headers: Mapping[str, str]
    data: Any
    url: str

    def link(self, rel: str) -> str | None:
        """The URL of the ``Link`` header's relation ``rel`` (``next``, ``last`` …)."""
        return parse_link_header(self.headers.get("link", "")).get(rel)


def parse_link_header(value: str) -> dict[str, str]:
    """``{rel: url}`` from an RFC 8288 ``Link`` header as GitHub sends it."""
    links: dict[str, str] = {}
    for part in value.split(","):
        url_part, _, params = part.strip().partition(";")
        url_part = url_part.strip()
        if not (url_part.startswith("<") and url_part.endswith(">")):
            continue
        for param in params.split(";"):
            key, _, val = param.strip().partition("=")
            if key.strip().lower() == "rel":
                for rel in val.strip().strip('"').split():
                    links.setdefault(rel, url_part[1:-1])
    return links


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def check_api_url(url: str) -> str:
    """``url`` without a trailing slash; ``UsageError`` unless it is an http(s) URL."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"GITHUB_API_URL: {url!r} is not an http(s) URL; set it to "
                         "https://api.github.com or https://HOST/api/v3 (GitHub Enterprise "
                         "Server)")
    if parts.username or parts.password:
        raise UsageError("GITHUB_API_URL: the URL holds credentials; give the token in "
                         "GITHUB_TOKEN instead")
    return url.strip().rstrip("/")


@dataclass
class GitHubClient:
    """Calls the GitHub REST API as the holder of ``token``.

    ``attempts`` bounds the tries per call (first try included); the waits between them
    are ``backoff_s``, ``2 × backoff_s``, … or a ``Retry-After`` of at most
    ``max_retry_after_s``. ``sleep`` is what waits (``time.sleep``). With
    ``follow_redirects=False`` a redirect is an error (:attr:`GitHubError.status` 3xx).
    Every method is retried, POST and PATCH included, as this client always did: after a
    5xx the write most likely did not happen, and a repeat at worst posts a comment twice,
    sets a commit status again or sends a second dispatch.
    """

    token: str | None
    api_url: str = DEFAULT_API_URL
    attempts: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 15.0
    sleep: Callable[[float], None] = time.sleep
    max_retry_after_s: float = MAX_RETRY_AFTER_S
    follow_redirects: bool = True
    user_agent: str = USER_AGENT
    _http: RetryingSession = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.api_url = check_api_url(self.api_url)
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._http = RetryingSession(RetryPolicy(
            attempts=self.attempts, backoff_s=self.backoff_s,
            max_retry_after_s=self.max_retry_after_s, retry_unsafe_methods=True,
            retry_after_statuses=frozenset({403})), sleep=self.sleep)

    def __repr__(self) -> str:
        return f"GitHubClient(api_url={self.api_url!r}, token={'set' if self.token else None})"

    # -- helpers --------------------------------------------------------------------------
    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """Absolute URL of API ``path`` (``/repos/o/r/...``) with query ``params``."""
        if path.startswith(("http://", "https://")):
            full = path
        else:
            full = self.api_url + "/" + path.lstrip("/")
        if params:
            sep = "&" if urllib.parse.urlsplit(full).query else "?"
            full += sep + urllib.parse.urlencode(params)
        return full

    def redact(self, text: str) -> str:
        """``text`` with every occurrence of the token replaced."""
        if self.token and len(self.token) >= 4:
            return text.replace(self.token, REDACTED)
        return text

    def _describe(self, method: str, url: str) -> str:
        path = urllib.parse.urlsplit(url).path
        base_path = urllib.parse.urlsplit(self.api_url).path
        if base_path and path.startswith(base_path):
            path = path[len(base_path):] or "/"
        return self.redact(f"{method} {path}")

    # -- calls ----------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None,
                params: Mapping[str, Any] | None = None) -> Response:
        """One API call with retries; :class:`GitHubError` when it does not succeed."""
        url = self.url(path, params)
        what = self._describe(method, url)
        headers = {"Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": API_VERSION, "User-Agent": self.user_agent}
        if self.token and _origin(url) == _origin(self.api_url):
            # The session drops it on a redirect to another origin.
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = self._http.call(method, url, json_body=body, headers=headers,
                                   timeout_s=self.timeout_s,
                                   follow_redirects=self.follow_redirects)
        except HttpError as exc:
            raise self._error(what, exc) from None
        try:
            payload = json.loads(resp.content) if resp.content.strip() else None
        except ValueError:
            raise GitHubError(f"{what} returned a body that is not JSON (HTTP "
                              f"{resp.status_code}); check GITHUB_API_URL",
                              resp.status_code) from None
        headers_seen = {k.lower(): v for k, v in resp.headers.items()}
        return Response(resp.status_code, headers_seen, payload, resp.url)

    def _error(self, what: str, exc: HttpError) -> GitHubError:
        """The :class:`GitHubError` for a call that failed as ``exc`` says."""
        status, resp = exc.status, exc.response
        if status is None or resp is None:
            detail = self.redact(exc.detail)
            return GitHubError(f"{what} failed after {exc.attempts} attempts ({detail})",
                               detail=detail)
        message = self._error_message(resp)
        detail = f"HTTP {status}" + (f": {message}" if message else "")
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        retryable = status in RETRY_STATUSES or (status == 403 and retry_after is not None)
        if retryable and (retry_after is None or retry_after <= self.max_retry_after_s):
            return GitHubError(f"{what} failed after {exc.attempts} attempts ({detail})",
                               status, detail=detail)
        # Final at the first answer: a refusal, or a wait longer than this client sits
        # through (primary rate limit: X-RateLimit-Remaining 0; secondary: Retry-After).
        rate_limited = (resp.headers.get("X-RateLimit-Remaining") == "0"
                        or retry_after is not None)
        if rate_limited:
            detail += " (rate limit exhausted)"
        cls = (GitHubPermissionError
               if status in (401, 403, 404) and not rate_limited else GitHubError)
        return cls(f"{what} failed ({detail})", status, detail=detail,
                   rate_limited=rate_limited)

    def _error_message(self, resp: requests.Response) -> str:
        raw = resp.content
        try:
            message = json.loads(raw).get("message", "")
        except (ValueError, AttributeError):
            message = raw.decode("utf-8", errors="replace")
        return self.redact(" ".join(str(message).split())[:200])

    def paginate(self, path: str, params: Mapping[str, Any] | None = None,
                 per_page: int = 100) -> Iterator[Any]:
        """Every item of a list endpoint, following ``Link: rel="next"`` page by page."""
        url: str | None = self.url(path, {"per_page": per_page, **(params or {})})
        for _ in range(MAX_PAGES):
            if url is None:
                return
            if _origin(url) != _origin(self.api_url):
                raise GitHubError(f"{self._describe('GET', path)}: the next page points to "
                                  "another host; stopped following it")
            page = self.request("GET", url)
            if not isinstance(page.data, list):
                raise GitHubError(f"{self._describe('GET', url)} did not return a list")
            yield from page.data
            url = page.link("next")
        raise GitHubError(f"{self._describe('GET', path)}: more than {MAX_PAGES} pages; "
                          "stopped")

