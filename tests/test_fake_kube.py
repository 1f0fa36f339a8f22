"""The fake Kubernetes API server, exercised with the real ``kubernetes`` client over HTTP.

These tests pin the behaviour kpigate's cluster code relies on, as the real API server
shows it: Status bodies, optimistic concurrency, JSON/merge patch semantics, status
subresource, generation, garbage collection, and the fake's test controls.
"""
# The fixtures imported from fake_kube are used as test parameters, which ruff reads as
# redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from fake_kube import (  # noqa: F401  (fixtures)
    FakeKube,
    apply_json_patch,
    apply_merge_patch,
    fake_kube,
    fake_kube_factory,
)
from fake_kube import PatchError as FakePatchError
from kubernetes import client, config

SDEP = ("machinelearning.seldon.io", "v1", "seldondeployments")
NS = "models"


def sdep(name: str = "fraud", labels: dict | None = None) -> dict:
    return {
        "apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"predictors": [
            {"name": "baseline", "traffic": 90, "replicas": 1,
             "graph": {"name": "model", "type": "MODEL", "children": []},
             "componentSpecs": [{"spec": {"containers": [{"name": "model",
                                                           "image": "x:1"}]}}]},
            {"name": "candidate", "traffic": 10, "replicas": 1,
             "graph": {"name": "model", "type": "MODEL", "children": []},
             "componentSpecs": [{"spec": {"containers": [{"name": "model",
                                                           "image": "x:2"}]}}]},
        ]},
    }


@pytest.fixture
def apis(fake_kube):
    api_client = config.new_client_from_config(str(fake_kube.kubeconfig))
    try:
        yield client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    finally:
        api_client.close()


def status_body(exc: client.ApiException) -> dict:
    return json.loads(exc.body)


def raw(fake: FakeKube, method: str, path: str, body: object = None,
        content_type: str = "application/json") -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(fake.url + path, data=data, method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- ConfigMaps through CoreV1Api --------------------------------------------------------------
def test_configmap_create_get_list_delete(fake_kube, apis):
    core, _ = apis
    made = core.create_namespaced_config_map(NS, {"metadata": {
        "name": "a", "labels": {"app": "x", "tier": "1"}}, "data": {"k": "v"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "b", "labels": {"app": "y"}}})
    core.create_namespaced_config_map("other", {"metadata": {"name": "a"}})
    assert made.metadata.uid
    assert made.metadata.resource_version.isdigit()
    assert made.metadata.namespace == NS
    assert made.metadata.creation_timestamp is not None
    assert core.read_namespaced_config_map("a", NS).data == {"k": "v"}

    def names(selector: str | None) -> list[str]:
        items = core.list_namespaced_config_map(NS, label_selector=selector).items
        return [i.metadata.name for i in items]

    assert names(None) == ["a", "b"]
    assert names("app=x") == ["a"]
    assert names("app==y") == ["b"]
    assert names("app!=x") == ["b"]
    assert names("tier") == ["a"]
    assert names("!tier") == ["b"]
    assert names("app=x,tier=2") == []

    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    assert exc.value.status == 409
    assert status_body(exc.value) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'configmaps "a" already exists', "reason": "AlreadyExists",
        "details": {"name": "a", "kind": "configmaps"}, "code": 409}

    status, body = raw(fake_kube, "DELETE", f"/api/v1/namespaces/{NS}/configmaps/a")
    assert status == 200
    assert body["status"] == "Success"
    assert body["details"]["uid"] == made.metadata.uid
    with pytest.raises(client.ApiException) as exc:
        core.read_namespaced_config_map("a", NS)
    assert exc.value.status == 404
    assert status_body(exc.value)["reason"] == "NotFound"
    assert status_body(exc.value)["message"] == 'configmaps "a" not found'
    assert core.read_namespaced_config_map("a", "other").metadata.name == "a"


def test_set_based_selectors_are_refused_not_misread(fake_kube, apis):
    core, _ = apis
    with pytest.raises(client.ApiException) as exc:
        core.list_namespaced_config_map(NS, label_selector="app in (x,y)")
    assert exc.value.status == 400


def test_configmap_size_limit_and_keys(apis):
    core, _ = apis
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "big"},
                                               "data": {"k": "x" * (1024 * 1024 + 1)}})
    assert exc.value.status == 422
    body = status_body(exc.value)
    assert body["reason"] == "Invalid"
    assert "must have at most 1048576 bytes" in body["message"]
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "Bad_Name"}})
    assert exc.value.status == 422
    assert "metadata.name" in status_body(exc.value)["message"]


