"""End to end: rollouts run by ``kpigate operator`` from a ModelRollout resource.

Real parts: the operator as a real process (the CLI) against the fake API server
(tests/fake_kube.py: real HTTP, CRD-validated ModelRollouts, status subresource, Leases),
its worker processes, a real ``kpigate collector`` taking the stage notices with tokens, a
real Prometheus scraping the executors' series that ``SeldonSim`` (tests/_seldon_sim.py)
plays, a real ``mlflow server`` with registered sklearn models, and the real ``mlflow
deployments`` CLI creating the ModelRollout (``-C operator=true``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from _operator_fixtures import (
    NS,
    StatusRecorder,
    collector_process,
    operator_process,
)
from _seldon_sim import seldon  # noqa: F401
from fake_kube import fake_kube  # noqa: F401

from mlflow_kpigate.core import exit_codes

# Workers run in other processes: they need the tracking server, not a local file.
pytestmark = pytest.mark.parametrize("tracking_uri", ["server"], indirect=True)

POLICY = textwrap.dedent("""
    evaluation: {interval: 1s, maturity: 0s}
    stage_defaults:
      min_samples: {requests: 300}
      min_dwell: 2s
      max_duration: 120s
    stages: [5, 50, 100]
    kpis:
      - {name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.02}
    metrics:
      prometheus: {timeout: 5s, retries: 2, max_wait: 10s, requests_from: seldon}
    readiness: {timeout: 60s, on_timeout: hold}
""")


def _deployments(args: list[str], model, fake, env_extra=None, timeout=240
                 ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": model.tracking_uri,
           "KUBECONFIG": str(fake.kubeconfig), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "mlflow", "deployments", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _create_args(name, model, policy, prometheus, collector, fake, *, wait: bool) -> list[str]:
    return ["create", "-t", f"kpigate:/seldon/{NS}", "--name", name,
            "-m", f"models:/{model.name}/2", "-C", f"baseline=models:/{model.name}/1",
            "-C", f"policy={policy}", "-C", f"prometheus_url={prometheus.url}",
            "-C", f"collector_url={collector.url}", "-C", f"kubeconfig={fake.kubeconfig}",
            "-C", "operator=true", "-C", f"wait={'true' if wait else 'false'}"]


def _operator_env(collector) -> dict[str, str]:
    return {"KPIGATE_COLLECTOR_TOKEN_FILE": str(collector.token_files["operator"]),
            "KPIGATE_COLLECTOR_INGEST_TOKEN_FILE": str(collector.token_files["ingest"])}


def _store(fake, name):
    from mlflow_kpigate.backends.seldon.cluster import Cluster
    from mlflow_kpigate.backends.seldon.kinds import CONFIG_MAP
    from mlflow_kpigate.backends.seldon.state_store import ClusterStore

    return ClusterStore(Cluster.connect(NS, fake.kubeconfig).objects(CONFIG_MAP), name)


def _conditions(fake, name) -> dict[str, str]:
    obj = fake.get_object("modelrollouts", NS, name) or {}
    return {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}


def _events(fake, name) -> list[dict]:
    return [e for e in fake.objects("events", NS)
            if e["involvedObject"]["name"] == name and e["involvedObject"]["kind"] ==
            "ModelRollout"]


def test_operator_promotes_a_rollout_created_through_mlflow_deployments(
        fake_kube, prometheus, seldon, registered_model, tmp_path):  # noqa: F811
    from mlflow import MlflowClient

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    name = "fraud-op"
    seldon(name, cand_error=0.0)
    collector = collector_process(tmp_path, name, policy)
    op = operator_process(fake_kube, tmp_path, "op-a", _operator_env(collector))
    recorder = StatusRecorder(fake_kube, name)
    try:
        done = _deployments(_create_args(name, registered_model, policy, prometheus,
                                         collector, fake_kube, wait=True),
                            registered_model, fake_kube)
        seen = recorder.close()
    finally:
        op.stop()
        collector.stop()
    assert done.returncode == exit_codes.PROMOTED, done.stderr[-3000:] + op.log.read_text()[-3000:]
    # The status went through every stage, with conditions as Kubernetes tools read them.
    stages = {v["stage"] for v in seen if v["phase"] in ("canary", "holding")}
    assert stages == {0, 1}, seen  # 5% and 50%; the promotion from 50% ends at 100%
    running = [v for v in seen if v["phase"] in ("canary", "holding")]
    assert all(v["conditions"]["Progressing"][0] == "True" and
               v["conditions"]["Available"][0] == "False" for v in running), running
    final = seen[-1]
    assert final["phase"] == "promoted"
    assert final["conditions"] == {"Available": ("True", "Promoted"),
                                   "Progressing": ("False", "Promoted"),
                                   "Degraded": ("False", "Promoted")}
    obj = fake_kube.get_object("modelrollouts", NS, name)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["lastDecision"]["action"] == "promote"
    # Every decision left a Kubernetes Event on the resource.
    reasons = [e["reason"] for e in _events(fake_kube, name)]
    assert reasons.count("DecisionPromote") >= 2, reasons
    assert "RolloutStarted" in reasons
    state = _store(fake_kube, name).require()
    assert state.phase.value == "promoted"
    events = _store(fake_kube, name).events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # The Seldon objects belong to the ModelRollout.
    sdep = fake_kube.get_object("seldondeployments", NS, name)
    assert sdep["metadata"]["ownerReferences"][0]["kind"] == "ModelRollout"
    client = MlflowClient(registered_model.tracking_uri)
    assert client.get_model_version(registered_model.name, "2").tags["kpigate.status"] == \
        "promoted"
    assert client.get_model_version_by_alias(registered_model.name, "champion").version == "2"


def test_operator_rolls_back_a_worse_candidate_and_takes_actions_through_the_resource(
        fake_kube, prometheus, seldon, registered_model, tmp_path):  # noqa: F811
    policy = tmp_path / "policy.yaml"
    # Enough samples per stage that the pause below lands before any decision.
    policy.write_text(POLICY)
    name = "fraud-op-bad"
    seldon(name, cand_error=0.3)
    collector = collector_process(tmp_path, name, policy)
    op = operator_process(fake_kube, tmp_path, "op-b", _operator_env(collector))
    try:
        created = _deployments(_create_args(name, registered_model, policy, prometheus,
                                            collector, fake_kube, wait=True),
                               registered_model, fake_kube)
        assert created.returncode == exit_codes.ROLLED_BACK, \
            created.stderr[-3000:] + op.log.read_text()[-3000:]
        assert _conditions(fake_kube, name) == {"Available": "False", "Progressing": "False",
                                                "Degraded": "True"}
        reasons = [e["reason"] for e in _events(fake_kube, name)]
        assert "DecisionRollback" in reasons
        rollback = next(e for e in _events(fake_kube, name)
                        if e["reason"] == "DecisionRollback")
        assert rollback["type"] == "Warning"
        assert "error_rate" in rollback["message"]
        # An action on an ended rollout is refused through the resource, one line, exit 2.
        refused = _deployments(["update", "-t", f"kpigate:/seldon/{NS}", "--name", name,
                                "-C", "action=promote", "-C", f"kubeconfig={fake_kube.kubeconfig}"],
                               registered_model, fake_kube)
        assert refused.returncode == exit_codes.USAGE, refused.stderr
        assert "Traceback" not in refused.stderr
        obj = fake_kube.get_object("modelrollouts", NS, name)
        assert obj["status"]["lastActionRequest"]["result"] == "Rejected"
    finally:
        op.stop()
        collector.stop()
    assert _store(fake_kube, name).require().phase.value == "rolled_back"
