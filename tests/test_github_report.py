"""``kpigate github report`` and its parts against a fake GitHub REST API on 127.0.0.1.

The deployments reported on are real: states made by the rollout's own transitions from
real gate decisions (``gate.evaluate`` on synthetic KPI aggregates), saved with
``RolloutStore`` as the controller saves them, and reports written by the controller's
``finish_rollout``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from fake_github import READ_TOKEN, REPO, WRITE_TOKEN, serve, start_server, stop_server
from werkzeug import Request, Response

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.cli.github import ReportOptions, github_group, run_report
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.events import Aborted, Created, Evaluated, OtherEvent
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.deploy.finish import finish_rollout
from mlflow_kpigate.gate import Decision, StageSample, evaluate
from mlflow_kpigate.github import (
    MAX_COMMENT_CHARS,
    GitHubClient,
    GitHubError,
    GitHubPermissionError,
    Links,
    RolloutRecord,
    escape_data,
    escape_property,
    format_outputs,
    from_payload,
    marker,
    render,
    resolve,
    upsert_comment,
    workflow_command,
)
from mlflow_kpigate.github.comment import has_marker
from mlflow_kpigate.github.record import Evaluation as CommentEvaluation
from mlflow_kpigate.github.record import mlflow_links
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.policy import Policy, policy_from_dict
from mlflow_kpigate.rollout import transitions

HEAD_SHA = "a1" * 20
FORK_SHA = "f0" * 20
MERGE_SHA = "3e" * 20
PUSH_SHA = "b2" * 20
EVIL = "bad | <script>alert(1)</script> `rm -rf` @octo-org/admins\nsecond line :: %0A"
TRACKING = "http://user:secret@mlflow.example:5000/"

POLICY_DOC = {
    "name": "github-report-test",
    "stages": [
        {"traffic": 5, "min_samples": {"requests": 500, "labelled": 500},
         "max_duration": "1h"},
        {"traffic": 25, "min_samples": {"requests": 500, "labelled": 500},
         "max_duration": "1h"},
        {"traffic": 100},
    ],
    "kpis": [
        {"name": "recall", "kind": "proportion", "metric": "recall", "role": "critical",
         "margin": 0.05},
        {"name": "precision", "kind": "proportion", "metric": "precision", "margin": 0.05},
        {"name": "latency_p95", "kind": "quantile", "q": 0.95, "margin": "10%"},
    ],
}


# --------------------------------------------------------------------------------------
# Real deployments: gate decisions → transitions → RolloutStore, report by finish_rollout
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def policy() -> Policy:
    return policy_from_dict(POLICY_DOC)


def aggregate(policy: Policy, seed: int, n: int, recall: float) -> RoleAggregate:
    """``n`` labelled requests of a classifier with the given recall (FPR 5%)."""
    rng = np.random.default_rng(seed)
    agg = RoleAggregate(AggregateSpec.from_policy(policy))
    agg.add_requests(np.exp(rng.normal(math.log(0.08), 0.2, n)), np.zeros(n, dtype=bool))
    y = rng.random(n) < 0.4
    pred = np.where(y, rng.random(n) < recall, rng.random(n) < 0.05)
    score = 1 / (1 + np.exp(-rng.normal(-1.0 + 2.5 * y, 1.0)))
    agg.add_labelled(y, pred, score)
    return agg


def decide(policy: Policy, stage: int, n: int, recall: float = 0.88,
           elapsed: float = 600.0, seed: int = 0) -> Decision:
    """The gate's decision at ``stage`` with ``n`` samples per role in it."""
    samples = [StageSample(s, aggregate(policy, seed + s + 1, n if s == stage else 4000, 0.88),
                           aggregate(policy, seed + s + 100, n if s == stage else 4000,
                                     recall if s == stage else 0.88))
               for s in range(stage + 1)]
    return evaluate(policy, stage, elapsed, samples)


# (stage, samples, candidate recall, elapsed seconds) per evaluation
PLANS = {
    "promoted": [(0, 200, 0.88, 600), (0, 4000, 0.88, 900), (1, 4000, 0.88, 900)],
    "rolled_back": [(0, 200, 0.88, 600), (0, 4000, 0.88, 900), (1, 2000, 0.5, 900)],
    "holding": [(0, 200, 0.88, 600), (0, 200, 0.88, 7200)],
    "aborted": [(0, 200, 0.88, 600)],
}


def build_deployment(root: Path, policy: Policy, name: str, outcome: str, *,
                     model: str = "fraud", reason: str | None = None,
                     evaluations: int | None = None, report: bool = True) -> Path:
    """A deployment directory in ``root`` whose rollout ended in ``outcome``."""
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "policy.yaml").write_text(yaml.safe_dump(POLICY_DOC))
    store = RolloutStore(directory)
    state = RolloutState(
        name=name, model_name=model, candidate_version="2", baseline_version="1",
        candidate_uri=f"models:/{model}/2", baseline_uri=f"models:/{model}/1",
        policy_file=str(directory / "policy.yaml"), tracking_uri=TRACKING, port=0,
        rollout_run_id="0123456789abcdef0123456789abcdef")
    state = transitions.initial(state, policy, time.time())
    state = store.save(state, Created("5%", state.weights.describe(), 5.0))
    plan = PLANS[outcome]
    if evaluations is not None:  # a long rollout: repeat the first (holding) evaluation
        plan = [plan[0]] * (evaluations - len(plan) + 1) + plan[1:]
    for i, (stage, n, recall, elapsed) in enumerate(plan):
        decision = decide(policy, stage, n, recall, elapsed, seed=10 * i)
        new, _kind = transitions.after_decision(state, policy, decision, time.time())
        evaluation = Evaluation(i + 1, time.time(), state.stage_index, elapsed, decision)
        state = store.save(new, Evaluated.after(
            evaluation, policy.stages[state.stage_index].describe(), new))
    if outcome == "aborted":
        state = store.save(transitions.rollback(state, "deployment deleted", Phase.ABORTED),
                           Aborted(reason="deleted"))
    if reason is not None:
        state = store.save(state.evolve(reason=reason), OtherEvent("note", {"reason": reason}))
    assert state.phase is {"promoted": Phase.PROMOTED, "rolled_back": Phase.ROLLED_BACK,
                           "holding": Phase.HOLDING, "aborted": Phase.ABORTED}[outcome]
    if report:
        finish_rollout(directory, state, None, store=store, policy=policy)
    return directory


