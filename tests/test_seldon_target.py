"""The ``kpigate:/seldon/NAMESPACE`` MLflow target: usage errors, dry runs, operator actions,
and the v2 (Model + Experiment) router — through MLflow's CLI and the real kubernetes
client against the fake API server (tests/fake_kube.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import yaml
from fake_kube import fake_kube  # noqa: F401
from mlflow_cli import mlflow_deployments

from mlflow_kpigate.backends.seldon.cluster import Cluster
from mlflow_kpigate.backends.seldon.kinds import CONFIG_MAP, SELDON_EXPERIMENT, SELDON_MODEL
from mlflow_kpigate.backends.seldon.manifests import ModelRef, v2_experiment, v2_models
from mlflow_kpigate.backends.seldon.state_store import ClusterStore
from mlflow_kpigate.backends.seldon.target import SeldonTarget
from mlflow_kpigate.backends.seldon.traffic import SeldonTraffic
from mlflow_kpigate.core.state import Phase, RolloutState, Weights

NS = "models"
# The controller runs in other processes: they need the tracking server, not a local file.
SERVER = pytest.mark.parametrize("tracking_uri", ["server"], indirect=True)

POLICY = textwrap.dedent("""
    evaluation: {interval: 1s, maturity: 0s}
    stages: [5, 50, 100]
    kpis:
      - {name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.02}
    metrics:
      prometheus: {url: "http://127.0.0.1:9", timeout: 1s, retries: 0, max_wait: 2s}
