"""A small GitHub REST client: token auth, pagination through ``Link``, bounded retries.

Built on the standard library so the reporting step needs nothing beyond the package.

* The base URL is ``GITHUB_API_URL`` (``https://api.github.com`` by default; GitHub
  Enterprise Server uses ``https://HOST/api/v3``). Paths are joined under it, so a GHES
  path prefix is kept.
* The token travels in the ``Authorization`` header only, and only to the API's own
  origin: a ``Link`` or redirect that points elsewhere is not sent the token. It never
  appears in an exception's text (any echo of it in a response is redacted).
* Connection errors, 5xx and 429 responses are retried with exponential backoff, a
  bounded number of times; ``Retry-After`` is honoured when it asks for a short wait.
  Every other 4xx is final and raised at once as :class:`GitHubError` (a 401/403/404 as
  :class:`GitHubPermissionError`, which callers turn into a warning about the token).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from mlflow_kpigate.core.errors import KpigateError, UsageError

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "mlflow-kpigate"
#: Longest ``Retry-After`` the client waits for; a longer one fails the call instead.
MAX_RETRY_AFTER_S = 60.0
#: Pages followed at most by :meth:`GitHubClient.paginate` (100 items each by default).
MAX_PAGES = 100
REDACTED = "***"


class GitHubError(KpigateError):
    """A GitHub API call failed; ``status`` is the HTTP status (None: no response)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


class _SameOriginAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects, re-sending the token only to the origin it was meant for."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Message, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        auth = req.unredirected_hdrs.get("Authorization")
        if new is not None and auth and _origin(newurl) == _origin(req.full_url):
            new.add_unredirected_header("Authorization", auth)
        return new


@dataclass
class GitHubClient:
    """Calls the GitHub REST API as the holder of ``token``.

    ``attempts`` bounds the tries per call (first try included); the waits between them
    are ``backoff_s``, ``2 × backoff_s``, … ``sleep`` is what waits (``time.sleep``).
    """

    token: str | None
    api_url: str = DEFAULT_API_URL
    attempts: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 15.0
    sleep: Callable[[float], None] = time.sleep
    _opener: urllib.request.OpenerDirector = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.api_url = check_api_url(self.api_url)
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._opener = urllib.request.build_opener(_SameOriginAuthRedirect())

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
        data = None if body is None else json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(self.attempts):
            wait = self.backoff_s * (2 ** attempt)
            try:
                return self._once(method, url, data)
            except urllib.error.HTTPError as exc:
                status = exc.code
                message = self._error_message(exc)
                last = f"HTTP {status}" + (f": {message}" if message else "")
                retry_after = _retry_after(exc.headers)
                retryable = status >= 500 or status == 429 or (
                    status == 403 and retry_after is not None)
                if not retryable or (retry_after is not None
                                     and retry_after > MAX_RETRY_AFTER_S):
                    rate_limited = (exc.headers.get("X-RateLimit-Remaining") == "0"
                                    or retry_after is not None)
                    if rate_limited:
                        last += " (rate limit exhausted)"
                    cls = (GitHubPermissionError
                           if status in (401, 403, 404) and not rate_limited else GitHubError)
                    raise cls(f"{what} failed ({last})", status) from None
                if retry_after is not None:
                    wait = retry_after
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = self.redact(f"{type(exc).__name__}: {reason}")
            if attempt + 1 < self.attempts:
                self.sleep(wait)
        raise GitHubError(f"{what} failed after {self.attempts} attempts ({last})")

    def _once(self, method: str, url: str, data: bytes | None) -> Response:
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/vnd.github+json")
        req.add_header("X-GitHub-Api-Version", API_VERSION)
        req.add_header("User-Agent", USER_AGENT)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token and _origin(url) == _origin(self.api_url):
            # Unredirected: a redirect elsewhere never carries it (see the handler above).
            req.add_unredirected_header("Authorization", f"Bearer {self.token}")
        with self._opener.open(req, timeout=self.timeout_s) as resp:
            raw = resp.read()
            headers = {k.lower(): v for k, v in resp.headers.items()}
            status = int(resp.status)
            final_url = resp.geturl()
        try:
            payload = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            raise GitHubError(f"{self._describe(method, url)} returned a body that is not "
                              f"JSON (HTTP {status}); check GITHUB_API_URL", status) from None
        return Response(status, headers, payload, final_url)

    def _error_message(self, exc: urllib.error.HTTPError) -> str:
        try:
            raw = exc.read()
        except OSError:
            return ""
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


def _retry_after(headers: Mapping[str, str] | Message | None) -> float | None:
    if headers is None:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