@pytest.fixture(scope="module")
def deployments(tmp_path_factory, policy) -> Path:
    """One finished deployment per outcome, named after it, in one state directory."""
    root = tmp_path_factory.mktemp("state")
    for outcome in PLANS:
        build_deployment(root, policy, outcome.replace("_", "-"), outcome)
    return root


@pytest.fixture(scope="module")
def api_server():
    """One server for the module; each test gets a fresh fake on it."""
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture
def fake(api_server):
    yield serve(api_server)
    api_server.clear()


@pytest.fixture
def ghes(api_server):
    yield serve(api_server, prefix="/api/v3")
    api_server.clear()


# --------------------------------------------------------------------------------------
# Real-shaped event payloads
# --------------------------------------------------------------------------------------

REPOSITORY = {"id": 7, "name": "models", "full_name": REPO, "private": False,
              "owner": {"login": "octo-org", "type": "Organization"},
              "html_url": f"https://github.com/{REPO}", "default_branch": "main"}
SENDER = {"login": "alice", "id": 11, "type": "User"}


def pull_request(number: int, head_sha: str, fork: bool = False) -> dict[str, Any]:
    head_repo = {**REPOSITORY, "full_name": "mallory/models"} if fork else REPOSITORY
    return {"url": f"https://api.github.com/repos/{REPO}/pulls/{number}", "id": 900 + number,
            "number": number, "state": "open", "title": "Promote fraud v2",
            "user": SENDER, "draft": False, "merge_commit_sha": MERGE_SHA,
            "head": {"label": "alice:promote-fraud", "ref": "promote-fraud", "sha": head_sha,
                     "repo": head_repo},
            "base": {"label": "octo-org:main", "ref": "main", "sha": "c3" * 20,
                     "repo": REPOSITORY}}


def issue(number: int, is_pull_request: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"url": f"https://api.github.com/repos/{REPO}/issues/{number}",
                            "number": number, "title": "Roll out fraud v2", "state": "open",
                            "user": SENDER, "labels": []}
    if is_pull_request:
        data["pull_request"] = {"url": f"https://api.github.com/repos/{REPO}/pulls/{number}",
                                "html_url": f"https://github.com/{REPO}/pull/{number}"}
    return data


EVENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "pull_request": ("pull_request", {
        "action": "synchronize", "number": 42, "pull_request": pull_request(42, HEAD_SHA),
        "before": "d4" * 20, "after": HEAD_SHA, "repository": REPOSITORY, "sender": SENDER}),
    "pull_request_target": ("pull_request_target", {
        "action": "opened", "number": 43, "pull_request": pull_request(43, FORK_SHA, True),
        "repository": REPOSITORY, "sender": {**SENDER, "login": "mallory"}}),
    "issue_comment_on_pr": ("issue_comment", {
        "action": "created", "issue": issue(44, True),
        "comment": {"id": 5, "body": "/kpigate rollout", "user": SENDER},
        "repository": REPOSITORY, "sender": SENDER}),
    "issue_comment_on_issue": ("issue_comment", {
        "action": "created", "issue": issue(50, False),
        "comment": {"id": 6, "body": "/kpigate rollout", "user": SENDER},
        "repository": REPOSITORY, "sender": SENDER}),
    "push": ("push", {
        "ref": "refs/heads/promote-fraud", "before": "d4" * 20, "after": PUSH_SHA,
        "created": False, "deleted": False, "forced": False,
        "head_commit": {"id": PUSH_SHA, "message": "promotions/fraud.yaml: v2"},
        "commits": [{"id": PUSH_SHA, "message": "promotions/fraud.yaml: v2"}],
        "pusher": {"name": "alice"}, "repository": REPOSITORY, "sender": SENDER}),
    "workflow_dispatch": ("workflow_dispatch", {
        "inputs": {"model": "fraud", "version": "2", "pr-number": ""},
        "ref": "refs/heads/main", "workflow": ".github/workflows/kpigate.yml",
        "repository": REPOSITORY, "sender": SENDER}),
    "workflow_dispatch_input": ("workflow_dispatch", {
        "inputs": {"model": "fraud", "version": "2", "pr-number": "48"},
        "ref": "refs/heads/main", "workflow": ".github/workflows/kpigate.yml",
        "repository": REPOSITORY, "sender": SENDER}),
    "repository_dispatch": ("repository_dispatch", {
        "action": "kpigate-rollout", "branch": "main",
        "client_payload": {"model": "fraud", "version": "2", "alias": "challenger",
                           "pr_number": 46},
        "repository": REPOSITORY, "sender": SENDER}),
}


def event_file(tmp_path: Path, key: str, payload: dict[str, Any] | None = None) -> Path:
    path = tmp_path / f"event-{key}.json"
    path.write_text(json.dumps(payload if payload is not None else EVENTS[key][1]))
    return path


# --------------------------------------------------------------------------------------
# Running the command
# --------------------------------------------------------------------------------------