""")


def _mlflow(args, env_extra=None, tmp_path=None, timeout=180):
    env = {**os.environ, **(env_extra or {})}
    if tmp_path is not None:
        env["KPIGATE_STATE_DIR"] = str(tmp_path / "state")
    return mlflow_deployments(args, env=env, timeout=timeout)


def _error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


@SERVER
@pytest.mark.parametrize(("target", "extra", "expect"), [
    ("kpigate:/seldon/Bad_NS", [], "namespace"),
    ("kpigate:/seldon/", [], "no namespace"),
    ("kpigate", ["-C", "seldon_version=2"], "only for -t kpigate:/seldon"),
    ("kpigate:/seldon/models", ["-C", "seldon_version=3"], "seldon_version"),
    ("kpigate:/seldon/models", ["-C", "collector_url=ftp://x"], "collector_url"),
    ("kpigate:/seldon/models", ["-C", "stages=shadow,2.5,100"], "whole percent"),
])
def test_bad_seldon_input_is_one_line_and_exit_2(registered_model, tmp_path, target, extra,
                                                 expect):
    proc = _mlflow(["create", "-t", target, "--name", "fraud", "-m",
                    f"models:/{registered_model.name}/2", "-C",
                    f"baseline=models:/{registered_model.name}/1", "-C", "dry_run=true",
                    *extra], {"MLFLOW_TRACKING_URI": registered_model.tracking_uri}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expect in _error_line(proc)


@SERVER
def test_dry_run_prints_valid_manifests_and_touches_no_cluster(registered_model, tmp_path):
    from crd_schema import schema_errors  # the CRD validator of the manifest tests

    proc = _mlflow(["create", "-t", f"kpigate:/seldon/{NS}", "--name", "fraud", "-m",
                    f"models:/{registered_model.name}/2", "-C",
                    f"baseline=models:/{registered_model.name}/1", "-C", "dry_run=true",
                    "-C", "kubeconfig=/nonexistent"],
                   {"MLFLOW_TRACKING_URI": registered_model.tracking_uri}, tmp_path)
    # A kubeconfig that does not exist is refused up front, even for a dry run.
    assert proc.returncode == 2
    assert "kubeconfig" in _error_line(proc)
    token = "e5" * 32
    (tmp_path / "ingest").write_text(token)
    proc = _mlflow(["create", "-t", f"kpigate:/seldon/{NS}", "--name", "fraud", "-m",
                    f"models:/{registered_model.name}/2", "-C",
                    f"baseline=models:/{registered_model.name}/1", "-C", "dry_run=true",
                    "-C", "stages=5,25,100", "-C", "collector_url=http://c.models.svc:8080"],
                   {"MLFLOW_TRACKING_URI": registered_model.tracking_uri,
                    "KUBECONFIG": "/nonexistent",
                    "KPIGATE_COLLECTOR_INGEST_TOKEN_FILE": str(tmp_path / "ingest")}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    # What is printed never holds the collector's ingest token.
    assert token not in proc.stdout + proc.stderr
    assert "/cloudevents/<ingest token>" in proc.stderr
    manifests = proc.stdout.split("python_function deployment")[0]  # then MLflow's summary
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    sdep = docs[0]
    assert sdep["kind"] == "SeldonDeployment"
    assert schema_errors(sdep) == []
    assert {p["name"]: p["traffic"] for p in sdep["spec"]["predictors"]} == \
        {"baseline": 95, "candidate": 5}
    assert {p["graph"]["logger"]["url"] for p in sdep["spec"]["predictors"]} == \
        {"http://c.models.svc:8080/cloudevents"}
    assert "dry run" in proc.stderr


class SeldonGateway:
    """Seldon's ingress as a client sees it: the v1 prediction path on loopback."""

    def __init__(self):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append((self.path, body))
                rows = body["data"]["ndarray"]
                reply = json.dumps({"data": {"names": ["score"],
                                             "ndarray": [0.25] * len(rows)}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def gateway():
    gw = SeldonGateway()
    yield gw
    gw.stop()


@SERVER
def test_operator_rollback_through_mlflow_update(fake_kube, registered_model, tmp_path,  # noqa: F811
                                                 gateway):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    env = {"MLFLOW_TRACKING_URI": registered_model.tracking_uri,
           "KUBECONFIG": str(fake_kube.kubeconfig)}
    target = f"kpigate:/seldon/{NS}"
    proc = _mlflow(["create", "-t", target, "--name", "fraud", "-m",
                    f"models:/{registered_model.name}/2", "-C",
                    f"baseline=models:/{registered_model.name}/1", "-C", f"policy={policy}",
                    "-C", f"gateway_url={gateway.url}", "-C", "operator=false"],
                   env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "controller running in the background" in proc.stderr
    try:
        sdep = fake_kube.get_object("seldondeployments", NS, "fraud")
        assert {p["name"]: p["traffic"] for p in sdep["spec"]["predictors"]} == \
            {"baseline": 95, "candidate": 5}
        got = _mlflow(["get", "-t", target, "--name", "fraud"], env, tmp_path)
        assert got.returncode == 0, got.stderr
        assert "canary" in got.stdout
        listed = _mlflow(["list", "-t", target], env, tmp_path)
        assert "fraud" in listed.stdout
        # Predictions go through Seldon's ingress with the v1 protocol.
        payload = tmp_path / "input.json"
        # MLflow's CLI reads this file with pandas.read_json: records.
        payload.write_text('[{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}]')
        pred = _mlflow(["predict", "-t", target, "--name", "fraud", "--input-path",
                        str(payload)], env, tmp_path)
        assert pred.returncode == 0, pred.stderr
        assert "0.25" in pred.stdout
        assert gateway.received == [(f"/seldon/{NS}/fraud/api/v1.0/predictions",
                                     {"data": {"names": ["a", "b"],
                                               "ndarray": [[1.0, 2.0], [3.0, 4.0]]}})]
        again = _mlflow(["create", "-t", target, "--name", "fraud", "-m",
                         f"models:/{registered_model.name}/1", "-C",
                         f"baseline=models:/{registered_model.name}/2", "-C",
                         f"policy={policy}"], env, tmp_path)
        assert again.returncode == 2
        assert "already runs a rollout" in _error_line(again)
        upd = _mlflow(["update", "-t", target, "--name", "fraud", "-C", "action=rollback"],
                      env, tmp_path)
        assert upd.returncode == 0, upd.stderr
        store = ClusterStore(Cluster.connect(NS, fake_kube.kubeconfig).objects(CONFIG_MAP),
                             "fraud")
        state = store.require()
        assert state.phase is Phase.ROLLED_BACK
        assert not state.effects_pending
        sdep = fake_kube.get_object("seldondeployments", NS, "fraud")
        assert [(p["name"], p["traffic"]) for p in sdep["spec"]["predictors"]] == \
            [("baseline", 100)]
        assert "operator_rollback" in [e.kind for e in store.events()]
        # The GitHub Action reports a cluster rollout from its ConfigMaps.
        out, summary = tmp_path / "gh-output", tmp_path / "gh-summary"
        gh_env = {**os.environ, **env, "GITHUB_OUTPUT": str(out),
                  "GITHUB_STEP_SUMMARY": str(summary), "KPIGATE_STATE_DIR":
                  str(tmp_path / "runner-state")}
        gh_env.pop("GITHUB_TOKEN", None)
        report = subprocess.run(
            [sys.executable, "-m", "mlflow_kpigate.cli", "github", "report", "--deployment",
             "fraud", "--target", target, "--no-comment", "--fail-on", "rollback"],
            env=gh_env, capture_output=True, text=True, timeout=120)
        assert report.returncode == 3, report.stderr  # fail-on rollback: exit code 3
        assert "decision<<" in out.read_text()
        assert "rolled_back" in out.read_text()
        assert "rolled back" in summary.read_text().lower()
        run_id = subprocess.run(
            [sys.executable, "-m", "mlflow_kpigate.cli", "github", "run-id", "--deployment",
             "fraud", "--target", target], env=gh_env, capture_output=True, text=True,
            timeout=60)
        assert run_id.stdout.strip() == state.rollout_run_id
    finally:
        done = _mlflow(["delete", "-t", target, "--name", "fraud"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert fake_kube.get_object("seldondeployments", NS, "fraud") is None
    pid_file = tmp_path / "state" / "seldon" / NS / "fraud" / "controller.pid"
    assert not pid_file.exists()


def test_v2_experiment_follows_the_weights_and_readiness(fake_kube, tmp_path):  # noqa: F811
    cluster = Cluster.connect(NS, fake_kube.kubeconfig)
    target = SeldonTarget(namespace=NS, name="fraud", seldon_version=2)
    base = ModelRef("1", "s3://models/fraud/1", "fraud")
    cand = ModelRef("2", "s3://models/fraud/2", "fraud")
    for model in v2_models(target, base, cand):
        cluster.objects(SELDON_MODEL).create(model)
    shadow = Weights(0.0, True, True)
    cluster.objects(SELDON_EXPERIMENT).create(v2_experiment(target, shadow))
    traffic = SeldonTraffic(cluster, target, base, cand)
    state = RolloutState(name="fraud", model_name="fraud", candidate_version="2",
                         baseline_version="1", candidate_uri="models:/fraud/2",
                         baseline_uri="models:/fraud/1", policy_file="-", tracking_uri="-",
                         port=0, weights=shadow, phase=Phase.SHADOW)
    r = traffic.readiness(state)
    assert not r.ready
    assert not r.failed
    for plural, name in (("experiments", "fraud"), ("models", "fraud-baseline"),
                         ("models", "fraud-candidate")):
        fake_kube.set_ready_v2(plural, NS, name, True)
    assert traffic.readiness(state).ready
    canary = state.evolve(weights=Weights(25.0, False, True), phase=Phase.CANARY)
    assert not traffic.readiness(canary).ready  # the Experiment still mirrors
    traffic.apply(canary)
    exp = fake_kube.get_object("experiments", NS, "fraud")
    assert sorted((c["name"], c["weight"]) for c in exp["spec"]["candidates"]) == \
        [("fraud-baseline", 75), ("fraud-candidate", 25)]
    assert "mirror" not in exp["spec"]
    fake_kube.set_ready_v2("experiments", NS, "fraud", True)
    assert traffic.readiness(canary).ready
    patches = [r for r in fake_kube.requests if r.method == "PATCH"]
    assert patches[-1].content_type == "application/json-patch+json"
    rolled = canary.evolve(weights=Weights.baseline_only(), phase=Phase.ROLLED_BACK)
    traffic.apply(rolled)
    exp = fake_kube.get_object("experiments", NS, "fraud")
    assert [(c["name"], c["weight"]) for c in exp["spec"]["candidates"]] == \
        [("fraud-baseline", 100)]
    assert fake_kube.get_object("models", NS, "fraud-candidate") is None
    assert fake_kube.get_object("models", NS, "fraud-baseline") is not None
    traffic.apply(rolled)  # repeated after a crash: harmless
    fake_kube.set_ready_v2("experiments", NS, "fraud", True)
    assert traffic.readiness(rolled).ready
    fake_kube.set_ready_v2("models", NS, "fraud-baseline", False, reason="ModelFailed",
                           message="load failed")
    r = traffic.readiness(rolled.evolve(phase=Phase.CANARY))
    assert r.failed


def test_stage_notice_is_one_post_with_the_operator_token_and_not_retried(tmp_path):
    from pytest_httpserver import HTTPServer

    from mlflow_kpigate.backends.seldon.collector_credentials import CollectorCredentials
    from mlflow_kpigate.backends.seldon.traffic import CollectorUnreachable

    token_file = tmp_path / "operator"
    token_file.write_text("a1" * 32 + "\n")
    collector = HTTPServer(host="127.0.0.1", port=0)
    collector.start()
    try:
        target = SeldonTarget(namespace=NS, name="fraud",
                              collector_url=collector.url_for("/"))
        traffic = SeldonTraffic(None, target, ModelRef("1", "s3://m/1", "fraud"),
                                ModelRef("2", "s3://m/2", "fraud"),
                                CollectorCredentials(operator_token_file=token_file))
        canary = RolloutState(name="fraud", model_name="fraud", candidate_version="2",
                              baseline_version="1", candidate_uri="models:/fraud/2",
                              baseline_uri="models:/fraud/1", policy_file="-",
                              tracking_uri="-", port=0, weights=Weights(25.0, False, True),
                              phase=Phase.CANARY, stage_index=1)
        collector.expect_oneshot_request("/admin/stage", method="POST").respond_with_data("")
        traffic.notify_collector(canary)
        assert collector.log[0][0].get_json() == {
            "deployment": "fraud", "stage_index": 1, "shadow": False,
            "candidate_percent": 25.0, "revision": canary.revision}
        assert collector.log[0][0].headers["Authorization"] == "Bearer " + "a1" * 32
        token_file.write_text("b2" * 32)  # a rotated Secret is read at the next notice
        collector.expect_oneshot_request("/admin/stage", method="POST").respond_with_data("")
        traffic.notify_collector(canary)
        assert collector.log[1][0].headers["Authorization"] == "Bearer " + "b2" * 32
        collector.expect_request("/admin/stage").respond_with_data("", status=503)
        with pytest.raises(CollectorUnreachable, match=r"stage notice \(HTTP 503\)"):
            traffic.notify_collector(canary)
        assert len(collector.log) == 3  # one try: the controller repeats the step itself
        traffic.notify_collector(canary.evolve(phase=Phase.ROLLED_BACK))  # only logged
        assert len(collector.log) == 4
        token_file.unlink()  # the Secret is gone: said before anything is sent
        with pytest.raises(CollectorUnreachable, match=r"KPIGATE_COLLECTOR_TOKEN_FILE: .*"
                                                       r"no such file.*fix KPIGATE"):
            traffic.notify_collector(canary)
        assert len(collector.log) == 4
    finally:
        collector.stop()


def test_collector_credentials_come_from_token_files_named_by_the_environment(tmp_path):
    from mlflow_kpigate.backends.seldon.collector_credentials import CollectorCredentials
    from mlflow_kpigate.core.errors import UsageError

    (tmp_path / "operator").write_text("c3" * 32)
    (tmp_path / "ingest").write_text("d4" * 32 + "\n")
    (tmp_path / "template").write_text("<generate with: openssl rand -hex 32, then paste>")
    assert CollectorCredentials.from_env({}) == CollectorCredentials()
    creds = CollectorCredentials.from_env({
        "KPIGATE_COLLECTOR_TOKEN_FILE": str(tmp_path / "operator"),
        "KPIGATE_COLLECTOR_INGEST_TOKEN_FILE": str(tmp_path / "ingest")})
    assert creds.operator_token() == "c3" * 32
    assert creds.ingest_token == "d4" * 32
    assert "d4" * 32 not in repr(creds)
    for name, path, message in (
            ("KPIGATE_COLLECTOR_TOKEN_FILE", tmp_path / "none", "no such file"),
            ("KPIGATE_COLLECTOR_INGEST_TOKEN_FILE", tmp_path / "template",
             "has characters other than")):
        with pytest.raises(UsageError, match=rf"^{name}: {tmp_path}.*{message}") as caught:
            CollectorCredentials.from_env({name: str(path)})
        assert "\n" not in str(caught.value)
        assert "openssl rand -hex 32>" not in str(caught.value)  # never the file's content
