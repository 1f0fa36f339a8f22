"""The kpigate MLflow target end to end: the real `mlflow deployments` CLI and Python API,
a real MLflow tracking server, real models, the real router, controller and supervisor."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from _plugin_models import COLUMNS, FAST, register_good_and_broken
from mlflow_cli import mlflow_deployments
from sklearn.linear_model import LogisticRegression

from mlflow_kpigate.backends.local.state_store import RolloutStore


@pytest.fixture(scope="module")
def env(mlflow_server, tmp_path_factory):
    """Tracking server, a registered model with 3 versions, a state dir and policies."""
    root = tmp_path_factory.mktemp("plugin")
    mlflow.set_tracking_uri(mlflow_server.uri)
    name = "plugin-model"
    x, y = register_good_and_broken(name, root)
    with mlflow.start_run():  # version 4: MLflow's default predict returns labels
        mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model",
                                 registered_model_name=name, input_example=x.head(2))
    (root / "fast.yaml").write_text(FAST)
    (root / "auc.yaml").write_text(FAST + "  - {name: auc, kind: auc, role: success}\n")
    (root / "bad.yaml").write_text(FAST.replace("margin: 0.2", "margin: -1"))
    environ = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
               "KPIGATE_STATE_DIR": str(root / "state"), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    yield {"root": root, "name": name, "env": environ, "x": x, "y": y}
    # Stop anything a failed test left running.
    for d in (root / "state").glob("*"):
        if (d / "pids.json").exists():
            from mlflow_kpigate.deploy.local_processes import stop_processes

            stop_processes(d)


def mlflow_cli(env, *args, timeout=300):
    return mlflow_deployments([*args, "-t", "kpigate"], env=env["env"], timeout=timeout)


def kpigate(env, *args):
    return subprocess.run([sys.executable, "-m", "mlflow_kpigate.cli", *args],
                          capture_output=True, text=True, env=env["env"], timeout=120)


def endpoint(env, name):
    state = RolloutStore(Path(env["env"]["KPIGATE_STATE_DIR"]) / name).require()
    return f"http://127.0.0.1:{state.port}"


def send(env, name, n, *, labels=True, seed=1):
    """n single-row requests, each followed by its label; returns the roles served."""
    url = endpoint(env, name)
    rng = np.random.default_rng(seed)
    roles = []
    for _ in range(n):
        row = rng.normal(size=4)
        truth = int(row[0] + rng.normal() > 1)
        body = json.dumps({"dataframe_split": {"columns": COLUMNS,
                                               "data": [row.tolist()]}}).encode()
        req = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
            rid = resp.headers["X-Kpigate-Request-Id"]
            roles.append(resp.headers["X-Kpigate-Role"])
            resp.read()
        if labels:
            fb = urllib.request.Request(f"{url}/feedback", data=json.dumps(
                {"request_id": rid, "label": truth}).encode(),
                headers={"Content-Type": "application/json"})
            urllib.request.urlopen(fb, timeout=30).read()
    return roles


def wait_phase(env, name, phases, timeout=120):
    store = RolloutStore(Path(env["env"]["KPIGATE_STATE_DIR"]) / name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = store.require()
        if state.phase.value in phases and not state.effects_pending:
            return state
        time.sleep(0.3)
    raise AssertionError(f"{name} stayed {store.require().phase.value}: "
                         f"{store.require().reason}")


@pytest.mark.parametrize(("args", "needle"), [
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "colour=red"],
     "-C colour: unknown config key"),
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "port=80"],
     "-C port=80: must be between 1024 and 65535"),
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "wait=maybe"],
     "-C wait=maybe: must be true or false"),
    (["--name", "x", "-m", "models:/plugin-model"], "LoggedModel"),
    (["--name", "x", "-m", "models:/nope/1"], "nope"),
    (["--name", "x", "-m", "runs:/abc/model"], "models:/"),
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "policy=/no/such.yaml"],
     "-C policy=/no/such.yaml: file not found"),
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "stages=5,fifty"],
     "-C stages=5,fifty"),
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "expected_rps=abc"],
     "-C expected_rps=abc: must be a number of requests per second"),
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "expected_rps=0"],
     "-C expected_rps=0: must be requests per second > 0"),
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "label_delay=1h"],
     "-C label_delay: only with -C expected_rps"),
    (["--name", "x", "-m", "models:/plugin-model/2", "-C", "expected_rps=2", "-C",
      "label_delay=soon"], "-C label_delay=soon: 'soon' is not a duration"),
])
def test_bad_input_is_one_line_exit_2_and_starts_nothing(env, args, needle):
    r = mlflow_cli(env, "create", *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if needle in ln]) == 1
    assert not (Path(env["env"]["KPIGATE_STATE_DIR"]) / "x").exists()


def _error_lines(r):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr.strip().splitlines()


def test_stage_problems_are_listed_and_blamed_on_c_stages(env):
    model = f"models:/{env['name']}/2"
    r = mlflow_cli(env, "create", "--name", "x", "-m", model, "-C", "stages=shadow,5,5,100")
    assert _error_lines(r) == [
        "Error: -C stages=shadow,5,5,100: 2 problems:",
        "  stages[2].traffic: must be greater than the previous stage's 5; traffic only "
        "increases during a rollout",
        "  stages[2].name: 'canary-5' is already used by stages[1]",
    ]
    r = mlflow_cli(env, "create", "--name", "x", "-m", model, "-C", "stages=100,50")
    lines = _error_lines(r)
    assert lines[0] == "Error: -C stages=100,50: 2 problems:"
    assert lines[1:] == [
        "  stages[1].traffic: must be greater than the previous stage's 100; traffic only "
        "increases during a rollout",
        "  stages[1]: the last stage must be traffic: 100 (full rollout)",
    ]
    assert "default.yaml" not in r.stderr
    assert not (Path(env["env"]["KPIGATE_STATE_DIR"]) / "x").exists()


def test_a_file_that_is_not_a_policy_is_one_line_naming_c_policy(env):
    model = f"models:/{env['name']}/2"
    passwd = env["root"] / "passwd"
    passwd.write_text("".join(f"u{i}:x:{i}:{i}::/home/u{i}:/bin/sh\n" for i in range(29)))
    r = mlflow_cli(env, "create", "--name", "x", "-m", model, "-C", f"policy={passwd}")
    assert _error_lines(r) == [
        f"Error: -C policy={passwd}: the policy must be a YAML mapping, got text"]
    table = env["root"] / "table.yaml"
    table.write_text("".join(f"u{i}: x:{i}:{i}::/home/u{i}:/bin/sh\n" for i in range(29)))
    r = mlflow_cli(env, "create", "--name", "x", "-m", model, "-C", f"policy={table}")
    assert _error_lines(r) == [
        f"Error: -C policy={table}: is not a rollout policy (none of its 29 top-level keys is "
        "a policy field such as stages or kpis); give a policy YAML, see docs/policy.md"]
    # /etc/shadow: unreadable for a user, not a policy for root; one line either way
    r = mlflow_cli(env, "create", "--name", "x", "-m", model, "-C", "policy=/etc/shadow")
    lines = _error_lines(r)
    assert len(lines) == 1
    assert lines[0].startswith("Error: -C policy=/etc/shadow: ")
    assert ("cannot be read (Permission denied)" in lines[0]
            or "is not a rollout policy" in lines[0]
            or "must be a YAML mapping" in lines[0])


@pytest.mark.parametrize("where", ["/proc/1", "/dev/null", "a file", "read-only"])
def test_an_unusable_state_dir_is_one_line_naming_c_state_dir(env, where):
    path = where
    if where == "a file":
        path = str(env["root"] / "state-file")
        Path(path).write_text("not a directory")
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root may write a read-only directory")
        Path(path := str(env["root"] / "read-only")).mkdir(exist_ok=True)
        os.chmod(path, 0o500)
    r = mlflow_cli(env, "create", "--name", "x", "-m", f"models:/{env['name']}/2", "-C",
                   f"state_dir={path}")
    lines = _error_lines(r)
    assert len(lines) == 1
    if where in ("/dev/null", "a file"):
        assert lines[0] == (f"Error: -C state_dir={path}: is not a directory; give a directory "
                            "kpigate may write (it is created if missing), e.g. ~/.kpigate")
    else:
        assert lines[0].startswith(f"Error: -C state_dir={path}: cannot create files there (")
        assert lines[0].endswith("); give a directory kpigate may write, e.g. ~/.kpigate")


def test_invalid_policy_names_the_field(env):
    r = mlflow_cli(env, "create", "--name", "x", "-m", f"models:/{env['name']}/2", "-C",
                   f"policy={env['root'] / 'bad.yaml'}")
    assert r.returncode == 2
    assert "kpis[1].margin: must be > 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_lifecycle_promotes_and_moves_the_alias(env):
    name = env["name"]
    r = mlflow_cli(env, "create", "--name", "good", "-m", f"models:/{name}/2", "-C",
                   f"policy={env['root'] / 'fast.yaml'}", "-C", "promote_alias=live")
    assert r.returncode == 0, r.stderr
    assert "deployment good is created" in r.stdout
    got = mlflow_cli(env, "get", "--name", "good")
    assert got.returncode == 0
    assert "canary" in got.stdout
    listed = mlflow_cli(env, "list")
    assert "good" in listed.stdout
    # the audit log's first event records the traffic the first stage really serves
    created = RolloutStore(Path(env["env"]["KPIGATE_STATE_DIR"]) / "good").events(0)[0]
    assert created.kind == "created"
    assert created.event.body()["weights_percent"] == 20.0
    # predict through the CLI: its -I file is read with pandas.read_json (records)
    inp = env["root"] / "input.json"
    inp.write_text(json.dumps([dict(zip(COLUMNS, [0.1, 0.2, 0.3, 0.4], strict=True))]))
    pred = mlflow_cli(env, "predict", "--name", "good", "-I", str(inp))
    assert pred.returncode == 0, pred.stderr
    assert "predictions" in pred.stdout
    inp.write_text(json.dumps({c: [0.1 * i] for i, c in enumerate(COLUMNS)}))  # columns
    pred = mlflow_cli(env, "predict", "--name", "good", "-I", str(inp))
    assert pred.returncode == 0, pred.stderr
    # an MLflow payload is not what pandas.read_json reads as rows: one line saying so
    inp.write_text(json.dumps({"dataframe_split": {"columns": COLUMNS,
                                                   "data": [[0.1, 0.2, 0.3, 0.4]]}}))
    pred = mlflow_cli(env, "predict", "--name", "good", "-I", str(inp))
    assert pred.returncode == 2
    assert pred.stderr.strip().splitlines() == [
        "Error: -I: the input file holds an MLflow payload or a split frame, but mlflow "
        "deployments predict reads it with pandas.read_json; write the rows as records, e.g. "
        '[{"a": 1.0, "b": 2.0}], or as columns, e.g. {"a": [1.0], "b": [2.0]}']
    roles = send(env, "good", 200)
    assert set(roles) == {"baseline", "candidate"}
    store = RolloutStore(Path(env["env"]["KPIGATE_STATE_DIR"]) / "good")
    for seed in range(2, 40):  # bounded: at most ~7,600 more requests
        if store.require().phase.value == "promoted":
            break
        send(env, "good", 200, seed=seed)
        time.sleep(1.5)  # let the controller evaluate
    state = wait_phase(env, "good", {"promoted"}, timeout=60)
    client = mlflow.MlflowClient()
    tags = client.get_model_version(name, "2").tags
    assert tags["kpigate.status"] == "promoted"
    assert tags["kpigate.rollout_run_id"] == state.rollout_run_id
    assert str(client.get_registered_model(name).aliases.get("live")) == "2"
    history = client.get_metric_history(state.rollout_run_id, "candidate.accuracy")
    assert [m.step for m in history] == sorted(m.step for m in history)
    assert len(history) >= 2
    report = Path(env["env"]["KPIGATE_STATE_DIR"]) / "good" / "report" / "report.md"
    assert report.exists()
    # the operators' commands on the same deployment
    status = kpigate(env, "status", "good")
    assert status.returncode == 0, status.stderr
    assert "good: promoted at 100%" in status.stdout
    assert "accuracy" in status.stdout
    watch = kpigate(env, "watch", "good", "--timeout", "2")
    assert "good: promoted" in watch.stdout
    labels = env["root"] / "labels.csv"
    labels.write_text("request_id,label\nno-such-id,1\n")
    fb = kpigate(env, "feedback", "good", "--file", str(labels))
    assert fb.returncode == 0, fb.stderr
    assert "1 unknown request ids" in fb.stdout
    labels.write_text("request_id,label\nx,maybe\n")
    fb = kpigate(env, "feedback", "good", "--file", str(labels))
    assert fb.returncode == 2
    assert "label must be 0 or 1" in fb.stderr
    rep = kpigate(env, "report", "good")
    assert rep.returncode == 0
    assert rep.stdout.strip().endswith("report.html")
    assert mlflow_cli(env, "delete", "--name", "good").returncode == 0
    assert "good" not in mlflow_cli(env, "list").stdout


def test_python_api_steering_and_sigkill_of_the_controller(env, monkeypatch):
    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("KPIGATE_STATE_DIR", env["env"]["KPIGATE_STATE_DIR"])

    client = get_deploy_client("kpigate")
    name = env["name"]
    policy = env["root"] / "hold.yaml"
    policy.write_text(FAST.replace("requests: 80, labelled: 40",
                                   "requests: 100000, labelled: 100000"))
    dep = client.create_deployment("steer", f"models:/{name}/2", config={"policy": str(policy)})
    assert dep["flavor"] == "python_function"
    assert client.get_deployment("steer")["stage"] == "20%"
    out = client.predict("steer", env["x"].head(3))
    assert len(out.get_predictions()) == 3
    directory = Path(env["env"]["KPIGATE_STATE_DIR"]) / "steer"
    store = RolloutStore(directory)
    send(env, "steer", 60)
    # SIGKILL the controller twice: the supervisor restarts it at the same stage.
    for _ in range(2):
        pid = json.loads((directory / "pids.json").read_text())["controller"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = json.loads((directory / "pids.json").read_text())
            if pids.get("controller") not in (None, pid):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the controller was not restarted")
    time.sleep(3)
    kinds = [e.kind for e in store.events()]
    assert kinds.count("controller_restarted") == 2
    assert store.require().stage_index == 0
    assert store.require().phase.value == "canary"
    # operator steering through update -C action=...
    client.update_deployment("steer", config={"action": "pause"})
    assert client.get_deployment("steer")["paused"] is True
    client.update_deployment("steer", config={"action": "resume"})
    client.update_deployment("steer", config={"action": "promote"})
    assert client.get_deployment("steer")["stage"] == "50%"
    client.update_deployment("steer", config={"action": "rollback"})
    info = client.get_deployment("steer")
    history = [(e.kind, e.revision, e.event.body().get("stage"),
                e.event.body().get("action")) for e in store.events()]
    assert info["status"] == "rolled_back", history[-8:]
    assert set(send(env, "steer", 20, labels=False)) == {"baseline"}
    tags = mlflow.MlflowClient().get_model_version(name, "2").tags
    assert tags["kpigate.status"] == "rolled_back"
    client.delete_deployment("steer")


def test_erroring_candidate_is_rolled_back_while_callers_get_the_baseline(env):
    name = env["name"]
    r = mlflow_cli(env, "create", "--name", "broken", "-m", f"models:/{name}/3", "-C",
                   f"policy={env['root'] / 'fast.yaml'}")
    assert r.returncode == 0, r.stderr
    roles = send(env, "broken", 300)  # every call answered (200) by the baseline
    assert set(roles) == {"baseline"}
    state = wait_phase(env, "broken", {"rolled_back"}, timeout=90)
    assert "error_rate" in state.reason
    tags = mlflow.MlflowClient().get_model_version(name, "3").tags
    assert tags["kpigate.status"] == "rolled_back"
    assert tags["kpigate.decision"] == "rollback"
    assert mlflow_cli(env, "delete", "--name", "broken").returncode == 0


def test_update_with_a_new_model_starts_a_new_rollout(env):
    name = env["name"]
    policy = f"policy={env['root'] / 'fast.yaml'}"
    r = mlflow_cli(env, "create", "--name", "upd", "-m", f"models:/{name}/3", "-C", policy)
    assert r.returncode == 0, r.stderr
    r = mlflow_cli(env, "update", "--name", "upd", "-m", f"models:/{name}/2", "-C", policy)
    assert r.returncode == 0, r.stderr
    assert "python_function" in r.stdout
    got = mlflow_cli(env, "get", "--name", "upd")
    assert f"models:/{name}/2" in got.stdout
    state_dir = Path(env["env"]["KPIGATE_STATE_DIR"])
    archived = list((state_dir / ".history").glob("upd-*"))
    assert len(archived) == 1
    old = RolloutStore(archived[0]).require()
    assert (old.candidate_version, old.phase.value) == ("3", "aborted")
    both = mlflow_cli(env, "update", "--name", "upd", "-m", f"models:/{name}/2", "-C",
                      "action=promote")
    assert both.returncode == 2
    assert "not both" in both.stderr
    assert mlflow_cli(env, "delete", "--name", "upd").returncode == 0


def test_create_warns_of_label_only_candidates_and_prints_the_forecast(env):
    """AUC needs scores: a label-only candidate is a warning at create time, with the fix,
    not "insufficient data" for the whole rollout. With ``-C expected_rps`` create also
    prints each stage's forecast time to decision from the registry baseline, and warns
    (the rollout starts anyway) when a stage cannot decide within its max_duration."""
    client = mlflow.MlflowClient()
    run_id = client.get_model_version(env["name"], "1").run_id
    # The baseline's figures (no σ: no control limits, nothing else in this module changes).
    client.log_metric(run_id, "error_rate", 0.01)
    client.log_metric(run_id, "accuracy", 0.8)
    auc = env["root"] / "auc.yaml"
    made = mlflow_cli(env, "create", "--name", "labels", "-m", f"models:/{env['name']}/4",
                      "-C", f"baseline=models:/{env['name']}/1", "-C", f"policy={auc}",
                      "-C", "expected_rps=0.05", "-C", "label_delay=1h")
    try:
        assert made.returncode == 0, made.stderr
        assert (f"kpigate: warning: the candidate models:/{env['name']}/4 returns labels, "
                "not scores: auc need scores; log the model with "
                "pyfunc_predict_fn='predict_proba'") in made.stderr
        assert "the baseline models:/" not in made.stderr  # version 1 returns probabilities
        lines = made.stderr.splitlines()
        head = next(ln for ln in lines if ln.startswith("kpigate: forecast at "))
        assert head.startswith("kpigate: forecast at 0.05 requests/s, labels after 1h: 20% ~")
        # 80 candidate requests at 20% of 0.05 per second: 8,000 s; 40 labelled ones an
        # hour later at the same rate: 7,600 s. So min_samples binds, past the 10m limit.
        stage = next(ln for ln in lines if ln.startswith("kpigate:   20%: "))
        assert stage.startswith("kpigate:   20%: ~2.2 h (min_samples binds)")
        assert ("kpigate: warning: 20% cannot decide within its max_duration 10m at 0.05 "
                "requests/s: an equal candidate needs ~2.2 h (min_samples binds); it will "
                "hold and alert then") in lines
        assert "deployment labels is created" in made.stdout
    finally:
        mlflow_cli(env, "delete", "--name", "labels")


DEGRADING_MODEL = '''
import os

import mlflow
import numpy as np

FLAG = {flag!r}


class Degrading(mlflow.pyfunc.PythonModel):
    """Scores about as well as the others until FLAG exists, then says the opposite."""

    def predict(self, context, model_input, params=None):
        p = 1.0 / (1.0 + np.exp(-4.0 * (model_input["a"].to_numpy(dtype=float) - 1.0)))
        if os.path.exists(FLAG):
            p = 1.0 - p
        return np.column_stack([1.0 - p, p])


mlflow.models.set_model(Degrading())
'''


def test_a_candidate_that_degrades_after_promotion_is_rolled_back_by_the_bake(env):
    from mlflow_kpigate.core.state import ROLLED_BACK_AFTER_PROMOTION

    name, client = env["name"], mlflow.MlflowClient()
    flag = env["root"] / "degrade.flag"
    code = env["root"] / "degrading_model.py"
    code.write_text(DEGRADING_MODEL.format(flag=str(flag)))
    with mlflow.start_run():
        logged = mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                         registered_model_name=name)
    version = str(logged.registered_model_version)
    client.set_registered_model_alias(name, "prod", "1")
    policy = env["root"] / "bake.yaml"
    policy.write_text(FAST + "bake: {duration: 10m, arl: 30d}\n")
    r = mlflow_cli(env, "create", "--name", "bakes", "-m", f"models:/{name}/{version}",
                   "-C", f"baseline=models:/{name}/1", "-C", f"policy={policy}",
                   "-C", "promote_alias=prod")
    assert r.returncode == 0, r.stderr
    store = RolloutStore(Path(env["env"]["KPIGATE_STATE_DIR"]) / "bakes")
    for seed in range(2, 40):  # through 20% and 50%, as a good candidate
        if store.require().phase.value == "baking":
            break
        send(env, "bakes", 200, seed=seed)
        time.sleep(1.5)
    state = wait_phase(env, "bakes", {"baking"}, timeout=60)
    assert state.weights.describe() == "candidate 100%, baseline shadow"
    assert str(client.get_registered_model(name).aliases["prod"]) == version
    assert client.get_model_version(name, version).tags["kpigate.status"] == "baking"
    assert set(send(env, "bakes", 100, seed=41)) == {"candidate"}
    time.sleep(3)
    assert store.require().phase.value == "baking"  # no regression yet: it bakes on
    flag.touch()  # from now on the promoted candidate answers the opposite
    for seed in range(42, 80):
        if store.require().phase.value != "baking":
            break
        send(env, "bakes", 100, seed=seed)
        time.sleep(1)
    state = wait_phase(env, "bakes", {"rolled_back"}, timeout=60)
    assert state.status == ROLLED_BACK_AFTER_PROMOTION
    assert state.reason.startswith("rollback after promotion: accuracy regressed during the bake")
    # traffic, alias and tags are back where they were before the rollout
    assert set(send(env, "bakes", 20, labels=False, seed=90)) == {"baseline"}
    assert str(client.get_registered_model(name).aliases["prod"]) == "1"
    tags = client.get_model_version(name, version).tags
    assert tags["kpigate.status"] == "rolled_back_after_promotion"
    assert tags["kpigate.decision"] == "rollback"
    # the previous version is not superseded by the candidate that was rolled back
    old_tags = client.get_model_version(name, "1").tags
    assert old_tags.get("kpigate.superseded_by") != f"{name}/{version}"
    kinds = [e.kind for e in store.events()]
    assert kinds.index("alias_moved") < kinds.index("alias_restored")
    report = Path(env["env"]["KPIGATE_STATE_DIR"]) / "bakes" / "report" / "report.md"
    assert "Outcome: ROLLED BACK AFTER PROMOTION." in report.read_text()
    runs = client.get_run(state.rollout_run_id)
    assert runs.data.tags["kpigate.outcome"] == "rolled_back_after_promotion"
    status = kpigate(env, "status", "bakes")
    assert "bakes: rolled_back_after_promotion at 100%" in status.stdout, status.stdout
    replayed = kpigate(env, "replay", "bakes")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "different action: 0" in replayed.stdout
    assert mlflow_cli(env, "delete", "--name", "bakes").returncode == 0
