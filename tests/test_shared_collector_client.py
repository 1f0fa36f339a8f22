"""The collector's clients with a shared collector (``-C shared_collector=true``): the
logger, notice, feedback and registration URLs, the ``-C`` key, and the saved settings
(old ones without the key still load)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from fake_kube import fake_kube  # noqa: F401  (fixture)

from mlflow_kpigate.backends.seldon.cluster import Cluster
from mlflow_kpigate.backends.seldon.collector_credentials import CollectorCredentials
from mlflow_kpigate.backends.seldon.collector_registration import CollectorRegistrationFailed
from mlflow_kpigate.backends.seldon.manifests import ModelRef, seldon_deployment
from mlflow_kpigate.backends.seldon.target import SeldonTarget
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.deploy.config import parse_config
from mlflow_kpigate.deploy.seldon_rollout import ClusterRollout, seldon_target, start_rollout
from mlflow_kpigate.policy import load_policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.memory import InMemoryRegistry

BASE_URL = "http://kpigate-collector.models.svc:8080"
BASE = ModelRef("3", "s3://models/fraud/3", "fraud")
CAND = ModelRef("4", "s3://models/fraud/4", "fraud")


def test_a_shared_collector_serves_the_rollout_under_rollouts_name():
    token = secrets.token_hex(32)
    single = SeldonTarget("models", "fraud", collector_url=BASE_URL, ingest_token=token)
    shared = SeldonTarget("models", "fraud", collector_url=BASE_URL + "/", ingest_token=token,
                          shared_collector=True)
    assert single.logger_url == f"{BASE_URL}/cloudevents/{token}"
    assert single.notice_url == f"{BASE_URL}/admin/stage"
    assert single.feedback_url == f"{BASE_URL}/feedback"
    assert shared.collector_rollout_url == f"{BASE_URL}/rollouts/fraud"
    assert shared.logger_url == f"{BASE_URL}/rollouts/fraud/cloudevents/{token}"
    assert shared.notice_url == f"{BASE_URL}/rollouts/fraud/admin/stage"
    assert shared.feedback_url == f"{BASE_URL}/rollouts/fraud/feedback"
    tokenless = SeldonTarget("models", "fraud", collector_url=BASE_URL, shared_collector=True)
    assert tokenless.logger_url == f"{BASE_URL}/rollouts/fraud/cloudevents"
    assert token not in repr(shared)
    nothing = SeldonTarget("models", "fraud")
    assert (nothing.logger_url, nothing.notice_url, nothing.feedback_url) == (None,) * 3


def test_the_manifests_logger_url_in_shared_mode():
    token = secrets.token_hex(32)
    target = SeldonTarget("models", "fraud", collector_url=BASE_URL, ingest_token=token,
                          shared_collector=True)
    sdep = seldon_deployment(target, BASE, CAND, Weights(5.0, False, True))
    urls = {p["graph"]["logger"]["url"] for p in sdep["spec"]["predictors"]}
    assert urls == {f"{BASE_URL}/rollouts/fraud/cloudevents/{token}"}


def test_the_config_key_is_a_boolean_that_needs_a_collector_url():
    cfg = parse_config({"collector_url": BASE_URL, "shared_collector": "true"})
    assert cfg.shared_collector is True
    assert parse_config({"collector_url": BASE_URL}).shared_collector is False
    assert parse_config({"shared_collector": "false"}).shared_collector is False
    target = seldon_target("models", "fraud", cfg)
    assert target.shared_collector is True
    assert target.notice_url == f"{BASE_URL}/rollouts/fraud/admin/stage"
    with pytest.raises(UsageError, match=r"^-C shared_collector=maybe: must be true or false"):
        parse_config({"collector_url": BASE_URL, "shared_collector": "maybe"})
    with pytest.raises(UsageError, match=r"^-C shared_collector=true: needs -C collector_url"):
        parse_config({"shared_collector": "yes"})
    with pytest.raises(UsageError, match=r"^shared_collector: true needs collector_url"):
        SeldonTarget("models", "fraud", shared_collector=True)
    with pytest.raises(UsageError, match=r"^shared_collector: 'yes' is not true or false"):
        SeldonTarget("models", "fraud", collector_url=BASE_URL,
                     shared_collector="yes")  # type: ignore[arg-type]


def test_saved_settings_round_trip_and_old_settings_still_load(fake_kube):  # noqa: F811
    target = SeldonTarget("models", "fraud", collector_url=BASE_URL, shared_collector=True,
                          replicas=2)
    saved = target.saved_settings()
    assert saved["shared_collector"] is True
    assert SeldonTarget(namespace="models", name="fraud", **saved) == target  # type: ignore[arg-type]
    # Settings saved before the key existed: a collector of its own.
    old = {"target": {"seldon_version": 1, "env_secret": None, "collector_url": BASE_URL,
                      "gateway_url": None, "replicas": 1},
           "baseline": {"version": "3", "storage_uri": BASE.storage_uri, "model_name": "fraud"},
           "candidate": {"version": "4", "storage_uri": CAND.storage_uri,
                         "model_name": "fraud"}}
    fake_kube.seed({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "fraud-kpigate-policy", "namespace": "models"},
                    "data": {"settings.json": json.dumps(old)}}, namespace="models")
    cluster = Cluster.connect("models", fake_kube.kubeconfig)
    try:
        rollout = ClusterRollout(cluster, "fraud")
        traffic = rollout.traffic(rollout.settings()["settings"], CollectorCredentials())
    finally:
        cluster.close()
    assert traffic.target.shared_collector is False
    assert traffic.target.notice_url == f"{BASE_URL}/admin/stage"


# -- against a real shared collector and the fake API server -----------------------------------

POLICY = """
stages: shadow,5,25,100
evaluation: {maturity: 0s}
kpis:
  - {name: recall, kind: proportion, metric: recall, margin: 0.02}