def test_replace_is_guarded_by_resource_version(apis):
    core, custom = apis
    cm = core.create_namespaced_config_map(NS, {"metadata": {"name": "s"}, "data": {"n": "1"}})
    stale = cm.metadata.resource_version
    cm.data = {"n": "2"}
    fresh = core.replace_namespaced_config_map("s", NS, cm)
    assert fresh.data == {"n": "2"}
    assert int(fresh.metadata.resource_version) > int(stale)
    cm.data = {"n": "3"}
    cm.metadata.resource_version = stale
    with pytest.raises(client.ApiException) as exc:
        core.replace_namespaced_config_map("s", NS, cm)
    assert exc.value.status == 409
    body = status_body(exc.value)
    assert body["reason"] == "Conflict"
    assert body["message"].startswith('Operation cannot be fulfilled on configmaps "s": the '
                                      "object has been modified")
    # ConfigMaps accept unconditional updates; custom resources do not.
    cm.metadata.resource_version = None
    assert core.replace_namespaced_config_map("s", NS, cm).data == {"n": "3"}
    made = custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], sdep())
    del made["metadata"]["resourceVersion"]
    with pytest.raises(client.ApiException) as exc:
        custom.replace_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], "fraud", made)
    assert exc.value.status == 422
    assert "metadata.resourceVersion" in status_body(exc.value)["message"]


def test_no_op_update_keeps_resource_version(apis):
    core, _ = apis
    cm = core.create_namespaced_config_map(NS, {"metadata": {"name": "s"}, "data": {"n": "1"}})
    again = core.replace_namespaced_config_map("s", NS, cm)
    assert again.metadata.resource_version == cm.metadata.resource_version


# -- custom resources ---------------------------------------------------------------------------
def test_custom_resource_generation_and_status_subresource(fake_kube, apis):
    _, custom = apis
    body = sdep()
    body["status"] = {"state": "Available"}  # dropped: the status subresource owns it
    made = custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], body)
    assert made["metadata"]["generation"] == 1
    assert "status" not in made
    labelled = custom.patch_namespaced_custom_object(
        *SDEP[:2], NS, SDEP[2], "fraud", {"metadata": {"labels": {"a": "b"}}},
        _content_type="application/merge-patch+json")
    assert labelled["metadata"]["generation"] == 1  # metadata is not spec
    assert int(labelled["metadata"]["resourceVersion"]) > int(made["metadata"]["resourceVersion"])
    spec = custom.patch_namespaced_custom_object(
        *SDEP[:2], NS, SDEP[2], "fraud",
        [{"op": "replace", "path": "/spec/predictors/1/traffic", "value": 20},
         {"op": "add", "path": "/status", "value": {"state": "Failed"}}],
        _content_type="application/json-patch+json")
    assert spec["metadata"]["generation"] == 2
    assert "status" not in spec  # ignored on the main resource
    status = custom.patch_namespaced_custom_object_status(
        *SDEP[:2], NS, SDEP[2], "fraud",
        {"status": {"state": "Creating"}, "spec": {"predictors": []}},
        _content_type="application/merge-patch+json")
    assert status["status"] == {"state": "Creating"}
    assert status["spec"]["predictors"][1]["traffic"] == 20  # spec ignored on /status
    assert status["metadata"]["generation"] == 2
    assert fake_kube.get_object("seldondeployments", NS, "fraud")["status"]["state"] == \
        "Creating"


