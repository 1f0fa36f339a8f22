"""Cluster operations and the ConfigMap state store, end to end against the fake API server.

Everything goes through the real ``kubernetes`` client over HTTP to ``tests/fake_kube.py``;
SeldonDeployments are small hand-written dicts.
"""
# The fixtures imported from fake_kube are used as test parameters, which ruff reads as
# redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
from fake_kube import fake_kube, fake_kube_factory  # noqa: F401  (fixtures)

from mlflow_kpigate.backends.seldon.cluster import Cluster, api_client_from
from mlflow_kpigate.backends.seldon.cluster_errors import (
    ClusterAccessDenied,
    ClusterConflict,
    ClusterInvalid,
    ClusterNotFound,
    ClusterUnreachable,
    KubeConfigError,
    ObjectExists,
    ResourceNotServed,
)
from mlflow_kpigate.backends.seldon.kinds import (
    CONFIG_MAP,
    SELDON_DEPLOYMENT,
    SELDON_MODEL,
    SPEC_HASH_ANNOTATION,
    managed_labels,
    owner_reference,
)
from mlflow_kpigate.backends.seldon.readiness import readiness, readiness_v2
from mlflow_kpigate.backends.seldon.state_store import (
    ClusterStore,
    archive_configmap_name,
    state_configmap_name,
)
from mlflow_kpigate.core.errors import StateConflict, UsageError
from mlflow_kpigate.core.events import OtherEvent
from mlflow_kpigate.core.state import Phase, Readiness, RolloutState, Weights

NS = "models"
JSON_PATCH = "application/json-patch+json"


def sdep(name: str = "fraud", labels: dict | None = None, spec_hash: str = "h1") -> dict:
    def predictor(role: str, traffic: int, image: str) -> dict:
        return {"name": role, "traffic": traffic, "replicas": 1,
                "graph": {"name": "model", "type": "MODEL", "children": []},
                "componentSpecs": [{"spec": {"containers": [{"name": "model", "image": image}]}}]}

    return {"apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
            "metadata": {"name": name, "labels": labels or {},
                         "annotations": {SPEC_HASH_ANNOTATION: spec_hash}},
            "spec": {"predictors": [predictor("baseline", 95, "m:1"),
                                    predictor("candidate", 5, "m:2")]}}


@pytest.fixture
def cluster(fake_kube):
    c = Cluster.connect(NS, fake_kube.kubeconfig)
    try:
        yield c
    finally:
        c.close()


def set_candidate_traffic(percent: int):
    """A guarded builder: find the predictors by name, test the names at those indexes."""
    def build(current: dict) -> list[dict]:
        names = [p["name"] for p in current["spec"]["predictors"]]
        b, c = names.index("baseline"), names.index("candidate")
        return [{"op": "test", "path": "/metadata/resourceVersion",
                 "value": current["metadata"]["resourceVersion"]},
                {"op": "test", "path": f"/spec/predictors/{b}/name", "value": "baseline"},
                {"op": "test", "path": f"/spec/predictors/{c}/name", "value": "candidate"},
                {"op": "replace", "path": f"/spec/predictors/{b}/traffic", "value": 100 - percent},
                {"op": "replace", "path": f"/spec/predictors/{c}/traffic", "value": percent}]
    return build


def traffic(obj: dict) -> dict[str, int]:
    return {p["name"]: p["traffic"] for p in obj["spec"]["predictors"]}


