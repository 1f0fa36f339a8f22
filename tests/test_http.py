"""``mlflow_kpigate.core.http``: retries, Retry-After, methods, redirects, against loopback.

The servers are ``pytest_httpserver.HTTPServer`` instances on 127.0.0.1; the tests count
the requests they received. Waits between tries are recorded by an injected ``sleep``
instead of slept, so no assertion depends on time.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import time
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer

from mlflow_kpigate.core.http import (
    HttpError,
    RetryingSession,
    RetryPolicy,
    attempts_made,
    parse_retry_after,
    safe_url,
)

TOKEN = "ghs_helperTestToken0123456789"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[HTTPServer, HTTPServer]]:
    """Two loopback servers (two origins) for the module."""
    started = [HTTPServer(host="127.0.0.1", port=0) for _ in range(2)]
    for server in started:
        server.start()
    try:
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def server(servers: tuple[HTTPServer, HTTPServer]) -> Iterator[HTTPServer]:
    for each in servers:
        each.clear()
    yield servers[0]
    for each in servers:
        each.clear()


@pytest.fixture
def other(servers: tuple[HTTPServer, HTTPServer], server: HTTPServer) -> HTTPServer:
    return servers[1]


def session(slept: list[float], **policy: object) -> RetryingSession:
    return RetryingSession(RetryPolicy(**policy), sleep=slept.append)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_503_is_retried_then_the_answer_returned(server):
    for status in (503, 503, 200):
        server.expect_ordered_request("/flaky").respond_with_json({"status": status},
                                                                  status=status)
    slept: list[float] = []
    response = session(slept, attempts=3, backoff_s=0.5).call(
        "GET", server.url_for("/flaky"), timeout_s=5)
    assert response.json() == {"status": 200}
    assert len(server.log) == 3
    assert attempts_made(response) == 3
    assert slept == [0.5, 1.0]  # backoff before the first retry too


def test_gives_up_after_the_bound_with_one_line_naming_the_url(server):
    server.expect_request("/down").respond_with_data("busy", status=503)
    slept: list[float] = []
    url = server.url_for("/down") + f"?access_token={TOKEN}"
    with pytest.raises(HttpError) as info:
        session(slept, attempts=4, backoff_s=0.25).call(
            "GET", url, timeout_s=5, headers={"Authorization": f"Bearer {TOKEN}"})
    message = str(info.value)
    assert message == (f"GET {server.url_for('/down')} failed after 4 attempts (HTTP 503)")
    assert "\n" not in message
    assert TOKEN not in message
    assert (info.value.status, info.value.attempts) == (503, 4)
    assert len(server.log) == 4
    assert slept == [0.25, 0.5, 1.0]


def test_connection_errors_are_retried_for_every_method_and_name_the_cause():
    slept: list[float] = []
    url = f"http://user:{TOKEN}@127.0.0.1:{closed_port()}/hook?key={TOKEN}"
    with pytest.raises(HttpError) as info:
        session(slept, attempts=3).call("POST", url, timeout_s=5, json_body={"a": 1})
    # the connection was never made, so even a POST is safe to try again
    assert slept == [0.5, 1.0]
    assert info.value.status is None
    assert "failed after 3 attempts (ConnectionRefusedError" in str(info.value)
    assert TOKEN not in str(info.value)
    assert "user" not in str(info.value)


def test_retry_warnings_do_not_log_the_path(caplog):
    secret = f"/services/{TOKEN}"
    with caplog.at_level(logging.INFO), pytest.raises(HttpError):
        session([], attempts=2).call(
            "GET", f"http://127.0.0.1:{closed_port()}{secret}", timeout_s=5)
    assert "HTTP attempt 1 failed (NewConnectionError); retrying in 0.5s" in caplog.text
    assert TOKEN not in caplog.text


def test_429_waits_what_retry_after_asks(server):
    server.expect_ordered_request("/limited").respond_with_data(
        "", status=429, headers={"Retry-After": "2"})
    server.expect_ordered_request("/limited").respond_with_data("ok")
    slept: list[float] = []
    response = session(slept, backoff_s=0.5).call("GET", server.url_for("/limited"),
                                                   timeout_s=5)
    assert response.text == "ok"
    assert slept == [2.0]
    assert len(server.log) == 2


def test_retry_after_is_really_slept_by_default(server):
    server.expect_ordered_request("/limited").respond_with_data(
        "", status=429, headers={"Retry-After": "0"})
    server.expect_ordered_request("/limited").respond_with_data("ok")
    response = RetryingSession(RetryPolicy(backoff_s=30.0)).call(
        "GET", server.url_for("/limited"), timeout_s=5)
    # Retry-After: 0 wins over the 30 s backoff, so this returns at once
    assert response.text == "ok"
    assert len(server.log) == 2


def test_a_longer_retry_after_than_the_bound_stops_at_once(server):
    server.expect_request("/limited").respond_with_data(
        "", status=429, headers={"Retry-After": "3600"})
    slept: list[float] = []
    with pytest.raises(HttpError) as info:
        session(slept, max_retry_after_s=10).call("GET", server.url_for("/limited"),
                                                  timeout_s=5)
    assert slept == []
    assert len(server.log) == 1
    assert info.value.status == 429
    assert "Retry-After 3600s is longer than the 10s this call waits" in str(info.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_4xx_are_not_retried(server, status):
    server.expect_request("/no").respond_with_data("", status=status,
                                                   headers={"Retry-After": "1"})
    slept: list[float] = []
    with pytest.raises(HttpError) as info:
        session(slept, attempts=3).call("GET", server.url_for("/no"), timeout_s=5)
    assert (info.value.status, info.value.attempts) == (status, 1)
    assert str(info.value) == f"GET {server.url_for('/no')} failed (HTTP {status})"
    assert len(server.log) == 1
    assert slept == []


def test_a_status_is_retried_with_retry_after_only_when_the_policy_says(server):
    server.expect_ordered_request("/secondary").respond_with_data(
        "", status=403, headers={"Retry-After": "1"})
    server.expect_ordered_request("/secondary").respond_with_data("", status=403)
    slept: list[float] = []
    with pytest.raises(HttpError) as info:
        session(slept, retry_after_statuses=frozenset({403})).call(
            "GET", server.url_for("/secondary"), timeout_s=5)
    # retried once (it asked to wait), then a plain 403 is final
    assert (info.value.status, info.value.attempts) == (403, 2)
    assert slept == [1.0]
    assert len(server.log) == 2


@pytest.mark.parametrize(("allowed", "requests"), [(False, 1), (True, 3)])
def test_post_is_retried_only_when_the_caller_allows_it(server, allowed, requests):
    server.expect_request("/hook", method="POST").respond_with_data("", status=503)
    with pytest.raises(HttpError) as info:
        session([], retry_unsafe_methods=allowed).call(
            "POST", server.url_for("/hook"), timeout_s=5, json_body={"text": "x"})
    assert len(server.log) == requests
    assert info.value.attempts == requests
    assert all(req.get_json() == {"text": "x"} for req, _ in server.log)


def test_redirects_can_be_refused(server):
    server.expect_request("/moved").respond_with_data(
        "", status=302, headers={"Location": server.url_for("/elsewhere")})
    with pytest.raises(HttpError) as info:
        session([]).call("POST", server.url_for("/moved"), timeout_s=5,
                         follow_redirects=False)
    assert info.value.status == 302
    assert [req.path for req, _ in server.log] == ["/moved"]


def test_authorization_follows_a_redirect_only_to_the_same_origin(server, other):
    server.expect_request("/a").respond_with_data(
        "", status=307, headers={"Location": "/b"})
    server.expect_request("/b").respond_with_data(
        "", status=307, headers={"Location": other.url_for("/c")})
    other.expect_request("/c").respond_with_data("done")
    response = session([]).call("GET", server.url_for("/a"), timeout_s=5,
                                headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.text == "done"
    seen = [req.headers.get("Authorization") for req, _ in [*server.log, *other.log]]
    assert seen == [f"Bearer {TOKEN}", f"Bearer {TOKEN}", None]


def test_no_cookies_are_kept(server):
    server.expect_ordered_request("/login").respond_with_data(
        "", headers={"Set-Cookie": "session=abc; Path=/"})
    server.expect_ordered_request("/next").respond_with_data("")
    http = session([])
    http.call("GET", server.url_for("/login"), timeout_s=5)
    http.call("GET", server.url_for("/next"), timeout_s=5)
    assert server.log[1][0].headers.get("Cookie") is None


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < (parse_retry_after(later) or 0) <= 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_safe_url_drops_credentials_and_query():
    assert safe_url("https://u:p@Example.com:8443/x/y?token=t#f") == "https://example.com:8443/x/y"
    assert safe_url("http://[::1]:80/") == "http://[::1]:80/"


def test_policy_is_validated():
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(backoff_s=-1)
