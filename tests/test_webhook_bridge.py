"""``kpigate webhook-bridge``: signatures, routing, and real deliveries from a real MLflow.

The fake GitHub is a ``pytest_httpserver.HTTPServer`` on 127.0.0.1 answering the one
endpoint the bridge calls, ``POST /repos/{owner}/{repo}/dispatches`` → 204. The end-to-end
tests run one ``mlflow server`` for the module with webhooks enabled for local http
targets; MLflow signs and delivers asynchronously, so the tests poll the bridge's
``/health`` counters until every expected delivery was handled (with a deadline that only
bounds a wedged run) and then assert exactly what GitHub received.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner
from conftest import MlflowServer
from pytest_httpserver import HTTPServer

from mlflow_kpigate.cli.webhook_bridge import webhook_bridge_command
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.webhooks import (
    ALIAS_CREATED,
    TAG_SET,
    VERSION_CREATED,
    Bridge,
    BridgeConfig,
    BridgeServer,
    DispatchError,
    GitHubDispatcher,
    Rejected,
    ReplayGuard,
    check_timestamp,
    parse_event,
    pr_number_from,
    route,
    sign,
    signature_matches,
    verify_delivery,
)

SECRET = "s3cret-for-tests-Ünïcode"
TOKEN = "ghp_test-token-never-logged"
REPO = "acme/fraud-models"
DISPATCH_PATH = f"/repos/{REPO}/dispatches"
_DEADLINE_S = 60.0  # bounds a wedged run only; no assertion depends on speed


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def independent_signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature as documented: v1, + base64(HMAC-SHA256(secret, "id.ts.body"))."""
    content = f"{delivery_id}.{timestamp}.{body.decode('utf-8')}".encode()
    digest = hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def envelope(entity: str, action: str, **data: Any) -> bytes:
    return json.dumps({"entity": entity, "action": action,
                       "timestamp": "2025-01-01T00:00:00+00:00", "data": data}).encode()


def version_created(model: str = "fraud", version: str = "2",
                    tags: dict[str, str] | None = None) -> bytes:
    return envelope("model_version", "created", name=model, version=version,
                    source="models:/m-1", run_id=None, tags=tags or {}, description=None)


def alias_created(model: str = "fraud", alias: str = "challenger", version: str = "2") -> bytes:
    return envelope("model_version_alias", "created", name=model, alias=alias, version=version)


def tag_set(model: str = "fraud", key: str = "kpigate.status", value: str = "shadow") -> bytes:
    return envelope("model_version_tag", "set", name=model, version="2", key=key, value=value)


def signed_headers(body: bytes, *, secret: str = SECRET, delivery_id: str | None = None,
                   timestamp: int | None = None) -> dict[str, str]:
    delivery_id = delivery_id or str(uuid.uuid4())
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
            "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": independent_signature(secret, delivery_id, ts, body)}


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def dispatches(github: HTTPServer, path: str = DISPATCH_PATH) -> list[dict[str, Any]]:
    return [json.loads(req.get_data()) for req, _ in github.log if req.path == path]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config(github: HTTPServer, **overrides: Any) -> BridgeConfig:
    values: dict[str, Any] = {"repo": REPO, "secret": SECRET, "token": TOKEN,
                              "api_url": github.url_for("").rstrip("/"),
                              "retry_backoff": 0.0}
    values.update(overrides)
    return BridgeConfig(**values)