def test_failed_json_patch_answers_like_the_api_server(fake_kube, apis):
    _, custom = apis
    made = custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], sdep())
    generic_422 = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "the server rejected our request due to an error in our request",
                   "reason": "Invalid", "details": {}, "code": 422}
    for ops in (
        [{"op": "test", "path": "/spec/predictors/0/name", "value": "candidate"},
         {"op": "replace", "path": "/spec/predictors/0/traffic", "value": 0}],
        [{"op": "remove", "path": "/spec/nothing"}],
        [{"op": "replace", "path": "/spec/predictors/5/traffic", "value": 1}],
    ):
        with pytest.raises(client.ApiException) as exc:
            custom.patch_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], "fraud", ops,
                                                  _content_type="application/json-patch+json")
        assert exc.value.status == 422
        assert status_body(exc.value) == generic_422
    after = fake_kube.get_object("seldondeployments", NS, "fraud")
    assert after["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]
    assert after["spec"] == made["spec"]
    # a body that is not a patch document at all is a 400, not a 422
    status, body = raw(fake_kube, "PATCH", f"/apis/machinelearning.seldon.io/v1/namespaces/{NS}/"
                       "seldondeployments/fraud", {"op": "add"}, "application/json-patch+json")
    assert status == 400
    assert body["reason"] == "BadRequest"
    status, body = raw(fake_kube, "PATCH", f"/apis/machinelearning.seldon.io/v1/namespaces/{NS}/"
                       "seldondeployments/fraud", {}, "application/strategic-merge-patch+json")
    assert status == 415
    assert body["reason"] == "UnsupportedMediaType"


def test_merge_patch_replaces_lists_wholesale(apis):
    _, custom = apis
    custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], sdep())
    out = custom.patch_namespaced_custom_object(
        *SDEP[:2], NS, SDEP[2], "fraud",
        {"spec": {"predictors": [{"name": "candidate", "traffic": 100, "graph": {
            "name": "model", "type": "MODEL", "children": []}}]},
         "metadata": {"annotations": {"a": "1"}}},
        _content_type="application/merge-patch+json")
    assert [p["name"] for p in out["spec"]["predictors"]] == ["candidate"]
    assert "replicas" not in out["spec"]["predictors"][0]
    out = custom.patch_namespaced_custom_object(
        *SDEP[:2], NS, SDEP[2], "fraud", {"metadata": {"annotations": {"a": None}}},
        _content_type="application/merge-patch+json")
    assert "a" not in (out["metadata"].get("annotations") or {})


def test_crd_schema_validation_and_pruning(fake_kube, apis):
    if not fake_kube.validating:
        pytest.skip("tests/data/seldon-crds is not there: the fake does not validate")
    _, custom = apis
    bad = sdep()
    bad["spec"]["predictors"][0]["traffic"] = "ninety"
    with pytest.raises(client.ApiException) as exc:
        custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], bad)
    assert exc.value.status == 422
    body = status_body(exc.value)
    assert body["reason"] == "Invalid"
    assert "spec.predictors[0].traffic" in body["message"]
    missing = sdep()
    del missing["spec"]["predictors"]
    with pytest.raises(client.ApiException) as exc:
        custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], missing)
    assert "spec.predictors: Required value" in status_body(exc.value)["message"]
    extra = sdep()
    extra["spec"]["predictors"][0]["notAField"] = 1
    made = custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], extra)
    assert "notAField" not in made["spec"]["predictors"][0]  # pruned like the real server
    assert made["spec"]["predictors"][0]["traffic"] == 90


def test_unknown_resources_and_versions_are_404(fake_kube, apis):
    _, custom = apis
    with pytest.raises(client.ApiException) as exc:
        custom.list_namespaced_custom_object("machinelearning.seldon.io", "v1alpha9", NS,
                                             "seldondeployments")
    assert exc.value.status == 404
    assert status_body(exc.value)["message"] == \
        "the server could not find the requested resource"
    fake_kube.uninstall("models")
    with pytest.raises(client.ApiException) as exc:
        custom.list_namespaced_custom_object("mlops.seldon.io", "v1alpha1", NS, "models")
    assert exc.value.status == 404


# -- deletion and garbage collection -----------------------------------------------------------
def _owned(name: str, *owners: dict) -> dict:
    refs = [{"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],
             "uid": o["metadata"]["uid"]} for o in owners]
    return {"metadata": {"name": name, "ownerReferences": refs}}


def test_delete_collects_garbage_through_owner_references(fake_kube, apis):
    core, custom = apis
    owner = custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], sdep("one"))
    other = custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], sdep("two"))
    state = core.create_namespaced_config_map(NS, _owned("state", owner))
    state_dict = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "state", "uid": state.metadata.uid}}
    core.create_namespaced_config_map(NS, _owned("archive", state_dict))
    core.create_namespaced_config_map(NS, _owned("shared", owner, other))
    core.create_namespaced_config_map(NS, {"metadata": {"name": "bystander"}})

    deleted = custom.delete_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], "one",
                                                     propagation_policy="Foreground")
    assert deleted["metadata"]["name"] == "one"  # custom resources answer with the object
    left = sorted(cm["metadata"]["name"] for cm in fake_kube.objects("configmaps", NS))
    assert left == ["bystander", "shared"]  # state → archive chain collected; shared kept
    custom.delete_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], "two")
    assert [cm["metadata"]["name"] for cm in fake_kube.objects("configmaps", NS)] == \
        ["bystander"]


