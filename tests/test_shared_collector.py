"""A shared collector (``kpigate collector --shared``): many rollouts behind one port.

The real app runs under uvicorn on 127.0.0.1 (and the command as a subprocess for the
restart); everything goes over real HTTP with the tokens of ``_collector_fixtures``. Two
rollouts with different policies are registered in one collector, and each one's events,
labels and stage notices must count for it alone; posts without the right token, or for
a rollout that is not registered, must count nowhere in the evidence.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from _collector_fixtures import (
    TOKENS,
    auth,
    scrape,
    seldon_event,
    seldon_request,
    seldon_response,
    series,
    value,
    write_token_files,
)
from _router_fixtures import free_port, running, wait_until_healthy
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mlflow_kpigate.cli.collector import collector_command
from mlflow_kpigate.metrics.service_auth import CollectorTokens
from mlflow_kpigate.metrics.service_shared import create_shared_collector_app
from mlflow_kpigate.metrics.shared_registry import SharedCollectorConfig

#: Rollout "fraud": four stages (0 shadow, 1 at 5 %, 2 at 25 %, 3 full), segments by region.
POLICY_A = """
stages: shadow,5,25,100
evaluation: {maturity: 0s}
kpis:
  - {name: recall, kind: proportion, metric: recall, margin: 0.02}
  - {name: fairness, kind: fairness, metric: false_positive_rate, segment_by: region,
     margin: 25%}
"""
#: Rollout "churn": three stages (0 shadow, 1 at 5 %, 2 full).
POLICY_B = """
stages: shadow,5,100
evaluation: {maturity: 0s}
kpis:
  - {name: precision, kind: proportion, metric: precision, margin: 0.02}
"""
A, B = "fraud", "churn"
BODY_A = {"policy": POLICY_A, "versions": {"baseline": "3", "candidate": "4"}}
BODY_B = {"policy": POLICY_B, "versions": {"baseline": "1", "candidate": "2"},
          "threshold": 0.7}
BOGUS = "f" * 64
STAGE_SERIES = "kpigate_stage_"


def shared_config(data_dir: Path, **kw: Any) -> SharedCollectorConfig:
    return SharedCollectorConfig(data_dir=data_dir, tokens=CollectorTokens.of(TOKENS),
                                 overrides={"metrics_cache_s": 0.0,
                                            "sweep_interval_s": 3600.0}, **kw)


@contextmanager
def shared(data_dir: Path) -> Iterator[str]:
    with running(create_shared_collector_app(shared_config(data_dir))) as url:
        yield url


def register(url: str, name: str, body: Any, token: str | None = None) -> requests.Response:
    given = TOKENS["operator"] if token is None else token
    headers = {"Authorization": f"Bearer {given}"} if given else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.put(f"{url}/rollouts/{name}", data=data, headers=headers, timeout=30)


def event(url: str, name: str, kind: str, puid: str, role: str, *, deployment: str | None = None,
          token: str | None = None, score: float = 0.9, region: str = "eu"
          ) -> requests.Response:
    """One logger event to rollout ``name``'s logger URL (the ingest token in the path)."""
    payload = seldon_request([[1.0, 1, region, "c"]]) if kind == "request" \
        else seldon_response([score])
    ev = seldon_event(kind, puid, role, payload, deployment=deployment or name)
    given = TOKENS["ingest"] if token is None else token
    path = f"cloudevents/{given}" if given else "cloudevents"  # "": no token at all
    return requests.post(f"{url}/rollouts/{name}/{path}", data=ev.body, headers=ev.headers,
                         timeout=30)


def label(url: str, name: str, body: Any, token: str | None = None) -> requests.Response:
    given = TOKENS["labels"] if token is None else token
    headers = {"Authorization": f"Bearer {given}"} if given else {}
    return requests.post(f"{url}/rollouts/{name}/feedback", json=body, headers=headers,
                         timeout=30)


