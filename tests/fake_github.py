"""A fake GitHub REST API on pytest-httpserver, for the reporting side's tests.

It keeps real state (comments, commit statuses, pull requests) and answers the way
GitHub does for the endpoints kpigate uses:

* ``GET  /repos/{o}/{r}/issues/{n}/comments`` — paginated (``per_page``, ``page``; at most
  ``page_size`` per page) with ``Link`` headers (``next``, ``last``, ``first``, ``prev``);
* ``POST /repos/{o}/{r}/issues/{n}/comments`` (201) and
  ``PATCH /repos/{o}/{r}/issues/comments/{id}`` (200); bodies over 65,536 characters get
  422 as on GitHub;
* ``POST /repos/{o}/{r}/statuses/{sha}`` (201);
* ``GET  /repos/{o}/{r}/commits/{sha}/pulls`` and ``GET /repos/{o}/{r}/pulls/{n}``.

Tokens: ``tokens`` maps a token to ``"write"`` or ``"read"``; an unknown or missing token
gets 401, a read-only token gets 403 ("Resource not accessible by integration") on any
write. :meth:`FakeGitHub.fail` injects 5xx answers (a number of times, or forever).
``prefix="/api/v3"`` serves the API under GitHub Enterprise Server's path. Every request is
recorded in :attr:`FakeGitHub.calls`.

Use: ``server = start_server()`` once, ``fake = serve(server)`` per test (fresh state),
``stop_server(server)`` at the end.
"""

from __future__ import annotations

import itertools
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

WRITE_TOKEN = "ghs_fakeWriteToken0123456789abcdefXYZ"
READ_TOKEN = "ghs_fakeReadOnlyToken0123456789abcdefXYZ"
REPO = "octo-org/models"
MAX_BODY = 65_536


