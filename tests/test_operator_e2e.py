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
import random
import subprocess
import sys
import time

import pytest
from _operator_fixtures import (
    NS,
    StatusRecorder,
    collector_process,
    operator_process,
)
from _seldon_sim import POLICY, cluster_store, seldon  # noqa: F401
from fake_kube import fake_kube  # noqa: F401
from processes import wait_for

from mlflow_kpigate.core import exit_codes

# Workers run in other processes: they need the tracking server, not a local file.
pytestmark = pytest.mark.parametrize("tracking_uri", ["server"], indirect=True)



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


def _kpigate(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlflow_kpigate.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def _operator_env(collector) -> dict[str, str]:
    return {"KPIGATE_COLLECTOR_TOKEN_FILE": str(collector.token_files["operator"]),
            "KPIGATE_COLLECTOR_INGEST_TOKEN_FILE": str(collector.token_files["ingest"])}


_store = cluster_store


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
    collector = collector_process(tmp_path)
    op = operator_process(fake_kube, tmp_path, "op-a", _operator_env(collector))
    recorder = StatusRecorder(fake_kube, name)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered_model.tracking_uri,
           "KUBECONFIG": str(fake_kube.kubeconfig)}
    log = tmp_path / "create.log"
    try:
        with log.open("wb") as out:
            create = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "deployments",
                 *_create_args(name, registered_model, policy, prometheus, collector,
                               fake_kube, wait=True)], env=env, stdout=out,
                stderr=subprocess.STDOUT)
        # While it runs, an operator acts through the resource with the kpigate CLI: a
        # pause asked as soon as the resource exists lands once the rollout has started.
        wait_for(lambda: fake_kube.get_object("modelrollouts", NS, name), "the ModelRollout")
        paused = _kpigate(["pause", name, "--namespace", NS], env)
        assert paused.returncode == 0, paused.stderr
        assert _conditions(fake_kube, name)["Progressing"] == "Unknown"
        status = _kpigate(["status", name, "-t", f"kpigate:/seldon/{NS}"], env)
        assert status.returncode == 0, status.stderr
        assert "(paused)" in status.stdout
        stage = _store(fake_kube, name).require().stage_index
        time.sleep(3)  # evaluations stop while paused: the stage does not move
        assert _store(fake_kube, name).require().stage_index == stage
        resumed = _kpigate(["resume", name, "--namespace", NS], env)
        assert resumed.returncode == 0, resumed.stderr
        # An operator's promotion: a spec.actionRequest the operator applies once.
        promoted = _kpigate(["promote", name, "--namespace", NS], env)
        assert promoted.returncode == 0, promoted.stderr
        request = fake_kube.get_object("modelrollouts", NS, name)["status"]["lastActionRequest"]
        assert (request["action"], request["result"]) == ("promote", "Applied")
        create.wait(timeout=300)
        seen = recorder.close()
        watched = _kpigate(["watch", name, "--namespace", NS, "--timeout", "30"], env)
    finally:
        if create.poll() is None:
            create.kill()
        op.stop()
        collector.stop()
    assert create.returncode == exit_codes.PROMOTED, \
        log.read_text()[-3000:] + op.log.read_text()[-3000:]
    assert watched.returncode == exit_codes.PROMOTED, watched.stdout + watched.stderr
    assert any(v["conditions"]["Progressing"] == ("Unknown", "Paused") for v in seen), seen
    # The status went through every stage, with conditions as Kubernetes tools read them.
    stages = {v["stage"] for v in seen if v["phase"] in ("canary", "holding")}
    assert stages == {0, 1}, seen  # 5% and 50%; the promotion from 50% ends at 100%
    running = [v for v in seen if v["phase"] in ("canary", "holding")
               and v["conditions"]["Progressing"][1] != "Paused"]
    assert running
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
    # 5% → 50% by the operator's promote, 50% → 100% by the gate (or both by the gate
    # when the gate was quicker than the command).
    assert reasons.count("DecisionPromote") + reasons.count("OperatorPromote") >= 2, reasons
    assert {"RolloutStarted", "OperatorPause", "OperatorResume", "OperatorPromote"} <= \
        set(reasons), reasons
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
    collector = collector_process(tmp_path)
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
        listed = _deployments(["list", "-t", f"kpigate:/seldon/{NS}"], registered_model,
                              fake_kube)
        assert name in listed.stdout, listed.stderr
        # Deleting it deletes the ModelRollout, and with it what it owns.
        deleted = _deployments(["delete", "-t", f"kpigate:/seldon/{NS}", "--name", name],
                               registered_model, fake_kube)
        assert deleted.returncode == 0, deleted.stderr
        assert fake_kube.get_object("modelrollouts", NS, name) is None
        assert fake_kube.get_object("seldondeployments", NS, name) is None
        assert not [c for c in fake_kube.objects("configmaps", NS)
                    if c["metadata"]["name"].startswith(f"{name}-kpigate")]
    finally:
        op.stop()
        collector.stop()


def _modelrollout(name: str, model, policy_text: str, prometheus, collector_url: str,
                  token_secret: str) -> dict:
    """A ModelRollout as a GitOps user writes it (policy inline, tokens from a Secret)."""
    import yaml

    return {"apiVersion": "kpigate.io/v1alpha1", "kind": "ModelRollout",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"name": model.name, "candidate": {"version": "2"},
                               "baseline": {"version": "1"}},
                     "policy": {"inline": yaml.safe_load(policy_text)},
                     "backend": {"kind": "SeldonDeployment"},
                     "tracking": {"uri": model.tracking_uri},
                     "collector": {"url": collector_url,
                                   "tokenSecretRef": {"name": token_secret}},
                     "prometheusUrl": prometheus.url}}