def notice(url: str, name: str, stage_index: int, revision: int, *, shadow: bool = False,
           percent: float = 5, token: str | None = None) -> requests.Response:
    given = TOKENS["operator"] if token is None else token
    headers = {"Authorization": f"Bearer {given}"} if given else {}
    return requests.post(f"{url}/rollouts/{name}/admin/stage", json={
        "deployment": name, "stage_index": stage_index, "shadow": shadow,
        "candidate_percent": percent, "revision": revision}, headers=headers, timeout=30)


def status(url: str) -> dict[str, Any]:
    return requests.get(f"{url}/status", timeout=30).json()


def evidence(metrics: dict, name: str | None = None) -> float:
    """The sum of every kpigate_stage_* series (of rollout ``name``, or of all)."""
    want = {} if name is None else {"deployment": name}
    return sum(v for (metric, labels), v in metrics.items()
               if metric.startswith(STAGE_SERIES) and set(want.items()) <= set(labels))


def rejected(metrics: dict, deployment: str) -> dict[tuple[str, str], float]:
    return {(dict(k)["endpoint"], dict(k)["reason"]): v for k, v in series(
        metrics, "kpigate_collector_rejected_requests_total", deployment=deployment).items()
        if v}


@pytest.fixture
def two(tmp_path: Path) -> Iterator[str]:
    """A shared collector with rollouts ``fraud`` and ``churn`` registered."""
    with shared(tmp_path / "shared") as url:
        assert register(url, A, BODY_A).status_code == 201
        assert register(url, B, BODY_B).status_code == 201
        yield url


def test_two_rollouts_keep_their_own_evidence_in_one_exposition(two: str, tmp_path: Path):
    url = two
    assert notice(url, A, 1, revision=1).status_code == 200
    assert notice(url, B, 2, revision=1, percent=100).status_code == 200
    for i in range(3):  # fraud: 3 candidate predictions, 3 positive labels
        for kind in ("request", "response"):
            assert event(url, A, kind, f"a-{i}", "candidate").status_code == 200
    for i in range(2):  # churn: 2 baseline predictions scored 0.6 (< its 0.7 threshold)
        for kind in ("request", "response"):
            assert event(url, B, kind, f"b-{i}", "baseline", score=0.6).status_code == 200
    reply = label(url, A, {"labels": [{"request_id": f"a-{i}", "label": 1} for i in range(3)]})
    assert reply.json() == {"matched": 3, "unknown": [], "duplicates": 0}
    # churn's predictions are not fraud's: its labels posted to fraud are unknown there.
    assert label(url, A, {"request_id": "b-0", "label": 1}).json()["unknown"] == ["b-0"]
    assert label(url, B, {"request_id": "b-0", "label": 1}).json()["matched"] == 1
    # An event of another deployment is refused as in a one-deployment collector.
    other = event(url, A, "request", "x-1", "candidate", deployment=B)
    assert other.status_code == 400
    assert "Ce-Inferenceservicename" in other.json()["error"] or "deployment" in \
        other.json()["error"]

    text = requests.get(f"{url}/metrics", timeout=30).text
    families = list(text_string_to_metric_families(text))
    names = Counter(f.name for f in families)
    assert all(n == 1 for n in names.values()), names  # each family exposed once
    for kind in ("HELP", "TYPE"):
        lines = [line.split()[2] for line in text.splitlines()
                 if line.startswith(f"# {kind} ")]
        assert len(lines) == len(set(lines)), kind
    metrics = scrape(url)
    assert value(metrics, "kpigate_stage_labelled_total", deployment=A, stage="1",
                 role="candidate", outcome="tp") == 3
    assert value(metrics, "kpigate_stage_requests_total", deployment=A, stage="1",
                 role="candidate") == 3
    assert value(metrics, "kpigate_stage_requests_total", deployment=B, stage="2",
                 role="baseline") == 2
    assert value(metrics, "kpigate_stage_labelled_total", deployment=B, stage="2",
                 role="baseline", outcome="fn") == 1  # 0.6 < 0.7: predicted 0, label 1
    assert not series(metrics, "kpigate_stage_requests_total", deployment=A, stage="2")
    assert value(metrics, "kpigate_collector_stage", deployment=A) == 1
    assert value(metrics, "kpigate_collector_stage", deployment=B) == 2
    assert value(metrics, "kpigate_cloudevents_total", deployment=A, type="request",
                 outcome="rejected") == 1
    segment = series(metrics, "kpigate_stage_segment_labelled_total", deployment=A)
    assert sum(segment.values()) == 3
    assert not series(metrics, "kpigate_stage_segment_labelled_total", deployment=B)
    # Each rollout has its own prediction log, with its own versions.
    rows = {}
    for name in (A, B):
        db = tmp_path / "shared" / "rollouts" / name / "predictions.db"
        with sqlite3.connect(db) as conn:
            rows[name] = conn.execute("SELECT DISTINCT role, version FROM predictions"
                                      ).fetchall()
    assert rows == {A: [(1, "4")], B: [(0, "1")]}  # role 1: candidate, 0: baseline
    st = status(url)
    assert set(st["rollouts"]) == {A, B}
    assert st["rollouts"][A]["collector"]["predictions"] == 3
    assert st["rollouts"][B]["stage"]["stage_index"] == 2
    assert requests.get(f"{url}/health", timeout=30).json() == {"status": "ok", "rollouts": 2}
    # A rollout's own reading endpoints.
    own = requests.get(f"{url}/rollouts/{B}/status", timeout=30).json()
    assert own["deployment"] == B
    assert own["threshold"] == 0.7


