"""A supervisor that heals itself: real processes on 127.0.0.1, real models, a real MLflow
tracking server, deployments made with the real ``mlflow deployments create``.

* the supervisor and then the router SIGKILLed: ``kpigate resume NAME``, or a plain
  ``mlflow deployments get``, brings the deployment back, serving at the same stage, not
  aborted, with ``supervisor_restarted`` in the audit log and an alert;
* the supervisor alone SIGKILLed: the new one replaces the orphaned router (after its own
  listens) and controller (before its own starts: never two);
* ``kpigate resume --all`` brings back two deployments;
* a router whose main process is stopped (SIGSTOP), then one whose workers are (no answer),
  is killed and restarted within the probe window: ``router_restarted`` + alert;
* a corrupted ``state.db`` while children die does not end the supervisor;
* the controller serves its decision metrics; promtool and the alert rules read them.

Alerts go to a Slack-style webhook on 127.0.0.1 named in the policy. Every test stops the
processes it started, by pid, in ``finally``.
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
from contextlib import suppress
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from _local_metrics import check_controller_metrics, check_rules_on
from mlflow_cli import mlflow_deployments
from sklearn.linear_model import LogisticRegression

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.deploy import local_procfs as procfs
from mlflow_kpigate.deploy.local_info import deployment_info
from mlflow_kpigate.deploy.local_layout import metrics_endpoint
from mlflow_kpigate.deploy.local_orphans import (
    CONTROLLER_MODULE,
    ROUTER_MODULE,
    SUPERVISOR_MODULE,
)
from mlflow_kpigate.deploy.local_probe import RouterProbe, answers
from mlflow_kpigate.deploy.local_processes import stop_processes
from mlflow_kpigate.policy.model import AlertsConfig

COLUMNS = list("abcd")
SLACK_ENV = "KPIGATE_TEST_HEAL_SLACK"
# Where alert URLs are restricted to the official hosts, a loopback test hook is opted in.
CUSTOM_HOSTS = (", allow_custom_hosts: true"
                if "allow_custom_hosts" in {f.name for f in fields(AlertsConfig)} else "")
HOLD = f"""
evaluation: {{interval: 1s, maturity: 0s}}
stage_defaults: {{min_samples: {{requests: 100000, labelled: 100000}}, min_dwell: 1s,
                 max_duration: 1h}}
stages: [20, 50, 100]
kpis:
  - {{name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.05}}
alerts: {{slack: {{webhook_url_env: {SLACK_ENV}}}{CUSTOM_HOSTS}}}
"""
WORKER_MODULE = "mlflow_kpigate.backends.local.worker"


class Webhook:
    """A Slack-style webhook on 127.0.0.1 recording the texts posted to it."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.texts.append(json.loads(body).get("text", ""))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def env(mlflow_server, tmp_path_factory):
    """Tracking server, a model with two versions, a state dir, a policy, a webhook."""
    root = tmp_path_factory.mktemp("heal")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(500, 4)), columns=COLUMNS)
    y = (x.a + rng.normal(size=500) > 1).astype(int)
    name = "heal-model"
    for c in (0.5, 1.0):
        with mlflow.start_run():
            mlflow.sklearn.log_model(LogisticRegression(C=c).fit(x, y), name="model",
                                     registered_model_name=name, input_example=x.head(2),
                                     pyfunc_predict_fn="predict_proba")
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", "1")
    mlflow.set_tracking_uri(previous)
    (root / "hold.yaml").write_text(HOLD)
    hook = Webhook()
    environ = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
               "KPIGATE_STATE_DIR": str(root / "state"), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               SLACK_ENV: hook.url, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        yield {"root": root, "model": name, "env": environ, "hook": hook}
    finally:
        hook.close()


def _run(env, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=env["env"], timeout=timeout)


def mlflow_cli(env, *args: str) -> subprocess.CompletedProcess[str]:
    return mlflow_deployments([*args, "-t", "kpigate"], env=env["env"], timeout=300)