# -- client configuration -------------------------------------------------------------------
def test_api_client_from_kubeconfig_and_context(fake_kube, tmp_path):
    other = fake_kube.write_kubeconfig(tmp_path / "kc", context="lab")
    api = api_client_from(other, "lab")
    try:
        assert api.configuration.host == fake_kube.url
    finally:
        api.close()
    with pytest.raises(KubeConfigError) as exc:
        api_client_from(other, "nope")
    assert "\n" not in str(exc.value)
    assert "-C kube_context" in str(exc.value)
    assert exc.value.exit_code == 2
    with pytest.raises(KubeConfigError) as exc:
        api_client_from(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(exc.value)


def test_in_cluster_config_is_used_when_running_in_a_pod(monkeypatch, tmp_path):
    # No service-account token is mounted here, so the in-cluster path must fail, clearly.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeConfigError) as exc:
        api_client_from(None)
    assert "\n" not in str(exc.value)
    assert "in-cluster configuration" in str(exc.value)


def test_namespace_and_rollout_names_are_checked(fake_kube):
    with pytest.raises(UsageError, match="namespace 'Bad_NS'"):
        Cluster.connect("Bad_NS", fake_kube.kubeconfig)
    c = Cluster.connect(NS, fake_kube.kubeconfig)
    try:
        with pytest.raises(UsageError, match="DNS-1123 label"):
            c.delete_managed("fraud,app=x")
    finally:
        c.close()


# -- objects --------------------------------------------------------------------------------
def test_custom_object_crud(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    assert sdeps.get("fraud") is None
    made = sdeps.create(sdep())
    assert made["metadata"]["uid"]
    assert made["metadata"]["namespace"] == NS
    with pytest.raises(ObjectExists, match="already exists"):
        sdeps.create(sdep())
    assert [o["metadata"]["name"] for o in sdeps.list()] == ["fraud"]
    sdeps.create(sdep("other", labels={"team": "risk"}))
    assert [o["metadata"]["name"] for o in sdeps.list({"team": "risk"})] == ["other"]
    current = sdeps.get("fraud")
    current["spec"]["predictors"][1]["traffic"] = 10
    current["spec"]["predictors"][0]["traffic"] = 90
    replaced = sdeps.replace(current)
    assert traffic(replaced) == {"baseline": 90, "candidate": 10}
    assert replaced["metadata"]["generation"] == 2
    with pytest.raises(ClusterConflict):
        sdeps.replace(current)  # stale resourceVersion
    assert sdeps.delete("fraud") is True
    assert sdeps.delete("fraud") is False
    assert sdeps.get("fraud") is None
    with pytest.raises(ClusterNotFound, match="does not exist"):
        sdeps.patch_guarded("fraud", set_candidate_traffic(5))


def test_configmap_crud_returns_plain_dicts(cluster):
    cms = cluster.objects(CONFIG_MAP)
    made = cms.create({"metadata": {"name": "c", "labels": managed_labels("fraud")},
                       "data": {"a": "1"}})
    assert isinstance(made, dict)
    assert made["kind"] == "ConfigMap"
    assert made["metadata"]["labels"]["kpigate.io/rollout"] == "fraud"
    got = cms.get("c")
    got["data"]["a"] = "2"
    assert cms.replace(got)["data"] == {"a": "2"}
    assert cms.merge_patch("c", {"data": {"b": "3"}})["data"] == {"a": "2", "b": "3"}
    out = cms.patch_guarded("c", lambda cm: [{"op": "remove", "path": "/data/a"}])
    assert out["data"] == {"b": "3"}
    assert cms.patch_guarded("c", lambda cm: []) == cms.get("c")  # nothing to change


# -- guarded patches ------------------------------------------------------------------------------
def test_patch_guarded_sends_json_patch_and_survives_conflicts(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    made = sdeps.create(sdep())
    fake_kube.clear_requests()
    fake_kube.inject_conflicts(2, verbs=("patch",))
    out = sdeps.patch_guarded("fraud", set_candidate_traffic(25), backoff=0.001)
    assert traffic(out) == {"baseline": 75, "candidate": 25}
    patches = [r for r in fake_kube.requests if r.verb == "patch"]
    assert [r.status for r in patches] == [409, 409, 200]
    assert {r.content_type for r in patches} == {JSON_PATCH}
    assert patches[-1].body[0] == {"op": "test", "path": "/metadata/resourceVersion",
                                   "value": made["metadata"]["resourceVersion"]}
    assert fake_kube.count("get", "seldondeployments") == 3  # re-read before each rebuild


def test_patch_guarded_gives_up_and_changes_nothing(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    before = sdeps.create(sdep())
    fake_kube.inject_conflicts(10, verbs=("patch",))
    with pytest.raises(ClusterConflict) as exc:
        sdeps.patch_guarded("fraud", set_candidate_traffic(50), attempts=3, backoff=0.001)
    message = str(exc.value)
    assert "\n" not in message
    assert "3 consecutive attempts" in message
    assert "nothing was changed" in message
    after = fake_kube.get_object("seldondeployments", NS, "fraud")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert traffic(after) == {"baseline": 95, "candidate": 5}
    assert fake_kube.count("patch") == 3


def test_patch_guarded_rebuilds_after_a_concurrent_reorder(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    sdeps.create(sdep())
    fake_kube.clear_requests()
    # Another writer reverses the predictors between kpigate's read and its patch: the
    # first patch (built for index 1 = candidate) must fail its tests and change nothing.
    fake_kube.inject_concurrent_modification(
        "seldondeployments", NS, "fraud", lambda o: o["spec"]["predictors"].reverse())
    out = sdeps.patch_guarded("fraud", set_candidate_traffic(50), backoff=0.001)
    assert [p["name"] for p in out["spec"]["predictors"]] == ["candidate", "baseline"]
    assert traffic(out) == {"baseline": 50, "candidate": 50}
    patches = [r for r in fake_kube.requests if r.verb == "patch"]
    assert [r.status for r in patches] == [422, 200]
    assert patches[0].body[2] == {"op": "test", "path": "/spec/predictors/1/name",
                                  "value": "candidate"}
    assert patches[1].body[2] == {"op": "test", "path": "/spec/predictors/0/name",
                                  "value": "candidate"}


def test_patch_guarded_without_rv_test_still_refuses_stale_patches(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    sdeps.create(sdep())
    fake_kube.clear_requests()
    fake_kube.inject_concurrent_modification(
        "seldondeployments", NS, "fraud",
        lambda o: o["metadata"].setdefault("labels", {}).update(touched="yes"))
    out = sdeps.patch_guarded(
        "fraud", lambda cur: [{"op": "replace", "path": "/spec/predictors/1/traffic",
                               "value": 7}], backoff=0.001)
    first, second = [r for r in fake_kube.requests if r.verb == "patch"]
    assert first.body[0]["path"] == "/metadata/resourceVersion"  # added by patch_guarded
    assert first.status == 422
    assert second.status == 200
    assert out["spec"]["predictors"][1]["traffic"] == 7
    assert out["metadata"]["labels"]["touched"] == "yes"


def test_patch_guarded_reports_a_patch_that_cannot_apply(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    sdeps.create(sdep())
    with pytest.raises(ClusterInvalid) as exc:
        sdeps.patch_guarded("fraud", lambda cur: [
            {"op": "test", "path": "/spec/predictors/0/name", "value": "candidate"}])
    assert "resourceVersion" in str(exc.value)
    assert "unchanged" in str(exc.value)
    assert fake_kube.count("patch") == 1  # no pointless retries


# -- cleanup -----------------------------------------------------------------------------------
def test_delete_managed_deletes_only_the_rollouts_labelled_objects(fake_kube, cluster):
    sdeps, cms = cluster.objects(SELDON_DEPLOYMENT), cluster.objects(CONFIG_MAP)
    owner = sdeps.create(sdep(labels=managed_labels("fraud")))
    sdeps.create(sdep("other", labels=managed_labels("other")))
    sdeps.create(sdep("hand-made"))
    cms.create({"metadata": {"name": "fraud-kpigate-state", "labels": managed_labels("fraud"),
                             "ownerReferences": [owner_reference(owner)]}})
    cms.create({"metadata": {"name": "fraud-extra",
                             "labels": managed_labels("fraud", "candidate")}})
    cms.create({"metadata": {"name": "fraud-config", "labels": {"kpigate.io/rollout": "fraud"}}})
    cms.create({"metadata": {"name": "unlabelled"}})
    fake_kube.uninstall("models")  # a Seldon v1 cluster: no v2 CRDs, nothing to delete there
    deleted = cluster.delete_managed("fraud")
    # the state ConfigMap went with its owner (garbage collection), so it is not listed
    assert deleted == ["SeldonDeployment/fraud", "ConfigMap/fraud-extra"]
    assert [o["metadata"]["name"] for o in fake_kube.objects("seldondeployments", NS)] == \
        ["hand-made", "other"]
    assert [o["metadata"]["name"] for o in fake_kube.objects("configmaps", NS)] == \
        ["fraud-config", "unlabelled"]
    assert cluster.delete_managed("fraud") == []
    with pytest.raises(ResourceNotServed, match="install the CRD"):
        cluster.objects(SELDON_MODEL).list()


# -- errors ---------------------------------------------------------------------------------------
def test_forbidden_names_the_verb_resource_and_role(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    sdeps.create(sdep())
    fake_kube.forbid("patch", "seldondeployments")
    with pytest.raises(ClusterAccessDenied) as exc:
        sdeps.patch_guarded("fraud", set_candidate_traffic(50))
    message = str(exc.value)
    assert "\n" not in message
    assert "cannot patch seldondeployments.machinelearning.seldon.io 'fraud'" in message
    assert "Role" in message
    assert "kubectl auth can-i patch seldondeployments.machinelearning.seldon.io -n models" \
        in message
    assert exc.value.exit_code == 2


def test_rejected_credentials_are_a_one_line_error(fake_kube_factory, tmp_path):
    fake = fake_kube_factory(token="right")
    c = Cluster.connect(NS, fake.write_kubeconfig(tmp_path / "kc", token="wrong"))
    try:
        with pytest.raises(ClusterAccessDenied) as exc:
            c.objects(CONFIG_MAP).get("x")
    finally:
        c.close()
    assert "\n" not in str(exc.value)
    assert "401" in str(exc.value)
    assert fake.url in str(exc.value)


def test_unreachable_api_names_the_url(fake_kube_factory, tmp_path):
    fake = fake_kube_factory()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kc")
    url = fake.url
    fake.stop()  # nothing listens on that port any more
    c = Cluster.connect(NS, kubeconfig)
    try:
        with pytest.raises(ClusterUnreachable) as exc:
            c.objects(SELDON_DEPLOYMENT).get("fraud")
    finally:
        c.close()
    assert "\n" not in str(exc.value)
    assert url in str(exc.value)
    assert "unreachable" in str(exc.value)


def test_invalid_object_is_reported_with_the_servers_reason(fake_kube, cluster):
    if not fake_kube.validating:
        pytest.skip("tests/data/seldon-crds is not there: the fake does not validate")
    bad = sdep()
    bad["spec"]["predictors"][0]["traffic"] = "lots"
    with pytest.raises(ClusterInvalid) as exc:
        cluster.objects(SELDON_DEPLOYMENT).create(bad)
    assert "spec.predictors[0].traffic" in str(exc.value)
    assert "\n" not in str(exc.value)


# -- readiness ----------------------------------------------------------------------------------
def test_readiness_follows_the_seldon_status(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    sdeps.create(sdep(spec_hash="abc"))
    assert readiness(sdeps.get("fraud"), "abc") == Readiness(
        False, "SeldonDeployment fraud is not reported yet")
    fake_kube.set_seldon_state(NS, "fraud", "Creating")
    r = readiness(sdeps.get("fraud"), "abc")
    assert (r.ready, r.failed) == (False, False)
    assert "Creating" in r.reason
    fake_kube.set_seldon_state(NS, "fraud", "Available", available=0)
    r = readiness(sdeps.get("fraud"), "abc")
    assert not r.ready
    assert "fraud-baseline-0-model has 0/1 replicas available" in r.reason
    fake_kube.set_seldon_state(NS, "fraud", "Available")
    assert readiness(sdeps.get("fraud"), "abc").ready
    assert readiness(sdeps.get("fraud"), None).ready
    wrong = readiness(sdeps.get("fraud"), "def")
    assert not wrong.ready
    assert not wrong.failed
    assert "not the applied def" in wrong.reason
    fake_kube.set_seldon_state(NS, "fraud", "Failed", description="image pull failed")
    failed = readiness(sdeps.get("fraud"), "abc")
    assert (failed.ready, failed.failed) == (False, True)
    assert "image pull failed" in failed.reason


def _available(obj: dict, deployments: dict) -> dict:
    return {**obj, "status": {"state": "Available", "deploymentStatus": deployments}}


def test_readiness_matches_deployments_to_predictors():
    obj = sdep()
    one = {"replicas": 1, "availableReplicas": 1}
    assert readiness(_available(obj, {"fraud-baseline-0-model": one,
                                      "fraud-candidate-0-model": one}), "h1").ready
    # a predictor without any Deployment status (e.g. just added) is not ready
    r = readiness(_available(obj, {"fraud-baseline-0-model": one}), "h1")
    assert "no Deployment status yet for predictor 'candidate'" in r.reason
    # the separate engine (svc-orch) Deployment counts for its predictor
    r = readiness(_available(obj, {"fraud-baseline-0-model": one,
                                   "fraud-candidate-0-model": one,
                                   "fraud-candidate-svc-orch": {"replicas": 1}}), "h1")
    assert "fraud-candidate-svc-orch has 0/1" in r.reason
    # zero desired replicas is never ready
    assert not readiness(_available(obj, {"fraud-baseline-0-model": one,
                                          "fraud-candidate-0-model": {"replicas": 0}}),
                         "h1").ready
    # a long name is hashed by Seldon: seldon-<md5 of the full name>
    import hashlib

    long_name = "a" * 50
    long_obj = sdep(long_name)
    digests = {role: hashlib.md5(f"{long_name}-{role}-0-model".encode(),
                                 usedforsecurity=False).hexdigest()
               for role in ("baseline", "candidate")}
    statuses = {f"seldon-{d}": one for d in digests.values()}
    assert readiness(_available(long_obj, statuses), "h1").ready
    del statuses[f"seldon-{digests['candidate']}"]
    assert not readiness(_available(long_obj, statuses), "h1").ready
    # a generation Seldon has not observed yet is not ready
    lagging = _available(obj, {"fraud-baseline-0-model": one, "fraud-candidate-0-model": one})
    lagging["metadata"] = {**lagging["metadata"], "generation": 3}
    lagging["status"]["observedGeneration"] = 2
    assert "not yet 3" in readiness(lagging, "h1").reason


def test_readiness_v2_uses_the_ready_condition(fake_kube, cluster):
    models = cluster.objects(SELDON_MODEL)
    models.create({"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model",
                   "metadata": {"name": "fraud-candidate"},
                   "spec": {"storageUri": "gs://bucket/model"}})
    r = readiness_v2(models.get("fraud-candidate"))
    assert (r.ready, r.failed) == (False, False)
    assert "no Ready condition" in r.reason
    fake_kube.set_ready_v2("models", NS, "fraud-candidate", False, reason="ModelProgressing")
    assert readiness_v2(models.get("fraud-candidate")) == Readiness(
        False, "Model fraud-candidate is not Ready (ModelProgressing)", False)
    fake_kube.set_ready_v2("models", NS, "fraud-candidate", True)
    assert readiness_v2(models.get("fraud-candidate")).ready
    fake_kube.set_ready_v2("models", NS, "fraud-candidate", False, reason="ScheduleFailed",
                           message="no server with requirement mlflow")
    r = readiness_v2(models.get("fraud-candidate"))
    assert (r.ready, r.failed) == (False, True)
    assert "no server with requirement mlflow" in r.reason


# -- ClusterStore ---------------------------------------------------------------------------------
def rollout_state(name: str = "fraud") -> RolloutState:
    return RolloutState(name=name, model_name="fraud", candidate_version="2",
                        baseline_version="1", candidate_uri="models:/fraud/2",
                        baseline_uri="models:/fraud/1", policy_file="/p.yaml",
                        tracking_uri="http://mlflow", port=0)


def ev(kind: str, **body: object) -> OtherEvent:
    """An audit event of any kind: the store keeps kinds it does not model as they are."""
    return OtherEvent(kind, body)


def store(cluster: Cluster, **kwargs) -> ClusterStore:
    return ClusterStore(cluster.objects(CONFIG_MAP), "fraud", **kwargs)


def test_store_save_load_and_events_like_rollout_store(fake_kube, cluster):
    s = store(cluster)
    assert not s.exists()
    assert s.load() is None
    with pytest.raises(UsageError, match="no saved state in ConfigMap models/fraud-kpigate-state"):
        s.require()
    assert s.append(ev("note", by="test")) == 1  # events may precede the state
    first = s.save(rollout_state(), ev("started", stage=0))
    assert first.revision == 1
    second = s.save(first.evolve(phase=Phase.CANARY, weights=Weights(5.0)), ev("promote"))
    assert second.revision == 2
    assert s.require() == second
    assert s.save(second.evolve(evaluations=1)).revision == 3  # no event
    events = s.events()
    assert [(e.seq, e.kind) for e in events] == [(1, "note"), (2, "started"),
                                                       (3, "promote")]
    assert events[1].revision == 1
    assert events[1].event.body()["stage"] == 0
    assert events[0].event.body()["by"] == "test"
    assert all(isinstance(e.ts, float) for e in events)
    assert [e.seq for e in s.events(since=2)] == [3]
    cm = fake_kube.get_object("configmaps", NS, state_configmap_name("fraud"))
    assert cm["metadata"]["labels"] == managed_labels("fraud")
    # a restarted controller (a new store object) sees exactly the same
    again = store(cluster)
    assert again.require() == s.require()
    assert again.events() == events


def test_store_compare_and_set_between_two_stores(cluster):
    a, b = store(cluster), store(cluster)
    saved = a.save(rollout_state(), ev("started"))
    from_b = b.require()
    a.save(saved.evolve(reason="a wins"), ev("a"))
    with pytest.raises(StateConflict, match="revision 2, expected 1"):
        b.save(from_b.evolve(reason="b loses"), ev("b"))
    assert a.require().reason == "a wins"
    assert [e.kind for e in b.events()] == ["started", "a"]
    # a stale state never overwrites, even when its write loses a race at the API level
    with pytest.raises(StateConflict):
        b.save(replace(from_b, revision=0), ev("stale"))


def test_store_retries_when_only_events_were_appended(fake_kube, cluster):
    s = store(cluster, backoff=0.001)
    saved = s.save(rollout_state(), ev("started"))
    name = state_configmap_name("fraud")
    fake_kube.inject_conflicts(2, verbs=("update",), plural="configmaps")
    out = s.save(saved.evolve(reason="after conflicts"), ev("next"))
    assert out.revision == 2
    assert [e.seq for e in s.events()] == [1, 2]
    # another writer's event lands between our read and our write (as a ClusterStore
    # writes it): our write is refused, and retried with the next event id
    def append_elsewhere(cm: dict) -> None:
        cm["data"]["events.jsonl"] += json.dumps(
            {"seq": 3, "ts": 0.0, "kind": "alert_sent", "body": {}}) + "\n"
        cm["data"]["meta.json"] = json.dumps({"last_seq": 3, "archives": []})

    fake_kube.inject_concurrent_modification("configmaps", NS, name, append_elsewhere)
    assert s.save(out.evolve(reason="again"), ev("third")).revision == 3
    assert [(e.seq, e.kind) for e in s.events()] == [(1, "started"), (2, "next"),
                                                           (3, "alert_sent"), (4, "third")]


def test_concurrent_appends_never_lose_or_duplicate_events(fake_kube, cluster):
    n = 25
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(tag: str) -> None:
        own = Cluster.connect(NS, fake_kube.kubeconfig)  # like a second process
        try:
            s = store(own, backoff=0.001, attempts=200)
            start.wait()
            for i in range(n):
                s.append(ev("tick", writer=tag, i=i))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = store(cluster).events()
    assert [e.seq for e in events] == list(range(1, 2 * n + 1))
    for tag in ("a", "b"):
        bodies = [e.event.body() for e in events]
        assert [b["i"] for b in bodies if b["writer"] == tag] == list(range(n))


def test_archive_rotation_keeps_every_event(fake_kube, cluster):
    threshold = 2_000
    s = store(cluster, archive_threshold=threshold)
    saved = s.save(rollout_state(), ev("started"))
    for i in range(60):
        s.append(ev("labels", batch=i, pad="x" * 40))
    saved = s.save(saved.evolve(reason="still here"), ev("evaluated"))
    cms = {cm["metadata"]["name"]: cm for cm in fake_kube.objects("configmaps", NS)}
    archives = sorted(n for n in cms if "-kpigate-audit-" in n)
    assert archive_configmap_name("fraud", 1) == "fraud-kpigate-audit-0001"
    assert archives[0] == "fraud-kpigate-audit-0001"
    assert len(archives) >= 2
    state_cm = cms[state_configmap_name("fraud")]
    assert len(state_cm["data"]["events.jsonl"].encode()) <= threshold
    for name in archives:
        assert len(cms[name]["data"]["events.jsonl"].encode()) <= threshold
        assert cms[name]["metadata"]["ownerReferences"][0]["uid"] == \
            state_cm["metadata"]["uid"]
        assert cms[name]["metadata"]["labels"] == managed_labels("fraud")
    events = store(cluster, archive_threshold=threshold).events()
    assert [e.seq for e in events] == list(range(1, 63))
    assert [e.event.body()["batch"] for e in events if e.kind == "labels"] == list(range(60))
    assert events[-1].kind == "evaluated"
    assert [e.seq for e in s.events(since=55)] == list(range(56, 63))
    assert s.require().reason == "still here"


def test_rotation_retried_after_a_lost_race_overwrites_its_archive(fake_kube, cluster):
    s = store(cluster, archive_threshold=1_500, backoff=0.001)
    for i in range(5):
        s.append(ev("small", i=i))
    fake_kube.clear_requests()
    # Another writer touches the state ConfigMap after our rotation wrote its archives and
    # before our state write: that write is refused, we rotate again and must rewrite the
    # same archives (deterministic names), not add new ones or lose an event.
    fake_kube.inject_concurrent_modification(
        "configmaps", NS, state_configmap_name("fraud"),
        lambda cm: cm["metadata"].setdefault("annotations", {}).update(touched="1"))
    s.append(ev("big", pad="p" * 1_200))  # passes the threshold: rotation
    writes = [(r.verb, r.path.rsplit("/", 1)[-1] if r.verb != "create" else
               r.body["metadata"]["name"], r.status)
              for r in fake_kube.requests if r.verb in ("create", "update")]
    assert writes == [
        ("create", "fraud-kpigate-audit-0001", 201),
        ("create", "fraud-kpigate-audit-0006", 201),
        ("update", "fraud-kpigate-state", 409),
        ("update", "fraud-kpigate-audit-0001", 200),
        ("update", "fraud-kpigate-audit-0006", 200),
        ("update", "fraud-kpigate-state", 200),
    ]
    events = s.events()
    assert [(e.seq, e.kind) for e in events] == [
        (1, "small"), (2, "small"), (3, "small"), (4, "small"), (5, "small"), (6, "big")]
    names = sorted(cm["metadata"]["name"] for cm in fake_kube.objects("configmaps", NS))
    assert names == ["fraud-kpigate-audit-0001", "fraud-kpigate-audit-0006",
                     "fraud-kpigate-state"]
    assert s.append(ev("after")) == 7


def test_state_and_archives_go_with_their_owner(fake_kube, cluster):
    sdeps = cluster.objects(SELDON_DEPLOYMENT)
    owner = sdeps.create(sdep(labels=managed_labels("fraud")))
    s = store(cluster, owner=owner_reference(owner), archive_threshold=1_000)
    s.save(rollout_state(), ev("started"))
    for i in range(30):
        s.append(ev("e", i=i, pad="z" * 30))
    cm = fake_kube.get_object("configmaps", NS, state_configmap_name("fraud"))
    assert cm["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert len(fake_kube.objects("configmaps", NS)) > 1  # state + archives
    sdeps.delete("fraud")
    assert fake_kube.objects("configmaps", NS) == []
    assert not store(cluster).exists()


def test_missing_archive_is_reported(fake_kube, cluster):
    s = store(cluster, archive_threshold=800)
    for i in range(30):
        s.append(ev("e", i=i, pad="w" * 30))
    cluster.objects(CONFIG_MAP).delete("fraud-kpigate-audit-0001")
    with pytest.raises(UsageError, match=r"fraud-kpigate-audit-0001 .* is missing"):
        s.events()
    assert [e.seq for e in s.events(since=29)] == [30]