def runner_env(tmp_path: Path, api_url: str | None, *, event: str | None = None,
               token: str | None = WRITE_TOKEN, payload: dict[str, Any] | None = None,
               **extra: str | None) -> dict[str, str | None]:
    """The environment a runner gives the step (None: unset)."""
    output = tmp_path / "github_output"
    summary = tmp_path / "step_summary.md"
    output.touch()
    summary.touch()
    env: dict[str, str | None] = {
        "GITHUB_TOKEN": token, "GITHUB_REPOSITORY": REPO, "GITHUB_API_URL": api_url,
        "GITHUB_SERVER_URL": "https://github.com", "GITHUB_EVENT_NAME": None,
        "GITHUB_EVENT_PATH": None, "GITHUB_SHA": MERGE_SHA, "GITHUB_RUN_ID": "987654",
        "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary),
        "MLFLOW_TRACKING_URI": None, "KPIGATE_STATE_DIR": None,
    }
    if event is not None:
        env["GITHUB_EVENT_NAME"] = EVENTS[event][0]
        env["GITHUB_EVENT_PATH"] = str(event_file(tmp_path, event, payload))
    env.update(extra)
    return env


def cli(state_dir: Path, deployment: str, env: dict[str, str | None], *args: str):
    """``kpigate github report`` in-process; the result has exit_code, stdout, stderr."""
    return CliRunner().invoke(
        github_group, ["report", "--deployment", deployment, "--state-dir", str(state_dir),
                       *args], env=env, catch_exceptions=False)


SLEPT: list[float] = []


def fast_client(token: str, api_url: str) -> GitHubClient:
    """The real client with the waits between retries recorded instead of slept."""
    return GitHubClient(token, api_url, sleep=SLEPT.append)


def report(state_dir: Path, deployment: str, env: dict[str, str | None], capsys,
           **options: Any) -> tuple[int, str, str]:
    """``run_report`` with retries that do not sleep; (exit code, stdout, stderr)."""
    SLEPT.clear()
    clean = {k: v for k, v in env.items() if v is not None}
    code = run_report(ReportOptions(deployment, str(state_dir), **options), clean,
                      client_factory=fast_client)
    out, err = capsys.readouterr()
    return code, out, err


def parse_outputs(text: str) -> dict[str, str]:
    """The runner's reading of a GITHUB_OUTPUT file (``name<<DELIM`` blocks, ``k=v``)."""
    lines = text.split("\n")
    values: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            values[name] = "\n".join(lines[i + 1:end])
            i = end + 1
        else:
            name, value = line.split("=", 1)
            values[name] = value
            i += 1
    return values


def outputs_of(env: dict[str, str | None]) -> dict[str, str]:
    return parse_outputs(Path(env["GITHUB_OUTPUT"]).read_text(encoding="utf-8"))


def summary_of(env: dict[str, str | None]) -> str:
    return Path(env["GITHUB_STEP_SUMMARY"]).read_text(encoding="utf-8")