def test_posts_without_the_right_token_are_refused_and_counted_nowhere_else(two: str):
    url = two
    cases = [("", 401), (BOGUS, 401)]
    for token, code in [*cases, (TOKENS["labels"], 403)]:
        assert event(url, A, "request", "r-1", "candidate", token=token).status_code == code
    for token, code in [*cases, (TOKENS["ingest"], 403)]:
        assert label(url, A, {"request_id": "r-1", "label": 1},
                     token=token).status_code == code
    for token, code in [*cases, (TOKENS["labels"], 403)]:
        assert notice(url, B, 1, revision=1, token=token).status_code == code
    # The header route too.
    ev = seldon_event("request", "r-2", "candidate", seldon_request([[1, 1, "eu", "c"]]),
                      deployment=A)
    reply = requests.post(f"{url}/rollouts/{A}/cloudevents", data=ev.body, timeout=30,
                          headers={**ev.headers, **auth("operator")})
    assert reply.status_code == 403
    # Registrations need the operator token; GET /rollouts too.
    for token, code in (("", 401), (BOGUS, 401), (TOKENS["ingest"], 403)):
        assert register(url, "other", BODY_A, token=token).status_code == code
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        assert requests.delete(f"{url}/rollouts/{A}", headers=headers,
                               timeout=30).status_code == code
        reply = requests.get(f"{url}/rollouts", headers=headers, timeout=30)
        assert reply.status_code == code
        assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
        assert "\n" not in reply.json()["error"]
    listed = requests.get(f"{url}/rollouts", headers=auth("operator"), timeout=30).json()
    assert set(listed["rollouts"]) == {A, B}  # nothing was registered or deleted
    assert listed["rollouts"][A]["versions"] == {"baseline": "3", "candidate": "4"}

    metrics = scrape(url)
    assert evidence(metrics) == 0
    assert sum(series(metrics, "kpigate_cloudevents_total").values()) == 0
    assert sum(series(metrics, "kpigate_labels_total").values()) == 0
    assert rejected(metrics, A) == {
        ("/cloudevents", "missing_token"): 1, ("/cloudevents", "invalid_token"): 1,
        ("/cloudevents", "wrong_scope"): 2, ("/feedback", "missing_token"): 1,
        ("/feedback", "invalid_token"): 1, ("/feedback", "wrong_scope"): 1}
    assert rejected(metrics, B) == {
        ("/admin/stage", "missing_token"): 1, ("/admin/stage", "invalid_token"): 1,
        ("/admin/stage", "wrong_scope"): 1}
    assert rejected(metrics, "_collector") == {
        ("/rollouts", "missing_token"): 3, ("/rollouts", "invalid_token"): 3,
        ("/rollouts", "wrong_scope"): 3}
    for name in (A, B):
        assert status(url)["rollouts"][name]["stage"]["revision"] == -1