@pytest.fixture(scope="module")
def github_server() -> Iterator[HTTPServer]:
    """One fake GitHub REST API on 127.0.0.1 for the module (stopped at its end)."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def github(github_server: HTTPServer) -> Iterator[HTTPServer]:
    """The fake GitHub with no handlers and an empty request log; each test adds its own."""
    github_server.clear()
    yield github_server
    github_server.clear()


@pytest.fixture
def bridge_at(github: HTTPServer) -> Iterator[Callable[..., tuple[str, Bridge]]]:
    """Start a bridge (config overrides as keywords) on a free port; stop it at teardown."""
    started: list[BridgeServer] = []

    def start(**overrides: Any) -> tuple[str, Bridge]:
        bridge = Bridge(make_config(github, **overrides))
        server = BridgeServer(bridge, "127.0.0.1", 0).start()
        started.append(server)
        return server.url, bridge

    try:
        yield start
    finally:
        for server in started:
            server.stop()
    assert not [t for t in threading.enumerate() if t.name == "kpigate-webhook-bridge"]


# --------------------------------------------------------------------------------------
# Signature (pure)
# --------------------------------------------------------------------------------------


def test_signature_equals_an_independently_computed_hmac():
    body = version_created(tags={"note": "é ✓"})
    expected = independent_signature(SECRET, "d-1", "1700000000", body)
    assert sign(SECRET, "d-1", 1700000000, body) == expected
    assert signature_matches(SECRET, "d-1", "1700000000", body, expected)


@pytest.mark.parametrize(("field", "value"), [
    ("secret", "other-secret"), ("delivery_id", "d-2"), ("timestamp", "1700000001"),
    ("body", b'{"entity": "model_version"}'),
])
def test_signature_fails_when_any_signed_part_differs(field, value):
    parts = {"secret": SECRET, "delivery_id": "d-1", "timestamp": "1700000000",
             "body": version_created()}
    header = independent_signature(parts["secret"], parts["delivery_id"], parts["timestamp"],
                                   parts["body"])
    parts[field] = value
    assert not signature_matches(parts["secret"], parts["delivery_id"], parts["timestamp"],
                                 parts["body"], header)


def test_signature_accepts_what_mlflow_itself_signs():
    delivery = pytest.importorskip("mlflow.webhooks.delivery")
    signer = getattr(delivery, "_generate_hmac_signature", None)
    if signer is None:
        pytest.skip("this MLflow has no _generate_hmac_signature")
    payload = version_created(tags={"github.pr": "7"}).decode()
    header = signer(SECRET, "d-9", "1700000000", payload)
    assert signature_matches(SECRET, "d-9", "1700000000", payload.encode(), header)
    assert not signature_matches("wrong", "d-9", "1700000000", payload.encode(), header)


@pytest.mark.parametrize("header", [
    "", "v1,", "v1,not base64!", "v2,{sig}", "{sig_b64}", "v1,{sig}x", "V1,{sig}",
])
def test_malformed_signature_headers_do_not_match(header):
    body = b"{}"
    good = independent_signature(SECRET, "d", "1", body)
    text = header.format(sig=good.removeprefix("v1,"), sig_b64=good.removeprefix("v1,"))
    assert not signature_matches(SECRET, "d", "1", body, text)


def test_any_of_several_signatures_may_match_during_secret_rotation():
    body = b"{}"
    old = independent_signature("old", "d", "1", body)
    new = independent_signature(SECRET, "d", "1", body)
    assert signature_matches(SECRET, "d", "1", body, f"{old} {new}")
    assert not signature_matches(SECRET, "d", "1", body, f"{old} {old}")


def test_body_that_is_not_utf8_is_verified_as_bytes():
    body = b"\xff\xfe not utf-8"
    header = sign(SECRET, "d", "1", body)
    assert signature_matches(SECRET, "d", "1", body, header)
    assert not signature_matches(SECRET, "d", "1", body + b"!", header)


def test_timestamp_window():
    now = 1_700_000_000.0
    assert check_timestamp("1700000000", now, 300) == 1_700_000_000
    assert check_timestamp("1699999700", now, 300) == 1_699_999_700
    with pytest.raises(Rejected, match="301s old") as stale:
        check_timestamp("1699999699", now, 300)
    assert stale.value.status == 401
    with pytest.raises(Rejected, match="in the future") as future:
        check_timestamp("1700000301", now, 300)
    assert future.value.status == 401
    for bad in ("", "17e8", "-5", "1700000000.5", "１２３"):
        with pytest.raises(Rejected, match="not Unix seconds") as malformed:
            check_timestamp(bad, now, 300)
        assert malformed.value.status == 400


def test_verify_delivery_checks_headers_then_signature_then_age():
    body = version_created()
    headers = signed_headers(body, delivery_id="d-1", timestamp=1_700_000_000)
    signed = verify_delivery({k.lower(): v for k, v in headers.items()}, body, SECRET,
                             now=1_700_000_010, max_age=300)
    assert (signed.delivery_id, signed.timestamp, signed.body) == ("d-1", 1_700_000_000, body)
    for missing in ("X-MLflow-Signature", "X-MLflow-Delivery-Id", "X-MLflow-Timestamp"):
        partial = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(Rejected, match=f"{missing}: header missing"):
            verify_delivery(partial, body, SECRET, now=1_700_000_010, max_age=300)
    # A forged request learns nothing about the clock: signature is checked first.
    with pytest.raises(Rejected, match="signature does not match"):
        verify_delivery(headers, body, "wrong", now=1_800_000_000, max_age=300)
    with pytest.raises(Rejected, match="old"):
        verify_delivery(headers, body, SECRET, now=1_800_000_000, max_age=300)


# --------------------------------------------------------------------------------------
# Events, routing and replay memory (pure)
# --------------------------------------------------------------------------------------


def _config(**overrides: Any) -> BridgeConfig:
    return BridgeConfig(**{"repo": REPO, "secret": SECRET, "token": TOKEN, **overrides})


def test_parse_event_reads_mlflow_envelopes():
    created = parse_event(version_created(tags={"github.pr": "12"}))
    assert (created.event, created.model, created.version) == (VERSION_CREATED, "fraud", "2")
    assert created.tags == {"github.pr": "12"}
    alias = parse_event(alias_created())
    assert (alias.event, alias.alias, alias.version) == (ALIAS_CREATED, "challenger", "2")
    tag = parse_event(tag_set())
    assert (tag.event, tag.tag_key) == (TAG_SET, "kpigate.status")
    other = parse_event(envelope("prompt", "created", name="p", tags={}))
    assert (other.event, other.model) == ("prompt.created", "p")


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "body: not JSON"),
    (b"\xff", "body: not JSON"),
    (b"[1, 2]", "body: not a JSON object"),
    (b'{"action": "created", "data": {}}', "body.entity"),
    (b'{"entity": "model_version", "action": "created"}', "body.data"),
    (envelope("model_version", "created", version="2"), "body.data.name"),
    (envelope("model_version", "created", name="m"), "body.data.version"),
    (envelope("model_version_alias", "created", name="m", version="2"), "body.data.alias"),
    (envelope("model_version", "created", name="m", version="2", tags=["x"]),
     "body.data.tags"),
])
def test_parse_event_names_the_missing_or_malformed_field(body, field):
    with pytest.raises(Rejected, match=field.replace(".", r"\.")) as info:
        parse_event(body)
    assert info.value.status == 400


@pytest.mark.parametrize(("value", "number"), [
    ("42", 42), ("#42", 42), (" 7 ", 7), ("https://github.com/acme/m/pull/42", 42),
    ("https://github.com/acme/m/pull/42/", 42), ("0", None), ("forty-two", None),
    ("42abc", None), ("", None), (None, None),
])
def test_pr_number_from_tag_values(value, number):
    assert pr_number_from(value) == number


def test_route_builds_the_client_payload():
    forward = route(parse_event(version_created(tags={"github.pr": "#5"})), _config(), "d-1")
    assert forward.payload == {"model": "fraud", "version": "2", "pr_number": 5,
                               "source": "mlflow-webhook", "delivery_id": "d-1"}
    alias = route(parse_event(alias_created()), _config(), "d-2")
    assert alias.payload == {"model": "fraud", "version": "2", "alias": "challenger",
                             "source": "mlflow-webhook", "delivery_id": "d-2"}
    custom = route(parse_event(version_created(tags={"pr": "9", "github.pr": "1"})),
                   _config(pr_tag="pr"), "d-3")
    assert custom.payload is not None
    assert custom.payload["pr_number"] == 9


def test_route_leaves_out_a_pr_tag_that_is_not_a_number(caplog):
    with caplog.at_level(logging.WARNING, logger="mlflow_kpigate.webhook_bridge"):
        decision = route(parse_event(version_created(tags={"github.pr": "soon"})), _config(),
                         "d-1")
    assert decision.payload is not None
    assert "pr_number" not in decision.payload
    assert "not a pull-request number" in caplog.text


@pytest.mark.parametrize(("body", "overrides", "reason"), [
    (tag_set(), {}, "never forwarded"),
    (envelope("registered_model", "created", name="fraud", tags={}), {}, "not forwarded"),
    (envelope("model_version_alias", "deleted", name="fraud", alias="x"), {},
     "not forwarded"),
    (version_created(model="other"), {"models": frozenset({"fraud"})}, "not selected"),
    (alias_created(alias="champion"), {"aliases": frozenset({"challenger"})},
     "not selected (--alias)"),
    (version_created(), {"events": frozenset({ALIAS_CREATED})}, "not forwarded"),
])
def test_route_ignores_unselected_events(body, overrides, reason):
    decision = route(parse_event(body), _config(**overrides), "d")
    assert decision.payload is None
    assert reason in decision.reason


def test_alias_filter_does_not_hold_back_version_events():
    config = _config(models=frozenset({"fraud"}), aliases=frozenset({"challenger"}))
    assert route(parse_event(version_created()), config, "d").payload is not None
    assert route(parse_event(alias_created()), config, "d").payload is not None


def test_replay_guard_remembers_ids_for_the_window_in_bounded_memory():
    guard = ReplayGuard(window=300, capacity=2)
    guard.claim("a", timestamp=1000, now=1000)
    with pytest.raises(Rejected, match="already received") as replay:
        guard.claim("a", timestamp=1000, now=1200)
    assert replay.value.status == 401
    guard.claim("b", timestamp=1100, now=1200)
    with pytest.raises(Rejected, match="too many deliveries") as full:
        guard.claim("c", timestamp=1200, now=1200)
    assert full.value.status == 503
    # "a" expires at 1300 (its timestamp + window): after that a replay is stale anyway.
    guard.claim("c", timestamp=1301, now=1301)
    assert len(guard) == 2
    guard.release("c")
    guard.claim("c", timestamp=1301, now=1301)


def test_config_errors_name_the_option_and_the_fix():
    cases = {
        "--repo": {"repo": "not a repo"},
        "--secret-env": {"secret": ""},
        "GITHUB_TOKEN": {"token": ""},
        "GITHUB_API_URL": {"api_url": "ftp://example.com"},
        "--event-type": {"event_type": "x" * 101},
        "--event:": {"events": frozenset({"model_version_tag.set"})},
        "--max-age": {"max_age": 0},
    }
    for name, override in cases.items():
        with pytest.raises(UsageError, match=name.replace("-", r"\-")) as info:
            _config(**override)
        assert "\n" not in str(info.value)
    assert SECRET not in repr(_config())
    assert TOKEN not in repr(_config())


# --------------------------------------------------------------------------------------
# The bridge over HTTP, with deliveries sent directly
# --------------------------------------------------------------------------------------


def test_health_and_a_forwarded_delivery(github, bridge_at, caplog):
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=204)
    url, _ = bridge_at()
    assert get_json(f"{url}/health") == {"status": "ok", "forwarded": 0, "ignored": 0,
                                         "rejected": 0, "failed": 0}
    body = version_created(tags={"github.pr": "42"})
    headers = signed_headers(body)
    with caplog.at_level(logging.DEBUG):
        status, reply = post(f"{url}/webhook", body, headers)
    assert (status, reply["status"]) == (200, "forwarded")
    [request] = [req for req, _ in github.log]
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert json.loads(request.get_data()) == {
        "event_type": "kpigate-rollout",
        "client_payload": {"model": "fraud", "version": "2", "pr_number": 42,
                           "source": "mlflow-webhook",
                           "delivery_id": headers["X-MLflow-Delivery-Id"]}}
    assert get_json(f"{url}/health")["forwarded"] == 1
    assert SECRET not in caplog.text
    assert TOKEN not in caplog.text


def _rejections(body: bytes) -> dict[str, tuple[bytes, dict[str, str], int]]:
    good = signed_headers(body)
    forged = {**good, "X-MLflow-Signature": "v1," + base64.b64encode(b"x" * 32).decode()}
    stale = signed_headers(body, timestamp=int(time.time()) - 3600)
    future = signed_headers(body, timestamp=int(time.time()) + 3600)
    unsigned = {k: v for k, v in good.items() if k != "X-MLflow-Signature"}
    garbage = b'{"entity": "model_version", "action": "created", "data": '
    return {
        "forged signature": (body, forged, 401),
        "wrong secret": (body, signed_headers(body, secret="not-the-secret"), 401),
        "body changed after signing": (body.replace(b'"2"', b'"3"'), good, 401),
        "stale timestamp": (body, stale, 401),
        "future timestamp": (body, future, 401),
        "unsigned": (body, unsigned, 401),
        "malformed body": (garbage, signed_headers(garbage), 400),
        "missing field": (envelope("model_version", "created", name="fraud"),
                          signed_headers(envelope("model_version", "created", name="fraud")),
                          400),
    }


@pytest.mark.parametrize("case", list(_rejections(b"{}")))
def test_bad_deliveries_are_rejected_and_nothing_is_forwarded(github, bridge_at, case):
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=204)
    url, bridge = bridge_at()
    body, headers, expected = _rejections(version_created())[case]
    status, reply = post(f"{url}/webhook", body, headers)
    assert (status, reply["status"]) == (expected, "rejected")
    assert "\n" not in reply["reason"]
    assert SECRET not in reply["reason"]
    assert github.log == []
    assert bridge.counts()["rejected"] == 1


def test_a_replayed_delivery_is_rejected(github, bridge_at):
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=204)
    url, _ = bridge_at()
    body = alias_created()
    headers = signed_headers(body)
    assert post(f"{url}/webhook", body, headers)[0] == 200
    status, reply = post(f"{url}/webhook", body, headers)
    assert status == 401
    assert "already received" in reply["reason"]
    assert len(dispatches(github)) == 1


def test_tag_events_and_unselected_models_are_acknowledged_not_forwarded(github, bridge_at):
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=204)
    url, bridge = bridge_at(models=frozenset({"fraud"}))
    for body in (tag_set(), version_created(model="churn")):
        status, reply = post(f"{url}/webhook", body, signed_headers(body))
        assert (status, reply["status"]) == (200, "ignored")
    assert github.log == []
    assert bridge.counts() == {"forwarded": 0, "ignored": 2, "rejected": 0, "failed": 0}


def test_github_5xx_is_retried(github, bridge_at):
    github.expect_ordered_request(DISPATCH_PATH, method="POST").respond_with_data("", 502)
    github.expect_ordered_request(DISPATCH_PATH, method="POST").respond_with_data("", 503)
    github.expect_ordered_request(DISPATCH_PATH, method="POST").respond_with_data("", 204)
    url, _ = bridge_at()
    body = version_created()
    status, reply = post(f"{url}/webhook", body, signed_headers(body))
    assert (status, reply["status"]) == (200, "forwarded")
    assert len(dispatches(github)) == 3
    github.check_assertions()


def test_exhausted_retries_answer_502_and_mlflows_retry_of_the_same_delivery_succeeds(
        github, bridge_at):
    github.expect_oneshot_request(DISPATCH_PATH, method="POST").respond_with_data("", 500)
    github.expect_oneshot_request(DISPATCH_PATH, method="POST").respond_with_data("", 500)
    url, bridge = bridge_at(dispatch_attempts=2)
    body = version_created()
    headers = signed_headers(body)
    status, reply = post(f"{url}/webhook", body, headers)
    assert (status, reply["status"]) == (502, "failed")
    assert "after 2 attempts (HTTP 500)" in reply["reason"]
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=204)
    status, reply = post(f"{url}/webhook", body, headers)  # MLflow resends the same delivery
    assert (status, reply["status"]) == (200, "forwarded")
    assert bridge.counts()["failed"] == 1
    assert bridge.counts()["forwarded"] == 1


def test_github_4xx_is_not_retried(github, bridge_at):
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=404)
    url, _ = bridge_at()
    body = version_created()
    status, reply = post(f"{url}/webhook", body, signed_headers(body))
    assert status == 502
    assert "refused the dispatch (HTTP 404)" in reply["reason"]
    assert TOKEN not in reply["reason"]
    assert len(dispatches(github)) == 1


def test_redirects_are_not_followed_with_the_token(github, bridge_at):
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data(
        "", status=302, headers={"Location": github.url_for("/elsewhere")})
    url, _ = bridge_at()
    body = version_created()
    status, reply = post(f"{url}/webhook", body, signed_headers(body))
    assert status == 502
    assert "HTTP 302, a redirect, which is not followed" in reply["reason"]
    assert [req.path for req, _ in github.log] == [DISPATCH_PATH]


def test_enterprise_server_base_url_is_honoured(github, bridge_at):
    ghes_path = f"/api/v3{DISPATCH_PATH}"
    github.expect_request(ghes_path, method="POST").respond_with_data("", status=204)
    url, _ = bridge_at(api_url=github.url_for("/api/v3/"))
    body = alias_created()
    assert post(f"{url}/webhook", body, signed_headers(body))[0] == 200
    assert [d["client_payload"]["alias"] for d in dispatches(github, ghes_path)] == ["challenger"]


def test_http_level_refusals(github, bridge_at):
    url, bridge = bridge_at(max_body_bytes=64)
    big = b"x" * 65
    status, reply = post(f"{url}/webhook", big, signed_headers(big))
    assert (status, reply["status"]) == (413, "rejected")
    assert post(f"{url}/elsewhere", b"{}", {})[0] == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{url}/webhook", timeout=10)
    assert info.value.code == 404
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST /webhook HTTP/1.0\r\nHost: x\r\n\r\n")
        assert conn.makefile("rb").readline().startswith(b"HTTP/1.0 411")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST /webhook HTTP/1.0\r\nContent-Length: 50\r\n\r\n{}")
        conn.shutdown(socket.SHUT_WR)  # hang up mid-body
        assert conn.makefile("rb").read() == b""
    assert github.log == []
    assert bridge.counts()["rejected"] == 2


def test_dispatcher_backs_off_exponentially(github):
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=500)
    delays: list[float] = []
    dispatcher = GitHubDispatcher(make_config(github, retry_backoff=0.5, dispatch_attempts=4),
                                  sleep=delays.append)
    with pytest.raises(DispatchError, match="after 4 attempts"):
        dispatcher.dispatch("kpigate-rollout", {"model": "m"})
    assert delays == [0.5, 1.0, 2.0]


def test_dispatcher_waits_a_short_retry_after_and_fails_a_long_one_at_once(github):
    github.expect_ordered_request(DISPATCH_PATH, method="POST").respond_with_data(
        "", status=429, headers={"Retry-After": "1"})
    github.expect_ordered_request(DISPATCH_PATH, method="POST").respond_with_data("", 204)
    delays: list[float] = []
    dispatcher = GitHubDispatcher(make_config(github, retry_backoff=0.5), sleep=delays.append)
    dispatcher.dispatch("kpigate-rollout", {"model": "m"})
    assert delays == [1.0]
    github.clear()
    # a secondary rate limit asking for a minute: MLflow would time out waiting, so the
    # delivery fails now (502) and MLflow retries it later
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_json(
        {"message": "You have exceeded a secondary rate limit"}, status=403,
        headers={"Retry-After": "60"})
    with pytest.raises(DispatchError, match="rate limit for the token is used up") as info:
        dispatcher.dispatch("kpigate-rollout", {"model": "m"})
    assert "exceeded a secondary rate limit" in str(info.value)
    assert TOKEN not in str(info.value)
    assert len(dispatches(github)) == 1
    assert delays == [1.0]


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def _cli_group() -> click.Group:
    """The command under a group, as the lead registers it in ``kpigate``."""
    group = click.Group("kpigate")
    group.add_command(webhook_bridge_command)
    return group


BASE_ARGS = ["--repo", REPO, "--secret-env", "KPIGATE_TEST_SECRET"]


@pytest.mark.parametrize(("args", "env", "message"), [
    ([], {}, "Missing option '--repo'"),
    (["--repo", "acme", "--secret-env", "KPIGATE_TEST_SECRET"], {},
     "--repo: 'acme' is not a repository"),
    (["--repo", REPO, "--secret-env", "NOPE_UNSET"], {}, "NOPE_UNSET is not set"),
    (BASE_ARGS, {"GITHUB_TOKEN": ""}, "GITHUB_TOKEN: not set"),
    (BASE_ARGS, {"GITHUB_API_URL": "api.github.com"}, "GITHUB_API_URL: 'api.github.com'"),
    ([*BASE_ARGS, "--port", "http"], {}, "--port: 'http' is not a port"),
    ([*BASE_ARGS, "--port", "70000"], {}, "--port: '70000' is not a port"),
    ([*BASE_ARGS, "--max-age", "soon"], {}, "--max-age: 'soon' is not a duration"),
    ([*BASE_ARGS, "--max-age", "0s"], {}, "--max-age: must be positive"),
    ([*BASE_ARGS, "--event", "model_version_tag.set"], {}, "--event: model_version_tag.set"),
    ([*BASE_ARGS, "--bogus"], {}, "No such option '--bogus'"),
])
def test_bad_options_exit_2_with_one_line(monkeypatch, args, env, message):
    monkeypatch.setenv("KPIGATE_TEST_SECRET", SECRET)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.delenv("GITHUB_API_URL", raising=False)
    monkeypatch.delenv("NOPE_UNSET", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(_cli_group(), ["webhook-bridge", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]
    assert SECRET not in result.output


def test_port_in_use_exits_2(monkeypatch):
    monkeypatch.setenv("KPIGATE_TEST_SECRET", SECRET)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(webhook_bridge_command, [
            "--repo", REPO, "--secret-env", "KPIGATE_TEST_SECRET", "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --host/--port: cannot listen on")


def test_command_serves_until_sigterm(github, tmp_path):
    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=204)
    env = {**os.environ, "KPIGATE_TEST_SECRET": SECRET, "GITHUB_TOKEN": TOKEN,
           "GITHUB_API_URL": github.url_for("").rstrip("/")}
    code = ("from mlflow_kpigate.cli.webhook_bridge import webhook_bridge_command as c; "
            "c(prog_name='kpigate webhook-bridge')")
    log = tmp_path / "bridge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, "--repo", REPO, "--secret-env",
                                 "KPIGATE_TEST_SECRET", "--port", "0", "--model", "fraud"],
                                env=env, stderr=out)
    try:
        wait_for(lambda: "listening on" in log.read_text(), "the bridge to listen")
        first = log.read_text().splitlines()[0]
        url = first.split("listening on ", 1)[1].split()[0]
        assert url.endswith("/webhook")
        body = version_created()
        assert post(url, body, signed_headers(body))[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=_DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "forwarded to acme/fraud-models" in text
    assert "stopped" in text
    assert SECRET not in text
    assert TOKEN not in text
    assert len(dispatches(github)) == 1


# --------------------------------------------------------------------------------------
# End to end: a real MLflow server delivers its webhooks to the bridge
# --------------------------------------------------------------------------------------


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def webhook_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` (SQLite) allowed to deliver webhooks to http://127.0.0.1."""
    from cryptography.fernet import Fernet

    root = tmp_path_factory.mktemp("mlflow-webhooks")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "0",  # a failed delivery shows at once
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    })
    log = root / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", port, root, process, log)
    try:
        deadline = time.monotonic() + 180
        while not _healthy(server.uri):
            assert server.running, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


