"""The collector service's authentication and its stage-notice checks, over real HTTP.

The real service app runs under uvicorn on 127.0.0.1 (or the ``kpigate collector``
command in a subprocess) and every test stops what it starts. The attacks are the ones
measured in issue 13: an unauthenticated stage notice for a stage the policy does not
have, with a revision of 999999999999, that pinned the stage; and 200 forged candidate
events with 200 labels that showed up as ``kpigate_stage_labelled_total`` evidence.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from _collector_fixtures import (
    DEPLOYMENT,
    TOKENS,
    make_config,
    pair,
    post,
    scrape,
    seldon_event,
    seldon_request,
    series,
    serving,
    stage_notice,
    status,
    write_token_files,
)
from _router_fixtures import free_port, wait_until_healthy
from click.testing import CliRunner

from mlflow_kpigate.backends.seldon.collector_credentials import (
    OPERATOR_TOKEN_ENV,
    CollectorCredentials,
)
from mlflow_kpigate.backends.seldon.manifests import ModelRef
from mlflow_kpigate.backends.seldon.target import SeldonTarget
from mlflow_kpigate.backends.seldon.traffic import CollectorUnreachable, SeldonTraffic
from mlflow_kpigate.cli.collector import collector_command
from mlflow_kpigate.core.state import Phase, RolloutState, Weights
from mlflow_kpigate.metrics.service_auth import CollectorTokens, load_tokens
from mlflow_kpigate.policy import Stage

ENDPOINTS = {"/cloudevents": "ingest", "/": "ingest", "/feedback": "labels",
             "/admin/stage": "operator"}
#: The issue's policy: three stages, so stage_index 3 does not exist.
THREE_STAGES = (Stage("shadow", 0.0, shadow=True), Stage("5%", 5.0), Stage("full", 100.0))
FORGED_NOTICE = {"deployment": DEPLOYMENT, "stage_index": 3, "shadow": False,
                 "candidate_percent": 100, "revision": 999999999999}
BOGUS = "f" * 64


def _body(path: str) -> tuple[bytes, dict[str, str]]:
    if path in ("/cloudevents", "/"):
        event = seldon_event("request", "x-1", "candidate", seldon_request([[1, 1, "eu", "c"]]))
        return event.body, event.headers
    if path == "/feedback":
        return b'{"request_id": "x-1", "label": 1}', {"Content-Type": "application/json"}
    return (b'{"deployment": "fraud", "stage_index": 1, "shadow": false, '
            b'"candidate_percent": 5, "revision": 1}', {"Content-Type": "application/json"})


def _attempt(url: str, path: str, authorization: str | None) -> requests.Response:
    body, headers = _body(path)
    if authorization is not None:
        headers = {**headers, "Authorization": authorization}
    return requests.post(f"{url}{path}", data=body, headers=headers, timeout=30)


def _nothing_recorded(url: str) -> None:
    st = status(url)
    assert st["collector"]["predictions"] == 0
    assert st["pending"] == {"request": 0, "response": 0}
    assert st["stage"]["revision"] == -1
    assert all(n == 0 for kinds in st["events"].values() for n in kinds.values())
    assert all(n == 0 for n in st["labels"].values())
    metrics = scrape(url)
    for name in ("kpigate_stage_requests_total", "kpigate_stage_labelled_total"):
        assert sum(series(metrics, name).values()) == 0, name
    assert sum(series(metrics, "kpigate_cloudevents_total").values()) == 0
    assert sum(series(metrics, "kpigate_labels_total").values()) == 0


@pytest.fixture
def service(tmp_path: Path) -> Any:
    with serving(make_config(tmp_path / "collector", stages=THREE_STAGES)) as running_service:
        yield running_service


def test_posts_without_the_scopes_token_are_refused_and_only_counted(service):
    url, _ = service
    expected: dict[tuple[str, str], int] = {}
    for path, scope in ENDPOINTS.items():
        label = "/cloudevents" if path == "/" else path
        cases = [(None, 401, "missing_token"), ("Basic dXNlcjpwYXNz", 401, "missing_token"),
                 (f"Bearer {BOGUS}", 401, "invalid_token"), ("Bearer", 401, "missing_token")]
        cases += [(f"Bearer {TOKENS[other]}", 403, "wrong_scope")
                  for other in TOKENS if other != scope]
        for authorization, code, reason in cases:
            reply = _attempt(url, path, authorization)
            assert reply.status_code == code, (path, authorization, reply.text)
            challenge = reply.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer ")
            assert f'scope="{scope}"' in challenge
            if reason == "invalid_token":
                assert 'error="invalid_token"' in challenge
            if code == 403:
                assert 'error="insufficient_scope"' in challenge
            error = reply.json()["error"]
            assert "\n" not in error
            assert scope in error
            expected[(label, reason)] = expected.get((label, reason), 0) + 1
    _nothing_recorded(url)
    metrics = scrape(url)
    refused = {(dict(k)["endpoint"], dict(k)["reason"]): v for k, v in series(
        metrics, "kpigate_collector_rejected_requests_total", deployment=DEPLOYMENT).items()}
    assert {k: v for k, v in refused.items() if v} == expected
    assert len(refused) == 9  # every endpoint x reason is exported, zeros included
    assert status(url)["refused"]["/admin/stage"]["wrong_scope"] == 2


def test_reading_endpoints_stay_open(service):
    url, _ = service
    for path in ("/metrics", "/health", "/status"):
        assert requests.get(f"{url}{path}", timeout=30).status_code == 200, path


def test_the_ingest_token_may_be_the_last_path_segment(service):
    url, _ = service
    req, resp = pair("p-1", "baseline", [[1.0, 1, "eu", "c"]], [0.9])
    for event in (req, resp):
        reply = requests.post(f"{url}/cloudevents/{TOKENS['ingest']}", data=event.body,
                              headers=event.headers, timeout=30)
        assert reply.status_code == 200, reply.text
    assert status(url)["collector"]["predictions"] == 1
    for token, code in ((BOGUS, 401), (TOKENS["operator"], 403), (TOKENS["labels"], 403)):
        reply = requests.post(f"{url}/cloudevents/{token}", data=req.body,
                              headers=req.headers, timeout=30)
        assert reply.status_code == code
        assert token not in reply.text  # the answer never echoes a token
    assert status(url)["refused"]["/cloudevents"] == {
        "missing_token": 0, "invalid_token": 1, "wrong_scope": 2}


def test_the_issues_forged_stage_notice_is_refused_and_genuine_ones_still_apply(service):
    url, _ = service
    unauthenticated = requests.post(f"{url}/admin/stage", json=FORGED_NOTICE, timeout=30)
    assert unauthenticated.status_code == 401
    # Even with the operator's token the notice does not fit the policy.
    forged = requests.post(f"{url}/admin/stage", json=FORGED_NOTICE, timeout=30,
                           headers={"Authorization": f"Bearer {TOKENS['operator']}"})
    assert forged.status_code == 400
    assert forged.json()["error"].startswith("stage_index: 3 is not a stage of the policy, "
                                             "which has 3")
    far_ahead = stage_notice(url, 2, revision=999999999999, percent=100)
    assert far_ahead.status_code == 400
    assert far_ahead.json()["error"].startswith("revision: 999999999999 is implausibly far")
    for index, shadow, percent, field in ((1, False, 25, "candidate_percent"),
                                          (2, True, 0, "shadow"), (0, True, 5, "candidate_")):
        bad = stage_notice(url, index, revision=1, shadow=shadow, percent=percent)
        assert bad.status_code == 400, (index, shadow, percent)
        assert bad.json()["error"].startswith(field)
    assert status(url)["stage"]["revision"] == -1  # nothing was stored
    # The controller's genuine notices: shadow, then 5 %, a rollback at 5 %.
    assert stage_notice(url, 0, revision=1, shadow=True, percent=0).json()["ignored"] is False
    assert stage_notice(url, 1, revision=4, percent=5).json()["ignored"] is False
    assert stage_notice(url, 1, revision=6, percent=0).json()["ignored"] is False
    st = status(url)["stage"]
    assert (st["stage_index"], st["revision"], st["candidate_percent"]) == (1, 6, 0.0)


def test_forged_events_and_labels_leave_no_evidence(service):
    url, _ = service
    for i in range(200):
        req, resp = pair(f"forged-{i}", "candidate", [[1.0, 1, "eu", f"c{i}"]], [0.99])
        token = "" if i % 2 else TOKENS["labels"]  # no token, or another scope's
        assert post(url, req, token=token).status_code in (401, 403)
        assert post(url, resp, token=token).status_code in (401, 403)
    labels = {"labels": [{"request_id": f"forged-{i}", "label": 1} for i in range(200)]}
    for token in ("", BOGUS, TOKENS["ingest"]):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        reply = requests.post(f"{url}/feedback", json=labels, headers=headers, timeout=30)
        assert reply.status_code in (401, 403)
    _nothing_recorded(url)
    metrics = scrape(url)
    stage_series = {k: v for k, v in metrics.items() if k[0].startswith("kpigate_stage_")}
    assert sum(stage_series.values()) == 0
    refused = series(metrics, "kpigate_collector_rejected_requests_total")
    assert sum(refused.values()) == 403


def test_correct_tokens_work_end_to_end_through_the_controllers_client(tmp_path: Path):
    files = tmp_path / "tokens"
    write_token_files(files)
    with serving(make_config(tmp_path / "collector", stages=THREE_STAGES)) as (url, _):
        creds = CollectorCredentials.from_env({
            OPERATOR_TOKEN_ENV: str(files / "operator"),
            "KPIGATE_COLLECTOR_INGEST_TOKEN_FILE": str(files / "ingest")})
        target = SeldonTarget(namespace="models", name=DEPLOYMENT, collector_url=url,
                              ingest_token=creds.ingest_token)
        assert target.logger_url == f"{url}/cloudevents/{TOKENS['ingest']}"
        assert TOKENS["ingest"] not in repr(target)
        traffic = SeldonTraffic(None, target, ModelRef("1", "s3://m/1", "fraud"),
                                ModelRef("2", "s3://m/2", "fraud"), creds)
        canary = RolloutState(name=DEPLOYMENT, model_name="fraud", candidate_version="2",
                              baseline_version="1", candidate_uri="models:/fraud/2",
                              baseline_uri="models:/fraud/1", policy_file="-",
                              tracking_uri="-", port=0, weights=Weights(5.0, False, True),
                              phase=Phase.CANARY, stage_index=1, revision=3)
        traffic.notify_collector(canary)
        assert status(url)["stage"]["stage_index"] == 1
        # Seldon's logger posts to the logger URL, the label producer with its token.
        for event in pair("ok-1", "candidate", [[2.0, 1, "eu", "c"]], [0.9]):
            assert requests.post(target.logger_url or "", data=event.body,
                                 headers=event.headers, timeout=30).status_code == 200
        label = {"request_id": "ok-1", "label": 1, "values": {"loss": 1.0}}
        reply = requests.post(f"{url}/feedback", json=label, timeout=30,
                              headers={"Authorization": f"Bearer {TOKENS['labels']}"})
        assert reply.json()["matched"] == 1
        metrics = scrape(url)
        assert metrics[("kpigate_stage_labelled_total", frozenset({
            "deployment": DEPLOYMENT, "stage": "1", "role": "candidate",
            "outcome": "tp"}.items()))] == 1
        # Without the token, or with a stage the policy lacks, the controller is told why.
        bare = SeldonTraffic(None, replace(target, ingest_token=None), traffic.baseline,
                             traffic.candidate)
        with pytest.raises(CollectorUnreachable, match=rf"HTTP 401: .*{OPERATOR_TOKEN_ENV}"):
            bare.notify_collector(canary.evolve(revision=4))
        with pytest.raises(CollectorUnreachable, match=r"HTTP 400: stage_index: 3 .*--policy"):
            traffic.notify_collector(canary.evolve(stage_index=3, revision=5))
        assert status(url)["stage"]["revision"] == 3


# -- starting the command -----------------------------------------------------------------------

POLICY = """
stages: shadow,5,100
evaluation: {maturity: 30m}
kpis:
  - {name: recall, kind: proportion, metric: recall, margin: 0.02}