def test_an_unregistered_rollout_gets_404_and_nothing_is_counted(two: str):
    url = two
    for kind in ("request", "response"):
        reply = event(url, "ghost", kind, "g-1", "candidate")
        assert reply.status_code == 404
        assert reply.json()["error"].startswith("no rollout named 'ghost' is registered")
        assert "\n" not in reply.json()["error"]
    assert label(url, "ghost", {"request_id": "g-1", "label": 1}).status_code == 404
    assert notice(url, "ghost", 0, revision=1, shadow=True, percent=0).status_code == 404
    # Without a token it is a 401, as for a registered rollout: nothing is given away.
    assert event(url, "ghost", "request", "g-2", "candidate", token=BOGUS).status_code == 401
    assert requests.get(f"{url}/rollouts/ghost/metrics", timeout=30).status_code == 404
    assert requests.delete(f"{url}/rollouts/ghost", headers=auth("operator"),
                           timeout=30).status_code == 404
    metrics = scrape(url)
    assert evidence(metrics) == 0
    assert sum(series(metrics, "kpigate_cloudevents_total").values()) == 0
    assert not any(dict(k).get("deployment") == "ghost" for _, k in metrics)
    assert rejected(metrics, "_collector") == {
        ("/cloudevents", "unknown_rollout"): 2, ("/feedback", "unknown_rollout"): 1,
        ("/admin/stage", "unknown_rollout"): 1, ("/cloudevents", "invalid_token"): 1}
    # Every endpoint x reason of the collector's own counter is exported from 0.
    assert len(series(metrics, "kpigate_collector_rejected_requests_total",
                      deployment="_collector")) == 4 * 4


def test_the_issues_attack_leaves_no_labelled_evidence_in_any_rollout(two: str):
    url = two
    for i in range(200):
        token = "" if i % 2 else (BOGUS if i % 4 else TOKENS["labels"])
        name = A if i % 3 else B
        for kind in ("request", "response"):
            assert event(url, name, kind, f"forged-{i}", "candidate", token=token,
                         score=0.99).status_code in (401, 403)
        assert event(url, "ghost", "request", f"forged-{i}", "candidate",
                     token=token).status_code in (401, 403)
    labels = {"labels": [{"request_id": f"forged-{i}", "label": 1} for i in range(200)]}
    for name in (A, B, "ghost"):
        for token in ("", BOGUS, TOKENS["ingest"], TOKENS["operator"]):
            assert label(url, name, labels, token=token).status_code in (401, 403)
    metrics = scrape(url)
    for name in (A, B):
        assert sum(series(metrics, "kpigate_stage_labelled_total",
                          deployment=name).values()) == 0
        assert evidence(metrics, name) == 0
        assert status(url)["rollouts"][name]["collector"]["predictions"] == 0
    assert sum(series(metrics, "kpigate_collector_rejected_requests_total").values()) == \
        200 * 3 + 3 * 4