def test_mlflow_webhooks_become_exactly_the_expected_dispatches(webhook_mlflow, github,
                                                                bridge_at):
    from mlflow import MlflowClient

    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=204)
    model, other = f"fraud-{uuid.uuid4().hex[:8]}", f"churn-{uuid.uuid4().hex[:8]}"
    url, bridge = bridge_at(models=frozenset({model}), aliases=frozenset({"challenger"}))
    client = MlflowClient(webhook_mlflow.uri, registry_uri=webhook_mlflow.uri)
    # Before any registry event, so MLflow's per-event webhook cache is filled after this.
    hook = client.create_webhook(
        name="kpigate-bridge", url=f"{url}/webhook", secret=SECRET,
        events=[VERSION_CREATED, ALIAS_CREATED, TAG_SET])

    client.create_registered_model(model)
    client.create_registered_model(other)
    source = "s3://kpigate-tests/model"  # only recorded: nothing reads the artifacts here
    client.create_model_version(model, source, tags={"github.pr": "17"})
    client.create_model_version(model, source)
    client.create_model_version(other, source)
    client.set_registered_model_alias(model, "challenger", "2")
    client.set_registered_model_alias(model, "champion", "1")
    client.set_model_version_tag(model, "2", "kpigate.status", "shadow")

    # 6 deliveries: 3 versions, 2 aliases, 1 tag (kpigate's); model creation is not subscribed.
    wait_for(lambda: sum(bridge.counts().values()) >= 6, "MLflow's deliveries")
    counts = bridge.counts()
    assert counts == {"forwarded": 3, "ignored": 3, "rejected": 0, "failed": 0}, counts
    received = sorted((dispatches(github)), key=lambda d: json.dumps(d, sort_keys=True))
    for item in received:
        assert item["event_type"] == "kpigate-rollout"
        assert uuid.UUID(item["client_payload"].pop("delivery_id"))
    payloads = sorted((d["client_payload"] for d in received),
                      key=lambda p: (p["version"], "alias" in p))
    assert payloads == [
        {"model": model, "version": "1", "pr_number": 17, "source": "mlflow-webhook"},
        {"model": model, "version": "2", "source": "mlflow-webhook"},
        {"model": model, "version": "2", "alias": "challenger", "source": "mlflow-webhook"},
    ]
    assert webhook_mlflow.running
    client.delete_webhook(hook.webhook_id)


def test_mlflow_delivery_with_the_wrong_secret_forwards_nothing(webhook_mlflow, github,
                                                                bridge_at):
    from mlflow import MlflowClient

    github.expect_request(DISPATCH_PATH, method="POST").respond_with_data("", status=204)
    url, bridge = bridge_at()
    client = MlflowClient(webhook_mlflow.uri, registry_uri=webhook_mlflow.uri)
    hook = client.create_webhook(name="wrong-secret", url=f"{url}/webhook",
                                 secret="not-the-bridge-secret", events=[VERSION_CREATED])
    try:
        # MLflow's own test delivery, signed with the webhook's (wrong) secret.
        result = client.test_webhook(hook.webhook_id)
        assert (result.success, result.response_status) == (False, 401)
        assert "signature does not match" in (result.response_body or "")
    finally:
        client.delete_webhook(hook.webhook_id)
    assert bridge.counts() == {"forwarded": 0, "ignored": 0, "rejected": 1, "failed": 0}
    assert github.log == []