def test_orphan_propagation_keeps_dependents(fake_kube, apis):
    core, custom = apis
    owner = custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], sdep())
    core.create_namespaced_config_map(NS, _owned("state", owner))
    custom.delete_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], "fraud",
                                           propagation_policy="Orphan")
    kept = fake_kube.get_object("configmaps", NS, "state")
    assert kept is not None
    assert "ownerReferences" not in kept["metadata"]


def test_delete_preconditions(fake_kube, apis):
    core, _ = apis
    core.create_namespaced_config_map(NS, {"metadata": {"name": "s"}})
    status, body = raw(fake_kube, "DELETE", f"/api/v1/namespaces/{NS}/configmaps/s",
                       {"preconditions": {"resourceVersion": "1"}})
    assert status == 409
    assert body["reason"] == "Conflict"
    assert fake_kube.get_object("configmaps", NS, "s") is not None


# -- test controls ------------------------------------------------------------------------------
def test_injected_conflicts_then_success_and_request_log(fake_kube, apis):
    core, _ = apis
    core.create_namespaced_config_map(NS, {"metadata": {"name": "s"}, "data": {"n": "0"}})
    fake_kube.clear_requests()
    fake_kube.inject_conflicts(2, verbs=("patch",))
    ops = [{"op": "replace", "path": "/data/n", "value": "1"}]
    for _ in range(2):
        with pytest.raises(client.ApiException) as exc:
            core.patch_namespaced_config_map("s", NS, ops,
                                             _content_type="application/json-patch+json")
        assert exc.value.status == 409
    assert fake_kube.get_object("configmaps", NS, "s")["data"] == {"n": "0"}
    core.patch_namespaced_config_map("s", NS, ops, _content_type="application/json-patch+json")
    assert fake_kube.get_object("configmaps", NS, "s")["data"] == {"n": "1"}
    patches = [r for r in fake_kube.requests if r.verb == "patch"]
    assert [r.status for r in patches] == [409, 409, 200]
    assert {r.content_type for r in patches} == {"application/json-patch+json"}
    assert patches[-1].body == ops
    assert patches[-1].method == "PATCH"
    assert patches[-1].path == f"/api/v1/namespaces/{NS}/configmaps/s"
    assert fake_kube.count("patch") == 3
    assert fake_kube.count("patch", "seldondeployments") == 0
    assert fake_kube.verb_counts() == {"patch": 3}


def test_concurrent_modification_lands_between_read_and_write(fake_kube, apis):
    _, custom = apis
    custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], sdep())
    read = custom.get_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], "fraud")
    fake_kube.inject_concurrent_modification(
        "seldondeployments", NS, "fraud", lambda o: o["spec"]["predictors"].reverse())
    ops = [{"op": "test", "path": "/metadata/resourceVersion",
            "value": read["metadata"]["resourceVersion"]},
           {"op": "replace", "path": "/spec/predictors/1/traffic", "value": 50}]
    with pytest.raises(client.ApiException) as exc:
        custom.patch_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], "fraud", ops,
                                              _content_type="application/json-patch+json")
    assert exc.value.status == 422
    now = fake_kube.get_object("seldondeployments", NS, "fraud")
    assert [p["name"] for p in now["spec"]["predictors"]] == ["candidate", "baseline"]
    assert now["metadata"]["generation"] == 2
    assert [p["traffic"] for p in now["spec"]["predictors"]] == [10, 90]