def table_cells(line: str) -> list[str]:
    """Cells of a markdown table row, split on unescaped pipes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


# --------------------------------------------------------------------------------------
# Which pull request: every event type
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "pr_option", "expected", "comment_pr"), [
    ("pull_request", None, 42, 42),
    ("pull_request_target", None, 43, 43),
    ("issue_comment_on_pr", None, 44, 44),
    ("issue_comment_on_issue", None, None, None),
    ("push", None, 45, 45),
    ("workflow_dispatch", "47", 47, 47),
    ("workflow_dispatch", None, None, None),
    ("workflow_dispatch_input", None, 48, 48),
    ("repository_dispatch", None, 46, 46),
])
def test_pull_request_number_from_each_event(tmp_path, deployments, fake, capsys, key,
                                             pr_option, expected, comment_pr):
    fake.add_pull(45, PUSH_SHA)
    fake.link_commit(PUSH_SHA, 45)
    env = runner_env(tmp_path, fake.url, event=key, GITHUB_SHA=PUSH_SHA if key == "push"
                     else MERGE_SHA)
    code, out, _ = report(deployments, "promoted", env, capsys, pr_number=pr_option)
    assert code == 0
    # the comment landed on the pull request the event names, or nowhere with a warning
    assert sorted(fake.comments) == ([comment_pr] if comment_pr else [])
    if expected is None:
        assert "::warning title=kpigate::no pull request to comment on" in out
        assert not fake.writes()
    else:
        assert f"created the comment on pull request #{expected}" in out
    assert summary_of(env).startswith("✅ **kpigate: fraud version 2 promoted** at 100%")


def test_issue_comment_on_a_plain_issue_says_why(tmp_path):
    found = from_payload("issue_comment", EVENTS["issue_comment_on_issue"][1])
    assert found.pull_request is None
    assert found.note == "the comment is on issue #50, which is not a pull request"


def test_payload_sha_that_is_not_a_sha_is_ignored():
    payload = {"pull_request": {"number": 9, "head": {"sha": "../../../user/repos"}}}
    found = from_payload("pull_request", payload)
    assert found.pull_request is not None
    assert (found.pull_request.number, found.pull_request.head_sha) == (9, None)


def test_push_resolves_through_the_commit_pulls_api(fake):
    fake.add_pull(45, PUSH_SHA, state="closed")
    fake.add_pull(51, PUSH_SHA, state="open")
    fake.link_commit(PUSH_SHA, 45, 51)
    client = GitHubClient(WRITE_TOKEN, fake.url)
    found = resolve("push", EVENTS["push"][1], explicit=None, sha=PUSH_SHA, client=client,
                    repo=REPO)
    assert found.pull_request is not None
    assert (found.pull_request.number, found.pull_request.head_sha) == (51, PUSH_SHA)
    assert [c.path for c in fake.calls] == [f"/repos/{REPO}/commits/{PUSH_SHA}/pulls"]
    # a commit in no pull request
    other = "c9" * 20
    found = resolve("push", EVENTS["push"][1], explicit=None, sha=other, client=client,
                    repo=REPO)
    assert found.pull_request is None
    assert "belongs to no pull request" in found.note


@pytest.mark.parametrize(("payload", "field"), [
    ({"client_payload": {"pr_number": "12; rm -rf"}}, "client_payload.pr_number"),
    ({"client_payload": {"pr_number": -3}}, "client_payload.pr_number"),
    ({"client_payload": {"pr_number": True}}, "client_payload.pr_number"),
])
def test_malformed_pr_number_in_repository_dispatch_is_a_usage_error(
        tmp_path, deployments, fake, payload, field):
    env = runner_env(tmp_path, fake.url, event="repository_dispatch", payload=payload)
    result = cli(deployments, "promoted", env)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {field}: ")
    assert "give a positive integer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not fake.calls
    assert outputs_of(env) == {}  # nothing written before the input was checked


def test_bad_pr_number_option_and_bad_environment_exit_2(tmp_path, deployments, fake):
    env = runner_env(tmp_path, fake.url)
    result = cli(deployments, "promoted", env, "--pr-number", "abc")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: --pr-number: 'abc' is not a pull request "
                                     "number; give a positive integer (or leave it empty)")
    env = runner_env(tmp_path, fake.url, GITHUB_REPOSITORY="not-a-repo")
    result = cli(deployments, "promoted", env)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: GITHUB_REPOSITORY: 'not-a-repo' is not OWNER/NAME")
    env = runner_env(tmp_path, "ftp://example.com")
    result = cli(deployments, "promoted", env)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: GITHUB_API_URL: 'ftp://example.com' is not an "
                                    "http(s) URL")
    result = cli(deployments, "no-such-rollout", runner_env(tmp_path, fake.url))
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --deployment no-such-rollout: no deployment in ")
    assert not (deployments / "no-such-rollout").exists()
    env = runner_env(tmp_path, fake.url, GITHUB_EVENT_NAME="push",
                     GITHUB_EVENT_PATH=str(tmp_path / "missing.json"))
    result = cli(deployments, "promoted", env)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: GITHUB_EVENT_PATH: cannot read ")
    assert not fake.calls


# --------------------------------------------------------------------------------------
# The sticky comment
# --------------------------------------------------------------------------------------

def test_comment_created_when_missing(tmp_path, deployments, fake, capsys):
    env = runner_env(tmp_path, fake.url, event="pull_request",
                     MLFLOW_TRACKING_URI=TRACKING)
    code, out, _ = report(deployments, "rolled-back", env, capsys)
    assert code == 3  # fail-on rollback (the default): rolled back
    assert [c.method for c in fake.writes()] == ["POST"]
    post = fake.writes()[0]
    assert post.path == f"/repos/{REPO}/issues/42/comments"
    assert post.authorization == f"Bearer {WRITE_TOKEN}"
    body = post.body["body"]
    first = body.splitlines()[0]
    assert first.startswith("❌ **kpigate: fraud version 2 rolled back** at 25%: rollback: "
                            "recall is confidently worse than the baseline")
    assert body.rstrip("\n").splitlines()[-1] == "<!-- kpigate:fraud -->"
    # per-stage KPI tables with estimates, intervals, margins, samples and verdicts
    assert "**Stage 0: canary-5**" in body
    assert "**Stage 1: canary-25**" in body
    header = next(line for line in body.splitlines() if line.startswith("| KPI |"))
    assert table_cells(header) == ["KPI", "role", "baseline", "candidate", "Δ (cand − base)",
                                   "bounds, + = better", "margin", "samples seen / needed",
                                   "verdict"]
    recall_rows = [table_cells(line) for line in body.splitlines()
                   if line.startswith("| recall |")]
    assert recall_rows[1][1] == "critical"
    assert recall_rows[1][-1] == "❌ worse"
    # the interval, its brackets escaped for markdown
    assert re.fullmatch(r"\\\[[-+][\d.e-]+, [-+][\d.e-]+\\\]", recall_rows[1][5])
    assert recall_rows[1][6] == "0.05"
    assert re.fullmatch(r"[\d,]+ / ([\d,]+|—)", recall_rows[1][7])
    # traffic timeline, Mermaid chart, details, links without the URI's credentials
    assert "#### Traffic timeline" in body
    assert "| candidate traffic |" in body.replace("| time | since start ", "| ")
    assert "```mermaid\nxychart-beta" in body
    assert "<details><summary>Every evaluation (3, newest first)</summary>" in body
    assert body.index("**Evaluation 3**") < body.index("**Evaluation 1**")
    assert ("[rollout run](http://mlflow.example:5000/#/runs/0123456789abcdef0123456789abcdef)"
            in body)
    assert "[candidate version 2](http://mlflow.example:5000/#/models/fraud/versions/2)" in body
    assert "[baseline version 1](http://mlflow.example:5000/#/models/fraud/versions/1)" in body
    assert f"(https://github.com/{REPO}/actions/runs/987654)" in body
    assert "secret" not in body
    assert "::error title=kpigate%3A fraud rolled back at 25%25::rollback%3A" not in out
    assert "::error title=kpigate%3A fraud rolled back at 25%25::rollback: recall" in out
    assert "created the comment on pull request #42" in out


def test_comment_on_page_3_of_3_updated_in_place(tmp_path, deployments, fake, capsys):
    fake.page_size = 2
    other = fake.add_comment(42, "earlier run of another model\n\n<!-- kpigate:fraud-v2 -->")
    fake.add_comment(42, "LGTM")
    fake.add_comment(42, "please check recall")
    fake.add_comment(42, "mentions <!-- kpigate:fraud --> inline, not as its own line")
    ours = fake.add_comment(42, "old report\n<!-- kpigate:fraud -->\n", "github-actions[bot]")
    env = runner_env(tmp_path, fake.url, event="pull_request")
    code, out, _ = report(deployments, "promoted", env, capsys)
    assert code == 0
    pages = [c.query.get("page", "1") for c in fake.calls if c.method == "GET"]
    assert pages == ["1", "2", "3"]
    assert [c.method for c in fake.writes()] == ["PATCH"]
    assert fake.writes()[0].path == f"/repos/{REPO}/issues/comments/{ours}"
    bodies = {c["id"]: c["body"] for c in fake.comments[42]}
    assert len(bodies) == 5
    assert bodies[ours].startswith("✅ **kpigate: fraud version 2 promoted** at 100%")
    assert has_marker(bodies[ours], "<!-- kpigate:fraud -->")
    assert bodies[other] == "earlier run of another model\n\n<!-- kpigate:fraud-v2 -->"
    assert "updated the comment on pull request #42" in out
    # running again updates the same comment again
    code, _, _ = report(deployments, "promoted", env, capsys)
    assert [c.method for c in fake.writes()] == ["PATCH", "PATCH"]
    assert len(fake.comments[42]) == 5


def test_comment_and_outputs_with_ghes_base_url(tmp_path, deployments, ghes, capsys):
    env = runner_env(tmp_path, ghes.url, event="issue_comment_on_pr")
    ghes.add_pull(44, HEAD_SHA)
    code, out, _ = report(deployments, "promoted", env, capsys, commit_status=True)
    assert code == 0
    assert ghes.url.endswith("/api/v3")
    # every request went under /api/v3 (the fake records others with their full path)
    assert ghes.calls
    assert all(c.path.startswith(f"/repos/{REPO}/") for c in ghes.calls)
    assert list(ghes.comments) == [44]
    assert ghes.statuses[HEAD_SHA][0]["state"] == "success"
    assert "created the comment on pull request #44" in out


# --------------------------------------------------------------------------------------
# Read-only tokens, failures, retries
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("deployment", "fail_on", "code"), [
    ("rolled-back", "rollback", 3), ("promoted", "rollback", 0), ("holding", "hold", 5),
    ("holding", "rollback", 0),
])
def test_read_only_token_warns_and_summary_is_still_written(
        tmp_path, deployments, fake, capsys, deployment, fail_on, code):
    env = runner_env(tmp_path, fake.url, event="pull_request_target", token=READ_TOKEN)
    exit_code, out, err = report(deployments, deployment, env, capsys, fail_on=fail_on,
                                 commit_status=True)
    assert exit_code == code
    assert not fake.comments
    assert not fake.statuses
    warnings = [line for line in out.splitlines()
                if line.startswith("::warning title=kpigate::")]
    assert len(warnings) == 2
    assert warnings[0].startswith("::warning title=kpigate::pull request #43: comment not "
                                  "posted (POST /repos/octo-org/models/issues/43/comments "
                                  "failed (HTTP 403: Resource not accessible by integration))")
    assert "pull requests from forks get a read-only token" in warnings[0]
    assert warnings[1].startswith("::warning title=kpigate::commit status not set")
    summary = summary_of(env)
    assert summary.splitlines()[0].startswith(("✅", "❌", "⏸️"))
    assert "<!-- kpigate:" not in summary
    assert outputs_of(env)["decision"] == deployment.replace("-", "_")
    for text in (out, err, summary):
        assert READ_TOKEN not in text


def test_missing_token_warns_and_summary_is_still_written(tmp_path, deployments, fake, capsys):
    env = runner_env(tmp_path, fake.url, event="pull_request", token=None)
    code, out, _ = report(deployments, "rolled-back", env, capsys, commit_status=True)
    assert code == 3
    assert "::warning title=kpigate::GITHUB_TOKEN is not set" in out
    assert not fake.calls
    assert summary_of(env).startswith("❌ **kpigate: fraud version 2 rolled back**")


def test_5xx_twice_then_success(tmp_path, deployments, fake, capsys):
    fake.fail(502, times=2)
    env = runner_env(tmp_path, fake.url, event="pull_request")
    code, out, _ = report(deployments, "promoted", env, capsys)
    assert code == 0
    assert [c.method for c in fake.calls] == ["GET", "GET", "GET", "POST"]
    assert SLEPT == [1.0, 2.0]  # exponential backoff between the three tries
    assert list(fake.comments) == [42]
    assert "::warning" not in out


@pytest.mark.parametrize(("deployment", "fail_on", "code"), [
    ("rolled-back", "rollback", 3), ("rolled-back", "never", 0), ("promoted", "hold", 0),
])
def test_5xx_forever_is_bounded_and_warns(tmp_path, deployments, fake, capsys, deployment,
                                          fail_on, code):
    fake.fail(503)
    env = runner_env(tmp_path, fake.url, event="pull_request")
    exit_code, out, _ = report(deployments, deployment, env, capsys, fail_on=fail_on,
                               commit_status=True)
    assert exit_code == code
    # three tries for the comment lookup, three for the status; nothing else
    assert [c.method for c in fake.calls] == ["GET"] * 3 + ["POST"] * 3
    assert SLEPT == [1.0, 2.0, 1.0, 2.0]
    warnings = [line for line in out.splitlines()
                if line.startswith("::warning title=kpigate::")]
    assert warnings[0] == ("::warning title=kpigate::pull request #42: comment not posted "
                           "(GET /repos/octo-org/models/issues/42/comments failed after 3 "
                           "attempts (HTTP 503: Server Error)); the report is in the job "
                           "summary")
    assert "commit status not set" in warnings[1]
    assert summary_of(env)
    assert outputs_of(env)["decision"] == deployment.replace("-", "_")


def test_client_retries_connection_errors_then_gives_up():
    # a port nothing listens on: bind, note the port, close
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slept: list[float] = []
    client = GitHubClient(WRITE_TOKEN, f"http://127.0.0.1:{port}", attempts=4,
                          backoff_s=0.5, sleep=slept.append)
    with pytest.raises(GitHubError) as info:
        client.request("GET", f"/repos/{REPO}/pulls/1")
    assert slept == [0.5, 1.0, 2.0]
    assert "failed after 4 attempts" in str(info.value)
    assert WRITE_TOKEN not in str(info.value)


def test_retry_after_is_honoured_when_short(fake):
    slept: list[float] = []
    client = GitHubClient(WRITE_TOKEN, fake.url, sleep=slept.append)
    fake.add_pull(7, HEAD_SHA)
    fake.fail(429, times=1, retry_after="3")
    assert client.request("GET", f"/repos/{REPO}/pulls/7").data["head"]["sha"] == HEAD_SHA
    assert slept == [3.0]
    # a wait longer than the client will sit through fails at once
    fake.fail(403, times=1, retry_after="3600")
    with pytest.raises(GitHubError, match=r"HTTP 403: rate limited") as info:
        client.request("GET", f"/repos/{REPO}/pulls/7")
    # a rate limit, not a token without rights
    assert not isinstance(info.value, GitHubPermissionError)
    assert slept == [3.0]
    assert len(fake.calls) == 3


def test_401_and_403_are_permission_errors_not_retried(fake):
    slept: list[float] = []
    client = GitHubClient("ghs_unknownToken000000000000000000", fake.url, sleep=slept.append)
    with pytest.raises(GitHubPermissionError) as info:
        client.request("GET", f"/repos/{REPO}/pulls/1")
    assert info.value.status == 401
    assert "Bad credentials" in str(info.value)
    client = GitHubClient(READ_TOKEN, fake.url, sleep=slept.append)
    with pytest.raises(GitHubPermissionError) as info:
        client.request("POST", f"/repos/{REPO}/issues/1/comments", {"body": "x"})
    assert info.value.status == 403
    assert slept == []
    assert len(fake.calls) == 2


# --------------------------------------------------------------------------------------
# Commit status
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("deployment", "state"), [
    ("promoted", "success"), ("rolled-back", "failure"), ("aborted", "error"),
    ("holding", "pending"),
])
def test_commit_status_on_the_pull_request_head(tmp_path, deployments, fake, capsys,
                                                deployment, state):
    env = runner_env(tmp_path, fake.url, event="pull_request")
    report(deployments, deployment, env, capsys, fail_on="never", commit_status=True,
           comment=False)
    # the PR's head commit, not GITHUB_SHA (the merge commit a pull_request run checks out)
    assert list(fake.statuses) == [HEAD_SHA]
    status = fake.statuses[HEAD_SHA][0]
    assert status["state"] == state
    assert status["context"] == "kpigate/fraud"
    assert status["target_url"] == f"https://github.com/{REPO}/actions/runs/987654"
    assert 0 < len(status["description"]) <= 140
    assert not fake.comments


def test_commit_status_head_from_the_pulls_api(tmp_path, deployments, fake, capsys):
    fake.add_pull(46, HEAD_SHA)
    env = runner_env(tmp_path, fake.url, event="repository_dispatch")
    code, out, _ = report(deployments, "rolled-back", env, capsys, commit_status=True,
                          comment=False, model="fraud-detector")
    assert code == 3
    assert [c.path for c in fake.calls] == [f"/repos/{REPO}/pulls/46",
                                            f"/repos/{REPO}/statuses/{HEAD_SHA}"]
    status = fake.statuses[HEAD_SHA][0]
    assert (status["state"], status["context"]) == ("failure", "kpigate/fraud-detector")
    assert status["description"].startswith("rolled back at 25%: rollback: recall is")
    assert f"commit status kpigate/fraud-detector = failure on {HEAD_SHA[:12]}" in out


# --------------------------------------------------------------------------------------
# Outputs, summary, annotations
# --------------------------------------------------------------------------------------

def test_outputs_file_parses_back_exactly():
    values = {
        "decision": "rolled_back",
        "multi": "line one\nline two\n\nline four with trailing spaces   ",
        "sneaky": "x\nghadelimiter_0000\nother<<EOF\ninjected=1\nEOF",
        "empty": "",
        "unicode": "Δ ≤ 5% — ✅",
    }
    text = format_outputs(values)
    assert parse_outputs(text) == values
    # each value has its own random delimiter, fresh on every write
    delimiters = [line.split("<<", 1)[1] for line in (text + format_outputs(values))
                  .splitlines() if line.split("<<", 1)[0] in values]
    assert len(delimiters) == len(set(delimiters)) == 10
    with pytest.raises(ValueError, match="output name"):
        format_outputs({"bad\nname": "x"})


def test_command_outputs_and_summary(tmp_path, deployments, fake, capsys):
    env = runner_env(tmp_path, fake.url, event="pull_request")
    Path(env["GITHUB_OUTPUT"]).write_text("earlier=step\n")
    code, out, _ = report(deployments, "holding", env, capsys, fail_on="hold")
    assert code == 5
    outputs = outputs_of(env)
    assert outputs == {
        "earlier": "step",
        "decision": "holding",
        "final-stage": "5%",
        "rollout-run-id": "0123456789abcdef0123456789abcdef",
        "report-path": str(deployments / "holding" / "report"),
    }
    assert (Path(outputs["report-path"]) / "report.md").is_file()
    assert (Path(outputs["report-path"]) / "report.html").is_file()
    summary = summary_of(env)
    # markdown specials in the reason are escaped (max\_duration renders as max_duration)
    assert summary.startswith("⏸️ **kpigate: fraud version 2 holding** at 5%: hold "
                              "(max\\_duration 1h reached, alerting)")
    assert "<details>" in summary
    annotations = [line for line in out.splitlines() if line.startswith("::")]
    # in the message only %, CR and LF are escaped; the title escapes ':' and ',' too
    assert annotations[0].startswith("::warning title=kpigate%3A fraud holding at 5%25::hold "
                                     "(max_duration 1h reached, alerting): recall")


@pytest.mark.parametrize(("deployment", "command"), [
    ("promoted", "notice"), ("rolled-back", "error"), ("aborted", "error"),
    ("holding", "warning"),
])
def test_annotation_per_outcome(tmp_path, deployments, deployment, command, capsys):
    env = runner_env(tmp_path, None, token=None)
    code, out, _ = report(deployments, deployment, env, capsys, comment=False,
                          fail_on="never")
    assert code == 0
    assert [line.split(" ", 1)[0] for line in out.splitlines()
            if line.startswith("::")] == [f"::{command}"]


def test_workflow_command_escaping():
    line = workflow_command("error", "50% worse\r\nsecond line ::set-output name=x::1",
                            title="kpigate: a,b")
    assert line == ("::error title=kpigate%3A a%2Cb::50%25 worse%0D%0Asecond line "
                    "::set-output name=x::1")
    assert "\n" not in line
    assert "\r" not in line
    assert escape_data("a%b") == "a%25b"
    assert escape_property("k:v,w") == "k%3Av%2Cw"


# --------------------------------------------------------------------------------------
# Escaping untrusted text; the comment size limit
# --------------------------------------------------------------------------------------

def test_untrusted_reason_and_model_render_safely(tmp_path, policy, fake, capsys):
    root = tmp_path / "state"
    model = "fraud-->x<b>|`y`"
    build_deployment(root, policy, "evil", "rolled_back", model=model, reason=EVIL)
    env = runner_env(tmp_path, fake.url, event="pull_request")
    code, out, _ = report(root, "evil", env, capsys)
    assert code == 3
    body = fake.writes("POST")[0].body["body"]
    lines = body.splitlines()
    first = lines[0]
    # one line, entities instead of tags, pipes and backticks escaped, no @-mention
    assert "<script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in first
    assert r"bad \| " in first
    assert r"\`rm -rf\`" in first
    assert "@octo-org" not in body
    assert "@\u200bocto-org/admins" in first
    assert "second line" in first  # the newline was flattened, not kept
    assert not any(line.startswith("second line") for line in lines)
    assert "<b>" not in body
    # the reason sits in one table cell of the summary table
    outcome_row = next(line for line in lines if line.startswith("| outcome |"))
    assert len(table_cells(outcome_row)) == 2
    # the marker is one HTML comment that ends where it should
    mark = lines[-1]
    assert mark == marker(model)
    assert mark.startswith("<!-- kpigate:")
    assert mark.endswith(" -->")
    assert mark.count("--") == 2
    assert "<" not in mark[4:]
    assert ">" not in mark[:-1]
    assert marker(model) != marker("fraud")
    # the annotation is one line with the newline encoded; no line of the output can be
    # read as another workflow command
    error = next(line for line in out.splitlines() if line.startswith("::error"))
    assert all(line.startswith(("::error ", "::warning ", "kpigate: ")) for line in
               out.splitlines()), out
    assert out.splitlines()[-1].startswith("kpigate: fraud-->x<b>|`y` rolled back at 25%: "
                                           "bad | <script>")
    assert "bad | <script>alert(1)</script> `rm -rf` @octo-org/admins%0Asecond line" in error
    # the job summary escapes the same way
    summary = summary_of(env)
    assert "<script>" not in summary
    assert "<b>" not in summary


def test_marker_encoding():
    assert marker("fraud") == "<!-- kpigate:fraud -->"
    assert marker("fraud-model") == "<!-- kpigate:fraud-model -->"
    assert marker("a--b") == "<!-- kpigate:a%2D%2Db -->"
    assert marker("a-->b") == "<!-- kpigate:a%2D%2D%3Eb -->"
    assert marker("x y") == "<!-- kpigate:x%20y -->"
    assert marker("modèle") == "<!-- kpigate:mod%C3%A8le -->"
    assert len({marker(m) for m in ("a-b", "a_b", "a.b", "a b", "a%2Db")}) == 5


def test_long_rollout_is_cut_in_the_details_not_the_headline(deployments, policy, fake):
    store = RolloutStore(deployments / "rolled-back")
    real = [CommentEvaluation(e.ts, e.evaluation.decision, e.traffic_percent)
            for e in History.of(store.events()).evaluations()]
    # 250 evaluations: the first (a hold at 5%) repeated, then the real promote + rollback
    evaluations = tuple([real[0]] * 248 + real[1:])
    record = RolloutRecord(store.require(), evaluations, ((time.time(), 5.0),), "25%", policy)
    full = render(record, Links(), limit=10_000_000)
    assert len(full) > MAX_COMMENT_CHARS
    body = render(record, Links())
    assert len(body) <= MAX_COMMENT_CHARS
    assert body.splitlines()[0] == full.splitlines()[0]
    assert body.splitlines()[0].startswith("❌ **kpigate: fraud version 2 rolled back** at 25%")
    assert body.rstrip("\n").endswith("</details>\n\n<!-- kpigate:fraud -->")
    assert "older evaluations cut" in body
    assert "**Evaluation 250**" in body  # newest kept
    assert "**Evaluation 1** (" not in body  # oldest cut
    # the head is complete: both stage tables and the charts
    head = full.split("<details>")[0]
    assert body.startswith(head)
    # the chart is sampled, not one point per evaluation
    chart = re.search(r"```mermaid\nxychart-beta\n(.*?)```", body, re.S).group(1)
    assert len(re.search(r"line \[(.*)\]", chart).group(1).split(",")) <= 60
    # GitHub (the fake) accepts it
    client = GitHubClient(WRITE_TOKEN, fake.url)
    result = upsert_comment(client, REPO, 42, "fraud", body)
    assert result.action == "created"
    assert fake.comments[42][0]["body"] == body


def test_links_only_for_http_tracking_uris(deployments):
    state = RolloutStore(deployments / "promoted").require()
    assert mlflow_links("sqlite:///mlflow.db", state) == Links()
    assert mlflow_links("databricks", state, "https://x/run") == Links(
        workflow_run="https://x/run")
    links = mlflow_links("https://mlflow.example/prefix/", state)
    assert links.mlflow_run == ("https://mlflow.example/prefix/#/runs/"
                                "0123456789abcdef0123456789abcdef")
    assert links.candidate_version == "https://mlflow.example/prefix/#/models/fraud/versions/2"


# --------------------------------------------------------------------------------------
# The token stays secret
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def second_server():
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture
def echo_server(second_server):
    """A server whose errors echo the Authorization header back (as a careless proxy)."""
    def echo(request: Request) -> Response:
        message = f"rejected credentials {request.headers.get('Authorization')}"
        return Response(json.dumps({"message": message}), status=400,
                        content_type="application/json")

    second_server.expect_request(re.compile(".*")).respond_with_handler(echo)
    yield second_server
    second_server.clear()


def test_token_never_printed_even_when_echoed(tmp_path, deployments, echo_server, capsys):
    api = echo_server.url_for("/").rstrip("/")
    env = runner_env(tmp_path, api, event="pull_request")
    code, out, err = report(deployments, "rolled-back", env, capsys, commit_status=True)
    assert code == 3
    assert "rejected credentials Bearer ***" in out
    for text in (out, err, summary_of(env), Path(env["GITHUB_OUTPUT"]).read_text()):
        assert WRITE_TOKEN not in text
    # the client's own error text is redacted too
    client = GitHubClient(WRITE_TOKEN, api)
    with pytest.raises(GitHubError) as info:
        client.request("GET", "/repos/x/y/pulls/1")
    assert WRITE_TOKEN not in str(info.value)
    assert WRITE_TOKEN not in repr(client)


@pytest.mark.parametrize("scenario", ["ok", "forbidden", "usage-error", "bad-credentials"])
def test_token_never_in_stdout_stderr_or_summary(tmp_path, deployments, fake, scenario):
    token = {"forbidden": READ_TOKEN, "bad-credentials": "ghs_revokedToken1234567890"}.get(
        scenario, WRITE_TOKEN)
    extra = {"GITHUB_REPOSITORY": "bad repo"} if scenario == "usage-error" else {}
    env = runner_env(tmp_path, fake.url, event="pull_request", token=token, **extra)
    fake.add_pull(42, HEAD_SHA)
    result = cli(deployments, "rolled-back", env, "--commit-status", "--fail-on", "never")
    assert result.exit_code == (2 if scenario == "usage-error" else 0)
    for text in (result.stdout, result.stderr, summary_of(env),
                 Path(env["GITHUB_OUTPUT"]).read_text()):
        assert token not in text
    if scenario == "bad-credentials":
        assert "HTTP 401: Bad credentials" in result.stdout


def test_token_not_sent_across_origins(api_server, second_server):
    """A redirect or a next-page link to another host never gets the token."""
    other = second_server.url_for("/next")
    seen: list[str | None] = []

    def record(request: Request, response: Response) -> Response:
        seen.append(request.headers.get("Authorization"))
        return response

    api_server.clear()
    api_server.expect_request("/api/start").respond_with_handler(
        lambda r: record(r, Response("", status=307, headers={"Location": "/api/moved"})))
    api_server.expect_request("/api/moved").respond_with_handler(
        lambda r: record(r, Response("", status=307, headers={"Location": other})))
    second_server.expect_request("/next").respond_with_handler(
        lambda r: record(r, Response("{}", status=200, content_type="application/json")))
    try:
        client = GitHubClient(WRITE_TOKEN, api_server.url_for("/api"))
        client.request("GET", "/start")
        # same origin: the token follows; another origin: it does not
        assert seen == [f"Bearer {WRITE_TOKEN}", f"Bearer {WRITE_TOKEN}", None]
        api_server.expect_request("/api/list").respond_with_json(
            [1], headers={"Link": f'<{other}>; rel="next"'})
        with pytest.raises(GitHubError, match="another host"):
            list(client.paginate("/list"))
        assert len(seen) == 3
    finally:
        api_server.clear()
        second_server.clear()


# --------------------------------------------------------------------------------------
# Exit codes: --fail-on × every outcome, through the command
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("deployment", "codes"), [
    ("promoted", {"rollback": 0, "hold": 0, "never": 0}),
    ("rolled-back", {"rollback": 3, "hold": 3, "never": 0}),
    ("aborted", {"rollback": 4, "hold": 4, "never": 0}),
    ("holding", {"rollback": 0, "hold": 5, "never": 0}),
])
def test_exit_code_per_fail_on(tmp_path, deployments, deployment, codes):
    for fail_on, code in codes.items():
        env = runner_env(tmp_path, None, token=None)
        result = cli(deployments, deployment, env, "--no-comment", "--fail-on", fail_on)
        assert result.exit_code == code, (fail_on, result.stdout, result.stderr)
        assert outputs_of(env)["decision"] == deployment.replace("-", "_")


def test_report_written_when_missing(tmp_path, policy, capsys):
    root = tmp_path / "state"
    directory = build_deployment(root, policy, "fresh", "holding", report=False)
    assert not (directory / "report").exists()
    env = runner_env(tmp_path, None, token=None)
    code, _, _ = report(root, "fresh", env, capsys, comment=False)
    assert code == 0
    assert outputs_of(env)["report-path"] == str(directory / "report")
    assert (directory / "report" / "report.md").is_file()
    assert (directory / "report" / "traffic.png").is_file()


def test_as_a_process_outside_actions(deployments, tmp_path):
    """No runner variables: the outcome line, notes on stderr, the exit code."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "mlflow_kpigate.cli.github", "report", "--deployment",
           "rolled-back", "--state-dir", str(deployments)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 3, proc.stderr
    assert "GITHUB_OUTPUT is not set" in proc.stderr
    assert "::warning title=kpigate::GITHUB_TOKEN is not set" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith(
        "kpigate: fraud rolled back at 25%: rollback: recall")


def test_usage_error_class_is_used_for_bad_input():
    with pytest.raises(UsageError, match=r"inputs\.pr-number: '0' is not a pull request"):
        from_payload("workflow_dispatch", {"inputs": {"pr-number": "0"}})