@dataclass(frozen=True)
class Call:
    """One request the fake received (path without the API prefix)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None


@dataclass
class _Failure:
    status: int
    remaining: int | None  # None: forever
    method: str | None
    path_contains: str | None
    retry_after: str | None


@dataclass
class FakeGitHub:
    """The fake API's state and request handler; :func:`serve` puts it on a server."""

    server: HTTPServer
    prefix: str = ""
    repo: str = REPO
    page_size: int = 100
    tokens: dict[str, str] = field(default_factory=lambda: {WRITE_TOKEN: "write",
                                                            READ_TOKEN: "read"})
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    commit_pulls: dict[str, list[int]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _failures: list[_Failure] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1001))

    @property
    def url(self) -> str:
        """The API base URL, as ``GITHUB_API_URL`` would hold it."""
        return self.server.url_for(self.prefix or "/").rstrip("/")

    # -- arranging state ------------------------------------------------------------------
    def add_comment(self, number: int, body: str, user: str = "someone") -> int:
        """Put an existing comment on issue/PR ``number``; returns its id."""
        comment = self._comment(number, body, user)
        self.comments.setdefault(number, []).append(comment)
        return comment["id"]

    def add_pull(self, number: int, head_sha: str, state: str = "open") -> None:
        """A pull request with head commit ``head_sha``."""
        self.pulls[number] = {"number": number, "state": state,
                              "head": {"sha": head_sha, "ref": f"branch-{number}"},
                              "html_url": f"https://github.example/{self.repo}/pull/{number}"}

    def link_commit(self, sha: str, *numbers: int) -> None:
        """Make ``sha`` belong to pull requests ``numbers`` (for commits/{sha}/pulls)."""
        self.commit_pulls[sha] = list(numbers)

    def fail(self, status: int = 502, times: int | None = None, method: str | None = None,
             path_contains: str | None = None, retry_after: str | None = None) -> None:
        """Answer ``status`` to matching requests, ``times`` times (None: forever),
        with a ``Retry-After`` header when given (as for GitHub's rate limits)."""
        self._failures.append(_Failure(status, times, method, path_contains, retry_after))

    # -- inspecting -----------------------------------------------------------------------
    def writes(self, method: str | None = None) -> list[Call]:
        """Recorded POST/PATCH calls (or only ``method``)."""
        wanted = (method,) if method else ("POST", "PATCH", "PUT", "DELETE")
        return [c for c in self.calls if c.method in wanted]

    # -- serving --------------------------------------------------------------------------
    def _comment(self, number: int, body: str, user: str) -> dict[str, Any]:
        cid = next(self._ids)
        return {"id": cid, "body": body, "user": {"login": user},
                "html_url": f"https://github.example/{self.repo}/pull/{number}#issuecomment-{cid}",
                "issue_number": number}

    def handle(self, request: Request) -> Response:
        path = request.path
        body: Any = None
        if request.data:
            try:
                body = json.loads(request.data)
            except ValueError:
                return _json({"message": "Problems parsing JSON"}, 400)
        auth = request.headers.get("Authorization")
        if not path.startswith(self.prefix + "/"):
            self.calls.append(Call(request.method, path, dict(request.args), body, auth))
            return _json({"message": "Not Found"}, 404)
        path = path[len(self.prefix):]
        self.calls.append(Call(request.method, path, dict(request.args), body, auth))
        for failure in self._failures:
            if (failure.remaining is None or failure.remaining > 0) and \
                    (failure.method is None or failure.method == request.method) and \
                    (failure.path_contains is None or failure.path_contains in path):
                if failure.remaining is not None:
                    failure.remaining -= 1
                headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
                message = "Server Error" if failure.status >= 500 else "rate limited"
                return _json({"message": message}, failure.status, headers)
        token = None
        if auth and auth.split(" ", 1)[0] in ("Bearer", "token") and " " in auth:
            token = auth.split(" ", 1)[1]
        access = self.tokens.get(token or "")
        if access is None:
            return _json({"message": "Bad credentials"}, 401)
        if request.method != "GET" and access != "write":
            return _json({"message": "Resource not accessible by integration"}, 403)
        prefix = f"/repos/{self.repo}/"
        if not path.startswith(prefix):
            return _json({"message": "Not Found"}, 404)
        return self._route(request, path[len(prefix):], body)

    def _route(self, request: Request, rest: str, body: Any) -> Response:
        method = request.method
        if m := re.fullmatch(r"issues/(\d+)/comments", rest):
            number = int(m.group(1))
            if method == "GET":
                return self._list_comments(request, number)
            if method == "POST":
                problem = _check_body(body)
                if problem:
                    return _json({"message": problem}, 422)
                comment = self._comment(number, body["body"], "github-actions[bot]")
                self.comments.setdefault(number, []).append(comment)
                return _json(comment, 201)
        if (m := re.fullmatch(r"issues/comments/(\d+)", rest)) and method == "PATCH":
            for comments in self.comments.values():
                for comment in comments:
                    if comment["id"] == int(m.group(1)):
                        problem = _check_body(body)
                        if problem:
                            return _json({"message": problem}, 422)
                        comment["body"] = body["body"]
                        return _json(comment, 200)
            return _json({"message": "Not Found"}, 404)
        if (m := re.fullmatch(r"statuses/([0-9a-fA-F]+)", rest)) and method == "POST":
            if not isinstance(body, dict) or body.get("state") not in (
                    "error", "failure", "pending", "success"):
                return _json({"message": "Validation Failed"}, 422)
            if len(body.get("description") or "") > 140:
                return _json({"message": "description is too long"}, 422)
            status = {"id": next(self._ids), **body}
            self.statuses.setdefault(m.group(1), []).append(status)
            return _json(status, 201)
        if (m := re.fullmatch(r"commits/([0-9a-fA-F]+)/pulls", rest)) and method == "GET":
            numbers = self.commit_pulls.get(m.group(1), [])
            return _json([self.pulls[n] for n in numbers if n in self.pulls], 200)
        if (m := re.fullmatch(r"pulls/(\d+)", rest)) and method == "GET":
            pull = self.pulls.get(int(m.group(1)))
            return _json(pull, 200) if pull else _json({"message": "Not Found"}, 404)
        return _json({"message": "Not Found"}, 404)

    def _list_comments(self, request: Request, number: int) -> Response:
        try:
            per_page = min(int(request.args.get("per_page", 30)), 100, self.page_size)
            page = int(request.args.get("page", 1))
        except ValueError:
            return _json({"message": "Invalid pagination"}, 422)
        comments = self.comments.get(number, [])
        pages = max(1, -(-len(comments) // per_page))
        items = comments[(page - 1) * per_page: page * per_page]
        base = self.server.url_for(request.path)

        def at(p: int) -> str:
            query = urllib.parse.urlencode({"per_page": per_page, "page": p})
            return f"<{base}?{query}>"

        links = []
        if page < pages:
            links += [f'{at(page + 1)}; rel="next"', f'{at(pages)}; rel="last"']
        if page > 1:
            links += [f'{at(page - 1)}; rel="prev"', f'{at(1)}; rel="first"']
        headers = {"Link": ", ".join(links)} if links else {}
        return _json(items, 200, headers)


def _check_body(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("body"), str):
        return "Invalid request: body is required"
    if len(body["body"]) > MAX_BODY:
        return f"Validation Failed: body is too long (maximum is {MAX_BODY} characters)"
    return None


def _json(data: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data), status=status, headers=headers or {},
                    content_type="application/json; charset=utf-8")


def serve(server: HTTPServer, prefix: str = "", **kwargs: Any) -> FakeGitHub:
    """A fresh fake (no comments, no calls) answering every request ``server`` gets.

    Replaces whatever ``server`` answered before, so one running server can back a new
    fake in every test.
    """
    server.clear()
    fake = FakeGitHub(server, prefix=prefix, **kwargs)
    server.expect_request(re.compile(".*")).respond_with_handler(fake.handle)
    return fake


def start_server() -> HTTPServer:
    """A running pytest-httpserver on 127.0.0.1 and a free port; :func:`stop_server` it."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    return server


def stop_server(server: HTTPServer) -> None:
    """Stop ``server`` (and forget its handlers)."""
    server.clear()
    if server.is_running():
        server.stop()