"""


def test_start_rollout_registers_before_applying_and_applies_nothing_when_refused(
        fake_kube, tmp_path: Path):  # noqa: F811
    from _collector_fixtures import TOKENS, write_token_files
    from _router_fixtures import running

    from mlflow_kpigate.metrics.service_auth import CollectorTokens
    from mlflow_kpigate.metrics.service_shared import create_shared_collector_app
    from mlflow_kpigate.metrics.shared_registry import SharedCollectorConfig

    tokens = tmp_path / "tokens"
    write_token_files(tokens)
    good = CollectorCredentials(tokens / "operator", TOKENS["ingest"])
    wrong = CollectorCredentials(tokens / "labels", TOKENS["ingest"])  # not the operator's
    registry = InMemoryRegistry()
    candidate = registry.register("fraud", "4")
    baseline = registry.register("fraud", "3", alias="champion")
    policy_file = tmp_path / "work" / "policy.yaml"
    policy_file.parent.mkdir()
    policy_file.write_text(POLICY)
    policy = load_policy(policy_file)
    app = create_shared_collector_app(SharedCollectorConfig(
        data_dir=tmp_path / "collector", tokens=CollectorTokens.of(TOKENS),
        overrides={"metrics_cache_s": 0.0}))
    lines: list[str] = []
    with running(app) as url:
        cfg = parse_config({"collector_url": url, "shared_collector": "true"})
        target = seldon_target("models", "fraud", cfg, ingest_token=TOKENS["ingest"])
        manifests = [seldon_deployment(target, ModelRef.from_registry(baseline),
                                       ModelRef.from_registry(candidate),
                                       transitions.stage_weights(policy.stages[0]))]
        cluster = Cluster.connect("models", fake_kube.kubeconfig)
        try:
            rollout = ClusterRollout(cluster, "fraud")

            def start(creds: CollectorCredentials) -> None:
                start_rollout(rollout, target, cfg, manifests, policy, policy_file, registry,
                              (candidate, baseline), "memory://", lines.append,
                              credentials=creds)

            with pytest.raises(CollectorRegistrationFailed) as refused:
                start(wrong)
            message = str(refused.value)
            assert "\n" not in message
            assert message.startswith(f"the shared collector at {url} did not register "
                                      "rollout fraud (HTTP 403: this token does not open PUT "
                                      "/rollouts")
            assert "nothing was applied" in message
            assert fake_kube.get_object("seldondeployments", "models", "fraud") is None
            assert fake_kube.objects("configmaps", "models") == []
            assert app.state.registry.registrations() == {}

            start(good)
            registered = app.state.registry.registrations()["fraud"]
            assert dict(registered.versions) == {"baseline": "3", "candidate": "4"}
            assert registered.policy == POLICY
            assert lines[0] == f"kpigate: fraud registered with the shared collector at {url} " \
                               "(created)"
            sdep = fake_kube.get_object("seldondeployments", "models", "fraud")
            assert {p["graph"]["logger"]["url"] for p in sdep["spec"]["predictors"]} == \
                {f"{url}/rollouts/fraud/cloudevents/{TOKENS['ingest']}"}
            settings = rollout.settings()["settings"]
            assert settings["target"]["shared_collector"] is True
            assert TOKENS["ingest"] not in json.dumps(settings)
            # The controller's stage notice goes to the rollout's own route.
            traffic = rollout.traffic(settings, good)
            state = rollout.store.require()
            traffic.notify_collector(state.evolve(stage_index=1, revision=state.revision + 1,
                                                  weights=Weights(5.0, False, True)))
            status = requests.get(f"{url}/rollouts/fraud/status", timeout=30).json()
            assert status["stage"]["stage_index"] == 1
            # delete's deregistration
            rollout.deregister(settings, good)
            assert app.state.registry.registrations() == {}
            rollout.deregister(settings, good)  # again: not known any more, no error
        finally:
            cluster.close()


def test_kpigate_feedback_posts_a_seldon_rollouts_labels_to_its_collector(
        fake_kube, tmp_path: Path):  # noqa: F811
    from _collector_fixtures import TOKENS, seldon_event, seldon_request, seldon_response
    from _collector_fixtures import write_token_files as token_files
    from _router_fixtures import running

    from mlflow_kpigate.backends.seldon.collector_credentials import LABELS_TOKEN_ENV
    from mlflow_kpigate.metrics.service_auth import CollectorTokens
    from mlflow_kpigate.metrics.service_shared import create_shared_collector_app
    from mlflow_kpigate.metrics.shared_registry import SharedCollectorConfig

    tokens = tmp_path / "tokens"
    token_files(tokens)
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nf-1,1\nf-2,0\n")
    app = create_shared_collector_app(SharedCollectorConfig(
        data_dir=tmp_path / "collector", tokens=CollectorTokens.of(TOKENS),
        overrides={"metrics_cache_s": 0.0}))
    with running(app) as url:
        settings = {"target": {**SeldonTarget("models", "fraud", collector_url=url,
                                              shared_collector=True).saved_settings()}}
        fake_kube.seed({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "fraud-kpigate-policy", "namespace": "models"},
                        "data": {"settings.json": json.dumps(settings), "policy.yaml": POLICY}},
                       namespace="models")
        assert requests.put(f"{url}/rollouts/fraud", json={
            "policy": POLICY, "versions": {"baseline": "3", "candidate": "4"}},
            headers={"Authorization": f"Bearer {TOKENS['operator']}"},
            timeout=30).status_code == 201
        for puid in ("f-1", "f-2"):
            for kind, payload in (("request", seldon_request([[1, 1, "eu", "c"]])),
                                  ("response", seldon_response([0.9]))):
                ev = seldon_event(kind, puid, "candidate", payload)
                ev.headers["Ce-Inferenceservicename"] = "fraud"
                assert requests.post(f"{url}/rollouts/fraud/cloudevents/{TOKENS['ingest']}",
                                     data=ev.body, headers=ev.headers,
                                     timeout=30).status_code == 200
        argv = ["fraud", "--file", str(labels), "-t", "kpigate:/seldon/models",
                "--state-dir", str(tmp_path / "state")]
        env = {k: v for k, v in os.environ.items() if k != LABELS_TOKEN_ENV}
        env["KUBECONFIG"] = str(fake_kube.kubeconfig)  # read when kubernetes is imported

        def feedback(*extra: str, **more: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mlflow_kpigate.cli", "feedback",
                                   *argv, *extra], capture_output=True, text=True,
                                  timeout=120, env={**env, **more})

        refused = feedback()
        assert refused.returncode == 2, refused.stderr
        error = refused.stderr.strip().splitlines()
        assert len(error) == 1, refused.stderr
        assert "HTTP 401" in error[0]
        assert error[0].endswith("give the collector's labels token (--token-file PATH or "
                                 "$KPIGATE_COLLECTOR_LABELS_TOKEN_FILE)")
        sent = feedback("--token-file", str(tokens / "labels"))
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith("2 labels: 2 matched")
        again = feedback(**{LABELS_TOKEN_ENV: str(tokens / "labels")})
        assert again.stdout.startswith("2 labels: 0 matched, 0 unknown request ids, "
                                       "2 duplicates"), again.stderr
        status = requests.get(f"{url}/rollouts/fraud/status", timeout=30).json()
        assert status["labels"]["matched"] == 2