def test_forged_stage_notices_are_checked_against_each_rollouts_policy(two: str):
    url = two
    # fraud has four stages, churn three: stage 3 exists only for fraud.
    forged = notice(url, B, 3, revision=999999999999, percent=100)
    assert forged.status_code == 400
    assert forged.json()["error"].startswith("stage_index: 3 is not a stage of the policy, "
                                             "which has 3")
    far = notice(url, B, 2, revision=999999999999, percent=100)
    assert far.status_code == 400
    assert far.json()["error"].startswith("revision: 999999999999 is implausibly far")
    assert notice(url, A, 2, revision=1, percent=30).status_code == 400  # not 25 %
    assert notice(url, A, 3, revision=1, percent=100).json()["ignored"] is False
    wrong_name = requests.post(f"{url}/rollouts/{A}/admin/stage", json={
        "deployment": B, "stage_index": 1, "shadow": False, "candidate_percent": 5,
        "revision": 2}, headers=auth("operator"), timeout=30)
    assert wrong_name.status_code == 400
    assert wrong_name.json()["error"].startswith("deployment:")
    st = status(url)["rollouts"]
    assert (st[A]["stage"]["stage_index"], st[A]["stage"]["revision"]) == (3, 1)
    assert st[B]["stage"]["revision"] == -1


def test_registering_again_is_idempotent_and_new_versions_start_afresh(tmp_path: Path):
    data = tmp_path / "shared"
    with shared(data) as url:
        first = register(url, A, BODY_A)
        assert (first.status_code, first.json()) == (201, {"rollout": A, "outcome": "created"})
        for kind in ("request", "response"):
            event(url, A, kind, "p-1", "candidate")
        again = register(url, A, BODY_A)
        assert (again.status_code, again.json()["outcome"]) == (200, "unchanged")
        assert status(url)["rollouts"][A]["collector"]["predictions"] == 1
        changed = register(url, A, {**BODY_A, "threshold": 0.9})
        assert changed.status_code == 409
        assert changed.json()["error"].startswith("versions: rollout 'fraud' is registered")
        new = register(url, A, {**BODY_A, "versions": {"baseline": "4", "candidate": "5"}})
        assert (new.status_code, new.json()["outcome"]) == (201, "replaced")
        ended = data / new.json()["ended"]
        assert (ended / "predictions.db").is_file()  # the old evidence is kept
        assert status(url)["rollouts"][A]["collector"]["predictions"] == 0
        deleted = requests.delete(f"{url}/rollouts/{A}", headers=auth("operator"), timeout=30)
        assert (deleted.status_code, deleted.json()["outcome"]) == (200, "deleted")
        assert (data / deleted.json()["ended"] / "registration.json").is_file()
        assert not (data / "rollouts" / A).exists()
        assert event(url, A, "request", "p-2", "candidate").status_code == 404
        assert requests.delete(f"{url}/rollouts/{A}", headers=auth("operator"),
                               timeout=30).status_code == 404
        assert register(url, A, BODY_A).json()["outcome"] == "created"
        assert status(url)["rollouts"][A]["collector"]["predictions"] == 0


@pytest.mark.parametrize(("name", "body", "code", "start"), [
    (A, b"{not json", 400, "body: not valid JSON"),
    (A, [1, 2], 400, "body: must be a JSON object"),
    (A, {**BODY_A, "deployment": A}, 400, "deployment: unknown field"),
    (A, {"versions": BODY_A["versions"]}, 400, "policy: missing or empty"),
    (A, {**BODY_A, "policy": "stages: [unclosed"}, 400, "policy: "),
    (A, {**BODY_A, "policy": "stages: shadow,5\nkpis: []\n"}, 400, "policy: "),
    (A, {**BODY_A, "versions": {"champion": "3"}}, 400, "versions: must be an object"),
    (A, {**BODY_A, "versions": {"baseline": 3}}, 400, "versions: must be an object"),
    (A, {"policy": POLICY_A}, 400, "versions: must be an object"),
    (A, {**BODY_A, "threshold": 1.5}, 400, "threshold: must be in (0, 1]"),
    (A, {**BODY_A, "threshold": "high"}, 400, "threshold: must be a number"),
    (A, {**BODY_A, "stages": "shadow,,100"}, 400, "stages: item 2"),
    (A, {**BODY_A, "stages": "shadow,50,5"}, 400, "stages: "),
    (A, {**BODY_A, "maturity": "soon"}, 400, "maturity: 'soon' is not a duration"),
    (A, {**BODY_A, "maturity": 30}, 400, "maturity: must be a string"),
    ("Fraud_Model", BODY_A, 400, "name: 'Fraud_Model' is not a DNS-1123 label"),
])
def test_bad_registrations_are_refused_with_one_line(tmp_path: Path, name: str, body: Any,
                                                     code: int, start: str):
    with shared(tmp_path / "shared") as url:
        reply = register(url, name, body)
        assert reply.status_code == code, reply.text
        error = reply.json()["error"]
        assert error.startswith(start), error
        assert "\n" not in error
        assert str(tmp_path) not in error  # the staging path is not shown
        listed = requests.get(f"{url}/rollouts", headers=auth("operator"), timeout=30).json()
        assert listed["rollouts"] == {}
    assert list((tmp_path / "shared" / "rollouts").iterdir()) == []
    assert [p.name for p in (tmp_path / "shared").iterdir()] != []  # no staging left:
    assert not [p for p in (tmp_path / "shared").iterdir() if p.name.startswith(".staging")]


