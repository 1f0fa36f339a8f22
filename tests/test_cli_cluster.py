"""The rollout commands on a cluster rollout: ``kpigate status|watch|promote|rollback|pause|
resume|report|replay|list -t kpigate:/seldon/NS`` (or ``--namespace NS``).

Real parts: the ``kubernetes`` client over HTTP to the fake API server (tests/fake_kube.py),
the rollout's ConfigMaps made by the real ``start_rollout`` and moved by the real
controller (tests/_cluster_rollout.py), a real MLflow store (local SQLite) for the
registry effects of operator actions, and the ``kpigate`` command run in-process (click's
runner) and as a subprocess where its exit code is what is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cluster_rollout import NS, ClusterRollout, start
from click.testing import CliRunner
from fake_kube import fake_kube  # noqa: F401  (fixture)

from mlflow_kpigate.cli import main
from mlflow_kpigate.core.decision import Action
from mlflow_kpigate.core.events import Aborted
from mlflow_kpigate.core.state import Phase
from mlflow_kpigate.rollout import transitions


@pytest.fixture
def tracking_uri(local_tracking_uri: str) -> str:
    """A fresh local MLflow store (this module's rollouts need no server)."""
    return local_tracking_uri


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def kpigate(*args: str, rollout: ClusterRollout | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if rollout is not None:
        env["MLFLOW_TRACKING_URI"] = rollout.tracking_uri
    return subprocess.run([sys.executable, "-m", "mlflow_kpigate.cli", *args],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


@pytest.fixture
def rollout(fake_kube, tracking_uri, tmp_path) -> ClusterRollout:  # noqa: F811
    return start(fake_kube.kubeconfig, tracking_uri, tmp_path)


@pytest.fixture
def promoted_once(rollout) -> ClusterRollout:
    """hold (too little data), then promote to 50%."""
    rollout.feed(0, n=150, seed=1)
    assert rollout.step().action is Action.HOLD
    rollout.feed(0, n=6000, seed=2)
    assert rollout.step().action is Action.PROMOTE
    return rollout


def _rolled_back(r: ClusterRollout) -> None:
    """The candidate fails at 50%: the controller rolls it back (a third evaluation)."""
    r.feed(1, n=8000, cand_error=0.3, seed=3)
    assert r.step().action is Action.ROLLBACK


def test_status_shows_namespace_backend_and_evidence(promoted_once):
    r = promoted_once
    code, out, err = cli("status", r.name, *r.cli_args())
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{r.name}: canary at 50% — baseline 50%, candidate 50%"
    assert lines[1] == f"  candidate models:/{r.model}/2  baseline models:/{r.model}/1"
    state = r.store.require()
    assert lines[2] == (f"  namespace {NS}, backend seldon-v1, 2 evaluations, rollout run "
                        f"{state.rollout_run_id}")
    assert not any("endpoint" in line or "running" in line for line in lines)
    assert lines[3] == f"  last: {state.reason}"
    assert "  evidence (anytime-valid bounds, positive = candidate better):" in lines
    assert any(line.split()[:2] == ["error_rate", "critical"] for line in lines)
    assert any(line.strip().startswith("forecast:") for line in lines)


def test_target_and_namespace_name_the_same_rollout(promoted_once):
    r = promoted_once
    rest = ["--kubeconfig", str(r.kubeconfig), "--state-dir", str(r.state_dir)]
    by_namespace = cli("status", r.name, "--namespace", NS, *rest)
    by_target = cli("status", r.name, "-t", r.target, *rest)
    both = cli("status", r.name, "-t", f"{r.target}/", "--namespace", NS, *rest)
    assert by_namespace[0] == by_target[0] == both[0] == 0
    assert by_namespace[1] == by_target[1] == both[1]


def test_status_json_holds_the_deployment_and_its_last_decision(promoted_once):
    r = promoted_once
    code, out, err = cli("status", r.name, *r.cli_args(), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["name"], info["namespace"], info["backend"]) == (r.name, NS, "seldon-v1")
    assert (info["phase"], info["stage_index"], info["paused"]) == ("canary", 1, False)
    assert info["last_decision"]["action"] == "promote"
    assert {e["kpi"] for e in info["last_decision"]["evidence"]} == {"error_rate", "accuracy"}


def _candidate_traffic(fake, name: str) -> int | None:
    sdep = fake.get_object("seldondeployments", NS, name)
    shares = {p["name"]: p.get("traffic") for p in sdep["spec"]["predictors"]}
    return shares.get("candidate")


def test_operator_actions_change_the_stored_state_and_the_cluster(promoted_once, fake_kube):  # noqa: F811
    r = promoted_once
    code, out, err = cli("pause", r.name, *r.cli_args())
    assert (code, out) == (0, f"{r.name}: canary at 50% — baseline 50%, candidate 50%\n"), err
    assert r.store.require().paused
    code, out, err = cli("resume", r.name, *r.cli_args())
    assert code == 0, err
    assert out == f"{r.name}: evaluations resumed at 50% — baseline 50%, candidate 50%\n"
    assert not r.store.require().paused
    code, out, err = cli("resume", r.name, *r.cli_args())
    assert (code, out) == (0, f"{r.name}: not paused (canary); nothing to resume\n"), err

    code, out, err = cli("rollback", r.name, *r.cli_args())
    assert code == 0, err
    state = r.store.require()
    assert (state.phase, state.effects_pending) == (Phase.ROLLED_BACK, False)
    assert out.startswith(f"{r.name}: rolled_back at ")
    assert _candidate_traffic(fake_kube, r.name) is None  # candidate predictor removed
    kinds = [rec.kind for rec in r.store.events()]
    for kind in ("operator_pause", "operator_resume", "operator_rollback"):
        assert kind in kinds
    # a steer of an ended rollout is bad input: one line, exit 2
    code, _out, err = cli("promote", r.name, *r.cli_args())
    assert code == 2
    assert len(err.strip().splitlines()) == 1


def test_list_shows_the_namespaces_rollouts(promoted_once, fake_kube, tracking_uri, tmp_path):  # noqa: F811
    r = promoted_once
    other = start(fake_kube.kubeconfig, tracking_uri, tmp_path, name="churn")
    assert other.store.require().phase.value == "canary"
    code, out, err = cli("list", *r.cli_args())
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "PHASE", "STAGE", "TRAFFIC", "LAST", "DECISION"]
    by_name = {row.split()[0]: row for row in rows}
    assert set(by_name) == {"fraud", "churn"}
    assert by_name["fraud"].split()[:3] == ["fraud", "canary", "50%"]
    assert "baseline 50%, candidate 50%" in by_name["fraud"]
    assert "promote: " in by_name["fraud"]
    assert by_name["churn"].split()[:3] == ["churn", "canary", "5%"]
    assert by_name["churn"].rstrip().endswith("-")  # no decision yet
    # every column starts where its header does
    starts = [header.index(h) for h in ("PHASE", "STAGE", "TRAFFIC", "LAST DECISION")]
    for row in rows:
        assert all(row[i - 1] == " " and row[i] != " " for i in starts), row

    code, out, err = cli("list", *r.cli_args(), "--json")
    assert code == 0, err
    assert sorted(d["name"] for d in json.loads(out)) == ["churn", "fraud"]
    code, out, err = cli("list", "--namespace", "empty", "--kubeconfig", str(r.kubeconfig))
    assert (code, out) == (0, "no rollouts (kpigate:/seldon/empty)\n"), err


def test_report_and_replay_of_a_cluster_rollout(promoted_once):
    r = promoted_once
    _rolled_back(r)
    code, out, err = cli("report", r.name, *r.cli_args())
    assert code == 0, err
    md, html = (Path(line) for line in out.splitlines())
    assert md.parent == r.state_dir / "seldon" / NS / r.name / "report"
    assert "rolled back" in md.read_text().lower()
    assert html.is_file()

    code, out, err = cli("replay", r.name, *r.cli_args())
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{r.name} (kpigate:/seldon/{NS}): 3 recorded evaluations")
    assert "  identical: 3, " in out
    assert "no divergence" in out


def _watch(r: ClusterRollout, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": r.tracking_uri}
    return subprocess.Popen([sys.executable, "-m", "mlflow_kpigate.cli", "watch", r.name,
                             *r.cli_args(), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _abort(r: ClusterRollout) -> None:
    state = r.store.require()
    ended = transitions.rollback(state, "aborted by the test", Phase.ABORTED)
    r.store.save(ended, Aborted(r.policy.stages[ended.stage_index].describe(),
                                ended.weights.describe(), 0.0, "test"))


def _promote_to_the_end(r: ClusterRollout) -> None:
    """The operator promotes from 50% to the last stage, 100%: promoted (no bake)."""
    code, out, err = cli("promote", r.name, *r.cli_args())
    assert code == 0, err
    assert out.startswith(f"{r.name}: promoted at 100%")
    assert r.store.require().phase is Phase.PROMOTED


@pytest.mark.parametrize(("drive", "code", "last"), [
    (_promote_to_the_end, 0, "promoted"),
    (_rolled_back, 3, "rolled_back"),
    (_abort, 4, "aborted"),
], ids=["promoted", "rolled_back", "aborted"])
def test_watch_follows_the_rollout_live_and_exits_with_its_outcome(promoted_once, drive,
                                                                   code, last):
    r = promoted_once
    proc = _watch(r)
    try:
        assert proc.stdout is not None
        kinds: list[str] = []
        while "promote" not in kinds:  # the history so far: the watch is following
            line = proc.stdout.readline()
            assert line, proc.communicate()
            if not line.startswith(" "):
                kinds.append(line.split()[1])
        assert [k for k in kinds if k != "resumed"] == ["created", "hold", "promote"]
        assert proc.poll() is None  # still watching: the rollout has not ended
        drive(r)
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, err
    final = rest.splitlines()[-1]
    assert final.startswith(f"{r.name}: {last} — "), rest
    assert "Traceback" not in err


def test_watch_timeout_exits_5_while_the_rollout_goes_on(promoted_once):
    r = promoted_once
    result = kpigate("watch", r.name, *r.cli_args(), "--timeout", "0", rollout=r)
    assert result.returncode == 5, result.stderr
    assert result.stdout.splitlines()[-1] == f"{r.name}: still canary (stopped watching)"


def _bad(*args: str) -> str:
    result = kpigate(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_targets_are_one_line_and_exit_2(rollout):
    r = rollout
    kc = ["--kubeconfig", str(r.kubeconfig)]
    assert "unknown kpigate target" in _bad("status", r.name, "-t", "kpigate:/nowhere")
    line = _bad("status", r.name, "-t", "kpigate:/seldon/other", "--namespace", NS, *kc)
    assert line.startswith(f"Error: --namespace {NS} and -t kpigate:/seldon/other ")
    assert "--namespace" in _bad("list", "-t", "kpigate", "--namespace", NS)
    assert "--namespace: " in _bad("status", r.name, "--namespace", "Not_A_Namespace")
    assert "--kubeconfig: only for a cluster rollout" in _bad("status", r.name, *kc)
    assert "file not found" in _bad("status", r.name, "--namespace", NS, "--kubeconfig",
                                    str(r.state_dir / "missing"))


@pytest.mark.parametrize("command", ["status", "watch", "report", "replay", "promote",
                                     "rollback", "pause", "resume"])
def test_a_missing_cluster_rollout_is_one_line_and_exit_2(rollout, command):
    line = _bad(command, "nosuch", *rollout.cli_args())
    assert "no kpigate rollout named 'nosuch' in namespace models" in line, line


def test_local_targets_do_not_import_the_kubernetes_client(tmp_path):
    code = ("import atexit, runpy, sys\n"
            "atexit.register(lambda: print('kubernetes' in sys.modules, file=sys.stderr))\n"
            f"sys.argv = ['kpigate', 'list', '--state-dir', {str(tmp_path)!r}]\n"
            "runpy.run_module('mlflow_kpigate.cli', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no rollouts (kpigate)\n"
    assert result.stderr.strip().splitlines()[-1] == "False"


def test_a_store_that_loses_the_rollout_ends_the_follow_with_its_last_state(promoted_once):
    from mlflow_kpigate.core.errors import KpigateError
    from mlflow_kpigate.deploy.targets import deployer_for

    r = promoted_once
    config = {"kubeconfig": str(r.kubeconfig), "state_dir": str(r.state_dir)}
    polls = deployer_for(r.target).follow(r.name, config, interval_s=0)
    first = next(polls)
    assert [rec.kind for rec in first.records if rec.kind != "resumed"] == [
        "created", "hold", "promote"]
    r.store.configmaps.delete(r.store.configmap_name)  # the rollout is deleted meanwhile
    with pytest.raises(KpigateError, match="removed or replaced while it was followed; it "
                                           "was last canary"):
        next(polls)
