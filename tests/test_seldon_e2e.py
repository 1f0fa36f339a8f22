"""End to end on Kubernetes' protocol: `mlflow deployments create -t kpigate:/seldon/NS`.

Real parts: the ``kubernetes`` client against the fake API server (tests/fake_kube.py, real
HTTP, CRD-validated objects), a real Prometheus scraping a loopback exporter, a real
``mlflow server`` with registered sklearn models, and the controller as a real process
started through MLflow's CLI. What stands in for Seldon Core is ``SeldonSim``
(tests/_seldon_sim.py). These tests run the controller on the caller's side (``-C
operator=false``: the Job path); tests/test_operator_e2e.py runs the same rollouts through
the in-cluster operator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _seldon_sim import POLICY, cluster_store, seldon  # noqa: F401
from fake_kube import fake_kube  # noqa: F401
from processes import wait_for
from prometheus_fixture import running_prometheus

from mlflow_kpigate.core import exit_codes

NS = "models"
# The controller runs in another process: it needs the tracking server, not a local file.
pytestmark = pytest.mark.parametrize("tracking_uri", ["server"], indirect=True)



def _create(model, name, policy, prometheus, fake, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": model.tracking_uri,
           "KPIGATE_STATE_DIR": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "mlflow", "deployments", "create",
           "-t", f"kpigate:/seldon/{NS}", "--name", name, "-m", f"models:/{model.name}/2",
           "-C", f"baseline=models:/{model.name}/1", "-C", f"policy={policy}",
           "-C", f"prometheus_url={prometheus.url}", "-C", f"kubeconfig={fake.kubeconfig}",
           "-C", "wait=true", "-C", "operator=false"]
    log = (tmp_path / f"create-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


_store = cluster_store



def _logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("create-*")))


def _finish(proc: subprocess.Popen, tmp_path: Path, expected: int = 0) -> None:
    """Wait for `create -C wait=true` to end with the ``expected`` exit code (0 promoted,
    3 rolled back: mlflow_kpigate/core/exit_codes.py)."""
    try:
        code = proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the rollout did not end:\n{_logs(tmp_path)[-3000:]}") from None
    assert code == expected, _logs(tmp_path)[-3000:]


def _predictors(fake, name):
    sdep = fake.get_object("seldondeployments", NS, name)
    return {p["name"]: (p.get("traffic", 0), bool(p.get("shadow"))) for p in
            sdep["spec"]["predictors"]}


def test_staged_rollout_survives_a_controller_kill_and_promotes(
        fake_kube, prometheus, seldon, registered_model, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    name = "fraud"
    seldon(name, cand_error=0.0)
    proc = _create(registered_model, name, policy, prometheus, fake_kube, tmp_path)
    store = _store(fake_kube, name)
    try:
        # Kill the controller once the first promotion was committed.
        state = wait_for(lambda: (s := store.load()) is not None and s.stage_index >= 1 and s,
                      "the first promotion")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = store.require()
    # Whatever the controller managed before dying, the cluster never runs ahead of the
    # committed state.
    cand_traffic = _predictors(fake_kube, name).get("candidate", (0, False))[0]
    assert cand_traffic <= max(killed_at.weights.candidate_percent, 5)

    proc = _create(registered_model, name, policy, prometheus, fake_kube, tmp_path)
    _finish(proc, tmp_path)
    assert "resuming the rollout" in _logs(tmp_path)
    state = store.require()
    assert state.phase.value == "promoted", state.reason
    assert state.stage_index >= killed_at.stage_index >= 1
    # Promotion: the candidate serves everything and the baseline predictor is gone.
    assert _predictors(fake_kube, name) == {"candidate": (100, False)}
    events = store.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind for e in events]
    assert kinds.count("stage_ready") >= 2
    assert kinds.count("promote") >= 2
    client = MlflowClient(registered_model.tracking_uri)
    tags = client.get_model_version(registered_model.name, "2").tags
    assert tags["kpigate.status"] == "promoted"
    assert client.get_model_version_by_alias(registered_model.name, "champion").version == "2"
    # Every patch kpigate sent was a guarded JSON patch.
    patches = [r for r in fake_kube.requests if r.method == "PATCH"
               and "seldondeployments" in r.path]
    assert patches
    assert all(r.content_type == "application/json-patch+json" for r in patches)
    assert all(any(op["op"] == "test" and op["path"] == "/metadata/resourceVersion"
                   for op in r.body) for r in patches)
    # The evaluations kept in the ConfigMaps (samples rebuilt from Prometheus included)
    # replay to the very same decisions, across the controller that was killed.
    replayed = subprocess.run(
        [sys.executable, "-m", "mlflow_kpigate.cli", "replay", name, "-t",
         f"kpigate:/seldon/{NS}", "--state-dir", str(tmp_path / "state"), "--json"],
        env={**os.environ, "KUBECONFIG": str(fake_kube.kubeconfig)}, capture_output=True,
        text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stderr
    result = json.loads(replayed.stdout)
    assert result["reproduced"] is True
    outcomes = [e["outcome"] for e in result["evaluations"]]
    assert outcomes.count("identical") >= 2
    assert set(outcomes) <= {"identical", "no_data"}


def test_failing_candidate_is_rolled_back_and_its_predictor_removed(
        fake_kube, prometheus, seldon, registered_model, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    name = "fraud-bad"
    seldon(name, cand_error=0.3)
    proc = _create(registered_model, name, policy, prometheus, fake_kube, tmp_path)
    _finish(proc, tmp_path, expected=exit_codes.ROLLED_BACK)
    assert f"kpigate: rollout of {name} rolled back: " in _logs(tmp_path)
    state = _store(fake_kube, name).require()
    assert state.phase.value == "rolled_back", state.reason
    assert "error_rate" in state.reason
    assert _predictors(fake_kube, name) == {"baseline": (100, False)}
    tags = MlflowClient(registered_model.tracking_uri).get_model_version(
        registered_model.name, "2").tags
    assert tags["kpigate.status"] == "rolled_back"
    # Deleting the deployment removes what kpigate created, and nothing else.
    fake_kube.seed({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "someone-elses", "namespace": NS}, "data": {}},
                   namespace=NS)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered_model.tracking_uri,
           "KUBECONFIG": str(fake_kube.kubeconfig)}
    subprocess.run([sys.executable, "-m", "mlflow", "deployments", "delete", "-t",
                    f"kpigate:/seldon/{NS}", "--name", name], env=env, check=True,
                   capture_output=True, timeout=120)
    assert fake_kube.get_object("seldondeployments", NS, name) is None
    left = {cm["metadata"]["name"] for cm in fake_kube.objects("configmaps", NS)}
    assert "someone-elses" in left
    assert not any(n.startswith(f"{name}-kpigate") for n in left)


def test_rollout_holds_while_prometheus_is_down(
        fake_kube, exporter, seldon, registered_model, tmp_path):  # noqa: F811
    """Its own Prometheus, stopped mid-rollout: the gate holds and says why; no promotion."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("min_samples: {requests: 300}",
                                     "min_samples: {requests: 100000}"))
    name = "fraud-blind"
    seldon(name, cand_error=0.0)
    with running_prometheus([exporter.target], tmp_path / "prom") as prom:
        proc = _create(registered_model, name, policy, prom, fake_kube, tmp_path)
        store = _store(fake_kube, name)
        try:
            wait_for(lambda: any(e.kind == "hold" for e in (store.events()
                                                              if store.exists() else [])),
                  "a first evaluation with Prometheus up")
            prom.stop()
            seen = len(store.events())

            def blind_holds():
                events = store.events()[seen:]
                return [e for e in events if e.kind == "hold"
                        and "metrics unavailable" in e.event.decision.reason]

            holds = wait_for(lambda: len(blind_holds()) >= 2 and blind_holds(),
                          "holds while Prometheus is down")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert "Prometheus is unreachable" in holds[0].event.decision.reason
    state = store.require()
    assert state.stage_index == 0
    assert state.phase.value in ("canary", "holding")
    assert _predictors(fake_kube, name)["candidate"] == (5, False)