def _token_secret(fake, name: str, collector) -> None:
    import base64

    data = {scope: base64.b64encode(path.read_bytes()).decode()
            for scope, path in collector.token_files.items()}
    fake.seed({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
               "type": "Opaque", "data": data}, namespace=NS)


def _candidate_traffic(fake, name) -> float:
    sdep = fake.get_object("seldondeployments", NS, name)
    if sdep is None:
        return 0.0
    return float(next((p.get("traffic", 0) for p in sdep["spec"]["predictors"]
                       if p["name"] == "candidate" and not p.get("shadow")), 0))


def _workers_of(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"operator_worker .*--name {name}( |$)"],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_operator_killed_at_random_points_resumes_without_passing_the_approved_stage(
        fake_kube, prometheus, seldon, registered_model, tmp_path):  # noqa: F811
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    name = "fraud-kill"
    seldon(name, cand_error=0.0)
    collector = collector_process(tmp_path)
    env = _operator_env(collector)
    rng = random.Random(20261205)
    store = _store(fake_kube, name)
    kills = 0
    try:
        created = _deployments(_create_args(name, registered_model, policy, prometheus,
                                            collector, fake_kube, wait=False),
                               registered_model, fake_kube)
        assert created.returncode == 0, created.stderr[-2000:]
        while kills < 6:
            op = operator_process(fake_kube, tmp_path, f"op-k{kills}", env)
            wait_for(op.leads, "the new operator to lead", 60)
            time.sleep(rng.uniform(0.5, 9.0))  # anywhere: starting, applying, evaluating
            before = store.load()
            op.kill()
            kills += 1
            after = store.load()
            approved = max(s.weights.candidate_percent for s in (before, after)
                           if s is not None) if (before or after) else 0.0
            # The cluster never runs ahead of what the committed state approved.
            assert _candidate_traffic(fake_kube, name) <= max(approved, 5.0)
            # The workers died with the operator: nothing acts until the next leader.
            wait_for(lambda: not _workers_of(name), "the killed operator's workers to die", 10)
            if after is not None and after.phase.terminal:
                break
        op = operator_process(fake_kube, tmp_path, "op-final", env)
        try:
            wait_for(lambda: (s := store.load()) is not None and s.phase.terminal and s,
                     "the rollout to end", 240)
            # The operator writes the resource's status after it sees the ended state: wait
            # for that write before stopping it (the assertion on it follows below).
            wait_for(lambda: _conditions(fake_kube, name).get("Progressing") == "False",
                     "the status of the ended rollout", 60)
        finally:
            op.stop()
    finally:
        collector.stop()
    assert kills >= 5
    state = store.require()
    assert state.phase.value == "promoted", state.reason
    events = store.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(e.kind == "created" for e in events) == 1  # resumed, never restarted
    assert _conditions(fake_kube, name)["Available"] == "True"


def test_two_operators_elect_one_leader_who_runs_two_rollouts_and_hands_over(
        fake_kube, prometheus, seldon, registered_model, tmp_path):  # noqa: F811
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    good, bad = "fraud-two-good", "fraud-two-bad"
    seldon(good, cand_error=0.0)
    seldon(bad, cand_error=0.3)
    collector = collector_process(tmp_path)  # the namespace's one, shared by both
    _token_secret(fake_kube, "kpigate-collector-tokens", collector)
    for n in (good, bad):
        fake_kube.seed(_modelrollout(n, registered_model, POLICY, prometheus, collector.url,
                                     "kpigate-collector-tokens"), namespace=NS)
    ops = [operator_process(fake_kube, tmp_path, ident) for ident in ("op-1", "op-2")]
    try:
        leader = wait_for(lambda: [o for o in ops if o.leads()], "a leader", 60)
        assert len(leader) == 1
        leader = leader[0]
        standby = next(o for o in ops if o is not leader)
        # The leader runs both rollouts; the standby acts on nothing.
        wait_for(lambda: all(_store(fake_kube, n).exists() for n in (good, bad)),
                 "both rollouts to start", 120)
        wait_for(lambda: _store(fake_kube, good).require().stage_index >= 1,
                 "the good rollout's first promotion", 120)
        assert not standby.leads()
        by = {e.get("reportingInstance") for n in (good, bad) for e in _events(fake_kube, n)}
        assert by == {leader.identity}
        leader.kill()
        wait_for(standby.leads, "the standby to take over", 60)
        ended = {n: wait_for(lambda n=n: (s := _store(fake_kube, n).load()) is not None
                             and s.phase.terminal and s, f"{n} to end", 240)
                 for n in (good, bad)}
    finally:
        for o in ops:
            o.stop()
        collector.stop()
    assert ended[good].phase.value == "promoted", ended[good].reason
    assert ended[bad].phase.value == "rolled_back", ended[bad].reason
    lease = fake_kube.get_object("leases", NS, "kpigate-operator")
    assert lease["spec"]["holderIdentity"] == standby.identity
    for n in (good, bad):
        events = _store(fake_kube, n).events()
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert sum(e.kind == "created" for e in events) == 1
    assert {e.get("reportingInstance") for e in _events(fake_kube, good)} == \
        {"op-1", "op-2"}
    assert _conditions(fake_kube, bad)["Degraded"] == "True"