def kpigate(env, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(env, "-m", "mlflow_kpigate.cli", *args)


def _directory(env, name: str) -> Path:
    return Path(env["env"]["KPIGATE_STATE_DIR"]) / name


def _pids(directory: Path) -> dict[str, int]:
    return {k: int(v) for k, v in json.loads((directory / "pids.json").read_text()).items()}


def _create_at_50(env, name: str) -> Path:
    """A deployment holding at its second stage (50%)."""
    r = mlflow_cli(env, "create", "--name", name, "-m", f"models:/{env['model']}/2",
                   "-C", f"policy={env['root'] / 'hold.yaml'}")
    assert r.returncode == 0, r.stderr
    p = kpigate(env, "promote", name)
    assert p.returncode == 0, p.stderr
    directory = _directory(env, name)
    _wait(lambda: _pids(directory).get("controller"), "the controller to start")
    return directory


def _stop_all(directory: Path) -> None:
    """Stop every process of the deployment, whoever started it (by pid)."""
    with suppress(Exception):
        stop_processes(directory)
    for module in (SUPERVISOR_MODULE, CONTROLLER_MODULE, ROUTER_MODULE, WORKER_MODULE):
        for pid in procfs.processes_running(module, directory):
            procfs.kill_tree(pid)


def _wait(condition, what: str, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):
            value = condition()
            if value:
                return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _serves(port: int) -> bool:
    body = {"dataframe_split": {"columns": COLUMNS, "data": [[0.1, 0.2, 0.3, 0.4]]}}
    try:
        return requests.post(f"http://127.0.0.1:{port}/invocations", json=body,
                             timeout=10).status_code == 200
    except requests.RequestException:
        return False


def _kinds(directory: Path) -> list[str]:
    return [e.kind for e in RolloutStore(directory).events()]


def _kill_supervisor_and_router(directory: Path) -> dict[str, int]:
    old = _pids(directory)
    workers = procfs.descendants(old["router"])
    os.kill(old["supervisor"], signal.SIGKILL)
    os.kill(old["router"], signal.SIGKILL)
    _wait(lambda: all(procfs.gone(p) for p in [old["router"], *workers]),
          "the router's children to die with it", 30)
    assert not _serves(RolloutStore(directory).require().port)
    return old


def _assert_back_at_50(directory: Path, old: dict[str, int]) -> None:
    state = RolloutStore(directory).require()
    _wait(lambda: _serves(state.port), "the deployment to serve again")
    state = RolloutStore(directory).require()
    assert (state.stage_index, state.phase.value, state.weights.describe()) == \
        (1, "canary", "baseline 50%, candidate 50%"), state
    new = _pids(directory)
    assert new["supervisor"] != old["supervisor"]
    assert "aborted" not in _kinds(directory)
    # The orphaned controller was replaced: exactly one controller, the new one.
    _wait(lambda: procfs.gone(old["controller"]), "the orphaned controller to stop", 30)
    _wait(lambda: procfs.processes_running(CONTROLLER_MODULE, directory)
          == [_pids(directory)["controller"]], "exactly one controller")
    event = next(e for e in RolloutStore(directory).events()
                 if e.kind == "supervisor_restarted")
    assert event.event.body()["previous_pid"] == old["supervisor"]
    assert old["controller"] in event.event.body()["orphans"]


def test_kpigate_resume_brings_back_a_killed_supervisor_and_router(env, tmp_path):
    directory = _directory(env, "heal-resume")
    try:
        directory = _create_at_50(env, "heal-resume")
        # The controller serves its decision series; the alert rules read them.
        text = check_controller_metrics(directory, "heal-resume", stage=1)
        check_rules_on(text, "heal-resume", tmp_path)
        old = _kill_supervisor_and_router(directory)
        r = kpigate(env, "resume", "heal-resume")
        assert r.returncode == 0, r.stderr
        assert "heal-resume: restarted, serving on http://127.0.0.1:" in r.stdout
        _assert_back_at_50(directory, old)
        # The new controller serves them again (and says where in metrics.json).
        check_controller_metrics(directory, "heal-resume", stage=1)
        info = deployment_info(RolloutStore(directory).require(), directory)
        assert info["metrics_endpoint"] == metrics_endpoint(directory) is not None
        _wait(lambda: any("supervisor restarted" in t and "heal-resume" in t
                          for t in env["hook"].texts), "the alert")
        assert "alert_sent" in _kinds(directory)
        again = kpigate(env, "resume", "heal-resume")  # nothing to do: exit 0
        assert again.returncode == 0, again.stderr
        assert "heal-resume: running" in again.stdout
    finally:
        _stop_all(directory)


def test_mlflow_get_notices_a_dead_supervisor_and_starts_a_new_one(env):
    directory = _directory(env, "heal-get")
    try:
        directory = _create_at_50(env, "heal-get")
        old = _kill_supervisor_and_router(directory)
        r = mlflow_cli(env, "get", "--name", "heal-get")
        assert r.returncode == 0, r.stderr
        _assert_back_at_50(directory, old)
        body = next(e.event.body() for e in RolloutStore(directory).events()
                    if e.kind == "supervisor_restarted")
        assert "noticed by `python -m mlflow deployments get`" in body["reason"]
    finally:
        _stop_all(directory)


def test_a_new_supervisor_replaces_the_orphans_of_the_dead_one(env):
    directory = _directory(env, "heal-orphans")
    try:
        directory = _create_at_50(env, "heal-orphans")
        old = _pids(directory)
        port = RolloutStore(directory).require().port
        os.kill(old["supervisor"], signal.SIGKILL)
        assert _serves(port)  # the orphaned router serves on
        orphan_metrics = metrics_endpoint(directory)  # the orphaned controller serves on too
        r = kpigate(env, "status", "heal-orphans")
        assert r.returncode == 0, r.stderr
        assert "(running)" in r.stdout
        # status starts a new supervisor, which replaces the orphaned controller: the line
        # shows the old controller's address or, once it is replaced, the new one's.
        # (Between the two, when the old one has stopped and the new one has not bound yet,
        # there is no address to show: then status is asked again once there is.)
        shown = re.search(r"controller metrics (\S+)", r.stdout)
        if shown is None:
            _wait(lambda: metrics_endpoint(directory), "the new controller's metrics")
            r = kpigate(env, "status", "heal-orphans")
            shown = re.search(r"controller metrics (\S+)", r.stdout)
        assert shown is not None, r.stdout
        if shown.group(1) != orphan_metrics:
            _wait(lambda: metrics_endpoint(directory) == shown.group(1),
                  f"the new controller to serve at {shown.group(1)}")
        # The old router is stopped once the new one listens; traffic is served meanwhile.
        _wait(lambda: procfs.gone(old["router"]), "the orphaned router to be replaced", 180)
        assert procfs.processes_running(ROUTER_MODULE, directory) == [_pids(directory)["router"]]
        _assert_back_at_50(directory, old)
    finally:
        _stop_all(directory)


def test_resume_all_brings_back_every_deployment(env):
    names = ("heal-all-1", "heal-all-2")
    directories = [_directory(env, n) for n in names]
    try:
        olds = [_kill_supervisor_and_router(_create_at_50(env, n)) for n in names]
        r = kpigate(env, "resume", "--all")
        assert r.returncode == 0, r.stderr
        for name, directory, old in zip(names, directories, olds, strict=True):
            assert f"{name}: restarted" in r.stdout
            _assert_back_at_50(directory, old)
    finally:
        for directory in directories:
            _stop_all(directory)


def test_a_hung_router_is_killed_and_restarted(env):
    directory = _directory(env, "heal-hung")
    try:
        directory = _create_at_50(env, "heal-hung")
        port = RolloutStore(directory).require().port
        supervisor = _pids(directory)["supervisor"]
        # 1. The main process stopped; its workers still answer, nothing manages them.
        router = _pids(directory)["router"]
        stopped_at = time.time()
        os.kill(router, signal.SIGSTOP)
        _wait(lambda: "router_restarted" in _kinds(directory), "the restart", 60)
        event = next(e for e in RolloutStore(directory).events()
                     if e.kind == "router_restarted")
        assert "had its main process stopped for" in event.event.body()["reason"]
        assert 14 <= event.ts - stopped_at <= 30, event.ts - stopped_at  # 15 s of probes
        _wait(lambda: procfs.gone(router), "the stopped router to be killed", 10)
        _wait(lambda: _serves(port), "the restarted router to serve")
        _wait(lambda: any("router restarted" in t and "main process stopped" in t
                          for t in env["hook"].texts), "the alert")
        # 2. Its workers (and candidate processes) stopped: /health gets no answer at all.
        router = _pids(directory)["router"]
        _wait(lambda: procfs.descendants(router), "the new router's workers")
        for pid in procfs.descendants(router):
            os.kill(pid, signal.SIGSTOP)
        assert not answers(port, 1.0)
        _wait(lambda: _kinds(directory).count("router_restarted") == 2, "the restart", 60)
        event = [e for e in RolloutStore(directory).events()
                 if e.kind == "router_restarted"][-1]
        assert "did not answer /health for" in event.event.body()["reason"]
        _wait(lambda: _serves(port), "the restarted router to serve")
        assert _pids(directory)["supervisor"] == supervisor
        state = RolloutStore(directory).require()
        assert (state.stage_index, state.phase.value) == (1, "canary")
    finally:
        _stop_all(directory)


def test_store_errors_do_not_end_the_supervisor(env):
    directory = _directory(env, "heal-store")
    aside = env["root"] / "heal-store-db"
    try:
        directory = _create_at_50(env, "heal-store")
        port = RolloutStore(directory).require().port
        old = _pids(directory)
        aside.mkdir()
        for suffix in ("", "-wal", "-shm"):
            if (directory / f"state.db{suffix}").exists():
                shutil.move(directory / f"state.db{suffix}", aside / f"state.db{suffix}")
        (directory / "state.db").write_bytes(b"this is not an SQLite database" * 100)
        os.kill(old["controller"], signal.SIGKILL)
        os.kill(old["router"], signal.SIGKILL)
        time.sleep(6)  # restarts fail and are retried while the store is broken
        assert not procfs.gone(old["supervisor"])
        (directory / "state.db").unlink()
        for item in aside.iterdir():
            shutil.move(item, directory / item.name)
        _wait(lambda: _serves(port), "the router to serve again", 180)
        _wait(lambda: {"router_restarted", "controller_restarted"} <= set(_kinds(directory)),
              "the restarts to be recorded once the store works")
        assert _pids(directory)["supervisor"] == old["supervisor"]
        assert "the state store failed" in (directory / "supervisor.log").read_text()
        state = RolloutStore(directory).require()
        assert (state.stage_index, state.phase.value) == (1, "canary")
    finally:
        _stop_all(directory)


# -- the probe on its own --------------------------------------------------------------------
def test_the_probe_counts_a_503_as_an_answer_and_waits_for_a_starting_router():
    class Unhealthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unhealthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert answers(server.server_port)
    finally:
        server.shutdown()
        server.server_close()
    assert not answers(server.server_port, 0.5)  # nothing listens any more

    probe = RouterProbe(interval_s=2, failures=3, hung_after_s=15, start_grace_s=180)
    probe.reset(0.0)
    # Starting: 170 s of no answer is not a hang...
    assert all(probe.observe(t, t + 5, "did not answer /health") is None
               for t in range(2, 170, 7))
    # ... past the start grace it is, after 3 failed probes spanning 15 s.
    assert probe.observe(181, 186, "did not answer /health") is None
    assert probe.observe(188, 193, "did not answer /health") is None
    assert probe.observe(195, 200, "did not answer /health") == \
        "did not answer /health for 19 s (3 probes)"
    probe.reset(300.0)
    assert probe.observe(302, 302.01, None) is None  # answered: now failures count
    hung = [probe.observe(t, t + 0.01, "had its main process stopped")
            for t in range(304, 322, 2)]
    assert hung[:-1] == [None] * (len(hung) - 1)
    assert hung[-1] == "had its main process stopped for 16 s (9 probes)"