# -- the command ------------------------------------------------------------------------------


def _start(data: Path, tokens: list[str], port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow_kpigate.cli", "collector", "--shared",
         "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port), *tokens],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))


def _stop(process: subprocess.Popen) -> str:
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
    return output.decode()


def test_registrations_survive_a_restart_of_the_collector_process(tmp_path: Path):
    data = tmp_path / "shared"
    tokens = write_token_files(tmp_path / "tokens")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start(data, tokens, port)
    try:
        wait_until_healthy(url, process=process)
        assert register(url, A, BODY_A).status_code == 201
        assert register(url, B, BODY_B).status_code == 201
        assert notice(url, A, 1, revision=2).status_code == 200
        for kind in ("request", "response"):
            assert event(url, A, kind, "s-1", "candidate").status_code == 200
    finally:
        output = _stop(process)
    assert "kpigate collector shared by the namespace's rollouts" in output
    process = _start(data, tokens, port)
    try:
        wait_until_healthy(url, process=process)
        listed = requests.get(f"{url}/rollouts", headers=auth("operator"), timeout=30).json()
        assert set(listed["rollouts"]) == {A, B}
        assert listed["rollouts"][B]["threshold"] == 0.7
        assert register(url, A, BODY_A).json()["outcome"] == "unchanged"
        assert label(url, A, {"request_id": "s-1", "label": 1}).json()["matched"] == 1
        metrics = scrape(url)
        assert value(metrics, "kpigate_stage_labelled_total", deployment=A, stage="1",
                     role="candidate", outcome="tp") == 1
        assert value(metrics, "kpigate_collector_stage", deployment=B) == 0
        assert notice(url, B, 9, revision=1).status_code == 400  # B's policy came back too
    finally:
        _stop(process)


@pytest.mark.parametrize(("args", "message"), [
    (["--shared", "--deployment", "fraud"], "--deployment: not with --shared"),
    (["--shared", "--threshold", "0.7"], "--threshold: not with --shared"),
    (["--shared", "--pending-ttl", "0s"], "--pending-ttl: must be"),
    ([], "--deployment: missing;"),
])
def test_bad_shared_options_exit_2_with_one_line(tmp_path: Path, args: list[str],
                                                  message: str):
    argv = ["--data-dir", str(tmp_path / "d"), *args, *write_token_files(tmp_path / "t")]
    result = CliRunner().invoke(collector_command, argv)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]


def test_the_shared_command_needs_the_ingest_and_operator_tokens(tmp_path: Path):
    files = tmp_path / "t"
    options = write_token_files(files)
    result = CliRunner().invoke(collector_command, [
        "--shared", "--data-dir", str(tmp_path / "d"), *options[:2]])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("Error: --token-file: none for the operator scope")
    result = CliRunner().invoke(collector_command, ["--shared", "--data-dir",
                                                    str(tmp_path / "d")])
    assert result.exit_code == 2
    assert result.output.startswith("Error: --token-file: none given")