def test_forbidden_and_unauthorized(fake_kube_factory, tmp_path):
    fake = fake_kube_factory(token="s3cret")
    fake.forbid("create", "configmaps")
    good = config.new_client_from_config(str(fake.kubeconfig))
    bad = config.new_client_from_config(
        str(fake.write_kubeconfig(tmp_path / "anon", token="wrong")))
    try:
        with pytest.raises(client.ApiException) as exc:
            client.CoreV1Api(good).create_namespaced_config_map(NS, {"metadata": {"name": "x"}})
        assert exc.value.status == 403
        body = status_body(exc.value)
        assert body["reason"] == "Forbidden"
        assert body["message"] == (  # create has no name in the URL, so none in the message
            'configmaps is forbidden: User "system:serviceaccount:default:kpigate" cannot '
            'create resource "configmaps" in API group "" in the namespace "models"')
        assert client.CoreV1Api(good).list_namespaced_config_map(NS).items == []
        with pytest.raises(client.ApiException) as exc:
            client.CoreV1Api(bad).list_namespaced_config_map(NS)
        assert exc.value.status == 401
        assert status_body(exc.value)["reason"] == "Unauthorized"
    finally:
        good.close()
        bad.close()


def test_seldon_state_control(fake_kube, apis):
    _, custom = apis
    custom.create_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], sdep())
    creating = fake_kube.set_seldon_state(NS, "fraud", "Creating")
    assert creating["status"]["state"] == "Creating"
    assert creating["status"]["deploymentStatus"] == {
        "fraud-baseline-0-model": {"replicas": 1, "availableReplicas": 0},
        "fraud-candidate-0-model": {"replicas": 1, "availableReplicas": 0}}
    available = fake_kube.set_seldon_state(NS, "fraud", "Available", replicas=2)
    assert {v["availableReplicas"] for v in available["status"]["deploymentStatus"].values()} \
        == {2}
    assert available["metadata"]["generation"] == 1  # status changes do not bump generation
    read = custom.get_namespaced_custom_object(*SDEP[:2], NS, SDEP[2], "fraud")
    assert read["status"]["state"] == "Available"


def test_version_endpoint_and_clean_stop(fake_kube_factory):
    fake = fake_kube_factory()
    api_client = config.new_client_from_config(str(fake.kubeconfig))
    try:
        assert client.VersionApi(api_client).get_code().git_version.startswith("v1.30")
    finally:
        api_client.close()
    url = fake.url
    # a kept-alive connection is open now; stop must still end every thread
    fake.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("fake-kube")]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/version", timeout=2)


# -- patch documents (pure) ---------------------------------------------------------------------
def test_json_patch_operations():
    doc = {"a/b": {"~c": [1, 2, 3]}, "x": {"y": 1}}
    out = apply_json_patch(doc, [
        {"op": "test", "path": "/a~1b/~0c/1", "value": 2},
        {"op": "add", "path": "/a~1b/~0c/-", "value": 4},
        {"op": "add", "path": "/a~1b/~0c/0", "value": 0},
        {"op": "remove", "path": "/a~1b/~0c/1"},
        {"op": "replace", "path": "/x/y", "value": {"z": True}},
        {"op": "copy", "from": "/x", "path": "/w"},
        {"op": "move", "from": "/x/y", "path": "/v"},
        {"op": "test", "path": "/v", "value": {"z": True}},
    ])
    assert out == {"a/b": {"~c": [0, 2, 3, 4]}, "x": {}, "w": {"y": {"z": True}},
                   "v": {"z": True}}
    assert doc == {"a/b": {"~c": [1, 2, 3]}, "x": {"y": 1}}  # the input is untouched
    for ops in ([{"op": "test", "path": "/x/y", "value": True}],  # 1 is not true
                [{"op": "test", "path": "/x/y", "value": "1"}],
                [{"op": "replace", "path": "/x/q", "value": 1}],
                [{"op": "add", "path": "/q/r", "value": 1}],
                [{"op": "remove", "path": "/a~1b/~0c/3"}],
                [{"op": "add", "path": "/a~1b/~0c/01", "value": 1}],
                [{"op": "move", "from": "/x", "path": "/x/y"}],
                [{"op": "frobnicate", "path": "/x"}],
                [{"op": "add", "path": "x", "value": 1}]):
        with pytest.raises(FakePatchError):
            apply_json_patch(doc, ops)
    assert apply_json_patch({"n": 1}, [{"op": "test", "path": "/n", "value": 1.0}]) == {"n": 1}


def test_merge_patch_rfc7386_examples():
    assert apply_merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert apply_merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert apply_merge_patch({"a": "b"}, {"a": None}) == {}
    assert apply_merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert apply_merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == \
        {"a": {"b": "d"}}
    assert apply_merge_patch({"a": "foo"}, "bar") == "bar"
    assert apply_merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