"""


def _command(policy: Path, data: Path, *extra: str) -> list[str]:
    return ["--deployment", DEPLOYMENT, "--policy", str(policy), "--data-dir", str(data),
            "--host", "127.0.0.1", *extra]


def test_the_command_refuses_to_start_without_tokens(tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    code = "from mlflow_kpigate.cli.collector import collector_command; collector_command()"
    result = subprocess.run([sys.executable, "-c", code, *_command(policy, tmp_path / "d")],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: --token-file: none given")
    assert "--insecure-no-auth" in lines[0]


@pytest.mark.parametrize(("setup", "message"), [
    ("operator-missing", "--token-file: none for the operator scope"),
    ("placeholder", "the token has characters other than"),
    ("short", "shorter than 32"),
    ("shared", "hold the same token"),
    ("no-file", "no such file"),
    ("bad-scope", "unknown scope 'admin'"),
    ("both", "given together with insecure_no_auth"),
    ("stages", "--stages: item 2"),
])
def test_bad_token_options_exit_2_with_one_line(tmp_path: Path, setup: str, message: str):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    files = tmp_path / "t"
    options = write_token_files(files)
    extra = {
        "operator-missing": options[:4],
        "placeholder": ["--token-file", f"ingest={files / 'p'}", *options[2:]],
        "short": ["--token-file", f"ingest={files / 's'}", *options[2:]],
        "shared": [*options, "--token-file", f"labels={files / 'operator'}"],
        "no-file": ["--token-file", f"ingest={files / 'none'}", *options[2:]],
        "bad-scope": ["--token-file", f"admin={files / 'operator'}", *options],
        "both": [*options, "--insecure-no-auth"],
        "stages": [*options, "--stages", "shadow,,100"],
    }[setup]
    (files / "p").write_text("<generate with: openssl rand -hex 32>\n")
    (files / "s").write_text("abc123\n")
    result = CliRunner().invoke(collector_command, _command(policy, tmp_path / "d", *extra))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert all(token not in result.output for token in TOKENS.values())


def test_one_token_opens_several_scopes_only_when_one_option_names_them(tmp_path: Path):
    files = tmp_path / "t"
    write_token_files(files)
    tokens = load_tokens([f"ingest,labels={files / 'ingest'}", f"operator={files / 'operator'}"])
    assert tokens.scopes == {"ingest", "labels", "operator"}
    with pytest.raises(ValueError, match="hold the same token"):
        load_tokens([f"ingest={files / 'ingest'}", f"labels={files / 'ingest'}"])
    with pytest.raises(ValueError, match="hold the same token"):
        CollectorTokens.of({"ingest": TOKENS["ingest"], "labels": TOKENS["ingest"]})


def test_insecure_no_auth_starts_with_a_warning_and_takes_unauthenticated_posts(
        tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    code = "from mlflow_kpigate.cli.collector import collector_command; collector_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, *_command(policy, tmp_path / "d", "--port", str(port),
                                               "--insecure-no-auth")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process=process)
        assert post(url, pair("i-1", "baseline", [[1, 1, "eu", "c"]], [0.5])[0],
                    token="").status_code == 200
        assert requests.post(f"{url}/admin/stage", json=FORGED_NOTICE,
                             timeout=30).status_code == 400  # the policy check still holds
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
    assert "WARNING" in output.decode()
    assert "authentication is OFF" in output.decode()


def test_the_revision_lead_grows_by_one_a_second_since_the_last_notice():
    from mlflow_kpigate.metrics.service_notices import (
        MAX_REVISION_LEAD,
        NoticeRefused,
        StageNotice,
        check_revision,
    )

    def notice(revision: int, at: float) -> StageNotice:
        return StageNotice(DEPLOYMENT, 1, False, 5.0, revision, at)

    none = StageNotice(DEPLOYMENT, 0, False, 0.0, -1, 0.0)
    check_revision(notice(MAX_REVISION_LEAD, 100.0), none, since=100.0)
    with pytest.raises(NoticeRefused, match="revision: 1001 is implausibly far"):
        check_revision(notice(MAX_REVISION_LEAD + 1, 100.0), none, since=100.0)
    stored = notice(40, 1000.0)
    with pytest.raises(NoticeRefused, match=r"at most 1040 now"):
        check_revision(notice(1041, 1000.5), stored, since=0.0)
    # After a long outage (an hour without a notice) the controller is believed again.
    check_revision(notice(4000, 4600.0), stored, since=0.0)
    with pytest.raises(NoticeRefused):
        check_revision(notice(999999999999, 4600.0), stored, since=0.0)
