"""Watch streams, all-namespace paths, Secrets, Events and Leases of the fake API server,
driven with the real ``kubernetes`` client (``watch.Watch``, ``LeaderElection``)."""
# The fixtures imported from fake_kube are used as test parameters, which ruff reads as
# redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from collections.abc import Iterator

import pytest
import urllib3
from fake_kube import FakeKube, fake_kube, fake_kube_factory  # noqa: F401  (fixtures)
from kubernetes import client, config, watch

NS = "models"
GROUP, VERSION, PLURAL = "kpigate.io", "v1alpha1", "modelrollouts"


def rollout(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelRollout",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"model": {"name": "fraud-detector", "candidate": {"version": "7"}},
                     "policy": {"inline": {"version": 1, "name": "fraud",
                                           "stages": [{"traffic": 5}, {"traffic": 100}]}},
                     "backend": {"kind": "SeldonDeployment"},
                     "tracking": {"uri": "http://mlflow.mlflow.svc:5000"},
                     "collector": {"url": "http://kpigate-collector.models.svc:8080"}}}


@pytest.fixture
def api(fake_kube) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(str(fake_kube.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


def collect(stream, n: int, budget: float = 30.0) -> list[dict]:
    """The next ``n`` events of a watch generator (``budget`` only catches a wedged stream:
    a ceiling, not a performance bound)."""
    out = []
    start = time.monotonic()
    for event in stream:
        out.append(event)
        if len(out) == n:
            break
        assert time.monotonic() - start < budget
    return out


def summary(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["type"], (e["raw_object"].get("metadata") or {}).get("name", "")) for e in events]


class Background:
    """Run a watch in a thread, pushing its events to a queue (to test how it ends)."""

    def __init__(self, stream) -> None:
        self.events: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream) -> None:
        try:
            for event in stream:
                self.events.put(event)
        except BaseException as exc:
            self.error = exc

    def next(self, timeout: float = 5.0) -> dict:
        return self.events.get(timeout=timeout)


# -- watch ------------------------------------------------------------------------------------
def test_watch_modelrollouts_initial_changes_and_resume(fake_kube, api):
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, rollout("a"))
    w = watch.Watch()
    stream = w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                      timeout_seconds=10)
    assert summary(collect(stream, 1)) == [("ADDED", "a")]  # synthetic: the current objects
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, rollout("b"))
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a",
                                          {"metadata": {"labels": {"x": "1"}}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "b")
    events = collect(stream, 3)
    w.stop()
    assert summary(events) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert events[1]["raw_object"]["metadata"]["labels"] == {"x": "1"}
    rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs)
    assert len(set(rvs)) == 3  # the deletion has its own version
    assert w.resource_version == str(rvs[-1])

    # Resume from the version after the first event: the two later changes, nothing else.
    w2 = watch.Watch()
    resumed = collect(w2.stream(custom.list_namespaced_custom_object, GROUP, VERSION, NS,
                                PLURAL, resource_version=str(rvs[0]), timeout_seconds=1), 2)
    w2.stop()
    assert summary(resumed) == [("MODIFIED", "a"), ("DELETED", "b")]
    assert fake_kube.count("watch", PLURAL) == 2
    watches = [r for r in fake_kube.requests if r.verb == "watch"]
    assert watches[1].query["resourceVersion"] == str(rvs[0])
    assert watches[1].status == 200


def test_watch_configmaps_resume_bookmarks_and_selectors(fake_kube_factory):
    fake = fake_kube_factory(bookmark_interval=0.2)
    api_client = config.new_client_from_config(str(fake.kubeconfig))
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "old",
                                                            "labels": {"app": "kpigate"}}})
        listed = core.list_namespaced_config_map(NS)
        rv = listed.metadata.resource_version
        core.create_namespaced_config_map(NS, {"metadata": {"name": "mine",
                                                            "labels": {"app": "kpigate"}}})
        core.create_namespaced_config_map(NS, {"metadata": {"name": "other"}})
        core.create_namespaced_config_map("elsewhere", {"metadata": {
            "name": "far", "labels": {"app": "kpigate"}}})
        w = watch.Watch()
        stream = w.stream(core.list_namespaced_config_map, NS, resource_version=rv,
                          label_selector="app=kpigate", allow_watch_bookmarks=True,
                          timeout_seconds=10)
        first = collect(stream, 1)
        assert summary(first) == [("ADDED", "mine")]  # after rv, in NS, with the label
        assert first[0]["object"].metadata.name == "mine"  # typed V1ConfigMap
        # A label change moves objects into / out of the selection: ADDED / DELETED.
        core.patch_namespaced_config_map("other", NS, {"metadata": {"labels": {
            "app": "kpigate"}}})
        core.patch_namespaced_config_map("mine", NS, {"metadata": {"labels": {"app": None}}})
        events = [e for e in collect(stream, 4) if e["type"] != "BOOKMARK"][:2]
        assert summary(events) == [("ADDED", "other"), ("DELETED", "mine")]
        bookmark = next(e for e in stream if e["type"] == "BOOKMARK")
        assert bookmark["raw_object"] == {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {
            "resourceVersion": core.list_namespaced_config_map(NS).metadata.resource_version}}
        assert w.resource_version == bookmark["raw_object"]["metadata"]["resourceVersion"]
        w.stop()

        # Field selector on the name; the all-namespaces path.
        w = watch.Watch()
        named = collect(w.stream(core.list_namespaced_config_map, NS,
                                 field_selector="metadata.name=other", timeout_seconds=1), 1)
        w.stop()
        assert summary(named) == [("ADDED", "other")]
        w = watch.Watch()
        everywhere = collect(w.stream(core.list_config_map_for_all_namespaces,
                                      label_selector="app=kpigate", timeout_seconds=1), 3)
        w.stop()
        assert sorted(summary(everywhere)) == [("ADDED", "far"), ("ADDED", "old"),
                                               ("ADDED", "other")]
        assert [c.metadata.name for c in
                core.list_config_map_for_all_namespaces().items] == ["far", "mine", "old",
                                                                     "other"]
    finally:
        api_client.close()


def test_too_old_resource_version_is_410(fake_kube_factory):
    fake = fake_kube_factory(watch_history=3)
    api_client = config.new_client_from_config(str(fake.kubeconfig))
    core = client.CoreV1Api(api_client)
    try:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}})
        start = core.list_namespaced_config_map(NS).metadata.resource_version
        for i in range(5):
            core.patch_namespaced_config_map("cm", NS, {"data": {"n": str(i)}})
        with pytest.raises(client.ApiException) as exc:
            for _ in watch.Watch().stream(core.list_namespaced_config_map, NS,
                                          resource_version=start):
                pass
        assert exc.value.status == 410
        assert "Expired: too old resource version: " + start in exc.value.reason
        # The raw stream: one ERROR event with a Status, then the body ends.
        resp = core.list_namespaced_config_map(NS, watch=True, resource_version=start,
                                               _preload_content=False)
        lines = resp.data.decode().splitlines()
        assert len(lines) == 1
        error = json.loads(lines[0])
        assert error["type"] == "ERROR"
        assert error["object"]["kind"] == "Status"
        assert error["object"]["code"] == 410
        assert error["object"]["reason"] == "Expired"
        # A version still in the history resumes.
        latest = core.list_namespaced_config_map(NS).metadata.resource_version
        w = watch.Watch()
        got = collect(w.stream(core.list_namespaced_config_map, NS,
                               resource_version=str(int(latest) - 1), timeout_seconds=1), 1)
        w.stop()
        assert got[0]["object"].data == {"n": "4"}
    finally:
        api_client.close()


def test_garbage_collected_dependents_arrive_as_deleted(fake_kube, api):
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, rollout("r"))
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelRollout", "name": "r",
           "uid": owner["metadata"]["uid"]}
    core.create_namespaced_config_map(NS, {"metadata": {"name": "state",
                                                        "ownerReferences": [ref]}})
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    w = watch.Watch()
    stream = w.stream(core.list_namespaced_config_map, NS, resource_version=rv,
                      timeout_seconds=5)
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "r")
    got = collect(stream, 1)
    w.stop()
    assert summary(got) == [("DELETED", "state")]


def test_timeout_seconds_ends_the_stream_cleanly(fake_kube, api):
    core = client.CoreV1Api(api)
    start = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespaced_config_map, NS,
                                       timeout_seconds=1))
    assert events == []
    assert time.monotonic() - start > 0.9  # it ran to the timeout, not ended early
    # The server's side of the stream closes just after the client has read its end.
    deadline = time.monotonic() + 10  # a ceiling for a wedged server, not a performance bound
    while fake_kube.open_watches() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_kube.open_watches() == 0
    assert core.list_namespaced_config_map(NS).items == []  # the connection still serves


def test_forbidden_watch_is_403(fake_kube, api):
    fake_kube.forbid("watch", "configmaps")
    core = client.CoreV1Api(api)
    with pytest.raises(client.ApiException) as exc:
        list(watch.Watch().stream(core.list_namespaced_config_map, NS, timeout_seconds=1))
    assert exc.value.status == 403
    assert "cannot watch resource" in json.loads(exc.value.body)["message"]
    assert core.list_namespaced_config_map(NS).items == []  # list is still allowed
    with pytest.raises(client.ApiException) as exc:
        core.list_config_map_for_all_namespaces(watch=True, _preload_content=False)
    assert "at the cluster scope" in json.loads(exc.value.body)["message"]


def test_drop_watches_lets_the_client_resume(fake_kube, api):
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    w = watch.Watch()  # no timeout: the client reconnects by itself after a clean end
    bg = Background(w.stream(core.list_namespaced_config_map, NS))
    assert bg.next()["raw_object"]["metadata"]["name"] == "a"
    assert fake_kube.drop_watches() == 1
    deadline = time.monotonic() + 5
    while fake_kube.count("watch", "configmaps") < 2:  # it came back …
        assert time.monotonic() < deadline
        time.sleep(0.02)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "b"}})
    event = bg.next()
    assert (event["type"], event["raw_object"]["metadata"]["name"]) == ("ADDED", "b")
    second = [r for r in fake_kube.requests if r.verb == "watch"][1]
    assert second.query["resourceVersion"]  # … resuming where it was, so no ADDED "a" again
    # A cut connection surfaces as an error the operator's own loop has to handle.
    assert fake_kube.drop_watches(clean=False) == 1
    bg.thread.join(5)
    assert not bg.thread.is_alive()
    assert isinstance(bg.error, urllib3.exceptions.ProtocolError), repr(bg.error)
    assert bg.events.empty()


def test_stop_ends_open_streams(fake_kube_factory):
    fake = fake_kube_factory()
    api_client = config.new_client_from_config(str(fake.kubeconfig))
    custom = client.CustomObjectsApi(api_client)
    try:
        api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
        streams = [Background(watch.Watch().stream(
            custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, timeout_seconds=60))
            for _ in range(3)]
        deadline = time.monotonic() + 5
        while fake.open_watches() < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        before = threading.active_count()
        start = time.monotonic()
        fake.stop()
        # stop() must not wait for the streams' own timeouts (60 s): a wedge ceiling.
        assert time.monotonic() - start < 30
        for bg in streams:
            bg.thread.join(5)
            assert not bg.thread.is_alive()
        assert threading.active_count() <= before - 3  # the server's stream threads are gone
        assert not any(t.name == "fake-kube-conn" for t in threading.enumerate())
    finally:
        api_client.close()


def test_all_namespace_custom_objects(fake_kube, api):
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, "a", PLURAL, rollout("x"))
    custom.create_namespaced_custom_object(GROUP, VERSION, "b", PLURAL, rollout("y"))
    listed = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listed["items"]] == \
        [("a", "x"), ("b", "y")]
    w = watch.Watch()
    stream = w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                      resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=5)
    custom.create_namespaced_custom_object(GROUP, VERSION, "c", PLURAL, rollout("z"))
    got = collect(stream, 1)
    w.stop()
    assert summary(got) == [("ADDED", "z")]
    status, answer = _post(fake_kube, f"/apis/{GROUP}/{VERSION}/{PLURAL}", rollout("w"))
    assert (status, answer["reason"]) == (405, "MethodNotAllowed")  # create needs a namespace


# -- Secrets ------------------------------------------------------------------------------------
def test_secret_round_trip_with_string_data(fake_kube, api):
    core = client.CoreV1Api(api)
    made = core.create_namespaced_secret(NS, client.V1Secret(
        metadata=client.V1ObjectMeta(name="creds"),
        data={"user": base64.b64encode(b"old").decode()},
        string_data={"user": "kpigate", "token": "s3cret"}))
    assert made.type == "Opaque"
    assert made.string_data is None
    assert {k: base64.b64decode(v) for k, v in made.data.items()} == {
        "user": b"kpigate", "token": b"s3cret"}
    stored = fake_kube.get_object("secrets", NS, "creds")
    assert "stringData" not in stored
    core.patch_namespaced_secret("creds", NS, {"stringData": {"token": "rotated"}})
    read = core.read_namespaced_secret("creds", NS)
    assert base64.b64decode(read.data["token"]) == b"rotated"
    assert base64.b64decode(read.data["user"]) == b"kpigate"
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_secret(NS, {"metadata": {"name": "bad"},
                                           "data": {"k": "not base64!"}})
    assert exc.value.status == 400
    assert "illegal base64 data" in json.loads(exc.value.body)["message"]
    with pytest.raises(client.ApiException) as exc:
        core.patch_namespaced_secret("creds", NS, {"type": "kubernetes.io/tls"})
    assert exc.value.status == 422
    assert "field is immutable" in json.loads(exc.value.body)["message"]
    assert [s.metadata.name for s in core.list_secret_for_all_namespaces().items] == ["creds"]
    core.delete_namespaced_secret("creds", NS)
    assert fake_kube.get_object("secrets", NS, "creds") is None
    assert fake_kube.requests[-1].status == 200


# -- Events ---------------------------------------------------------------------------------------
def test_event_create_list_and_required_fields(fake_kube, api):
    core = client.CoreV1Api(api)
    involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelRollout", "name": "r",
                "namespace": NS, "uid": "1234"}
    body = {"metadata": {"name": "r.17a"}, "involvedObject": involved, "reason": "Promoted",
            "message": "fraud v2 promoted", "type": "Normal", "count": 1,
            "firstTimestamp": "2024-05-01T10:00:00.123456+00:00",
            "lastTimestamp": "2024-05-01T10:00:00Z",
            "source": {"component": "kpigate-operator"},
            "reportingComponent": "kpigate.io/operator"}
    made = core.create_namespaced_event(NS, body)
    assert made.reason == "Promoted"
    assert made.involved_object.kind == "ModelRollout"
    stored = fake_kube.get_object("events", NS, "r.17a")
    assert stored["firstTimestamp"] == "2024-05-01T10:00:00Z"  # metav1.Time: seconds
    core.patch_namespaced_event("r.17a", NS, {"count": 2,
                                              "lastTimestamp": "2024-05-01T10:05:00Z"})
    listed = core.list_namespaced_event(NS, field_selector="metadata.name=r.17a").items
    assert [(e.count, e.source.component) for e in listed] == [(2, "kpigate-operator")]
    assert len(core.list_event_for_all_namespaces().items) == 1

    no_reason = {k: v for k, v in body.items() if k != "reason"}
    no_reason["metadata"] = {"name": "r.17b"}
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_event(NS, no_reason)
    assert exc.value.status == 422
    causes = json.loads(exc.value.body)["details"]["causes"]
    assert [c["field"] for c in causes] == ["reason"]
    status, answer = _post(fake_kube, f"/api/v1/namespaces/{NS}/events",
                           {"metadata": {"name": "r.17c"}, "reason": "X"})
    assert status == 422
    assert "involvedObject: Required value" in answer["message"]
    wrong_ns = dict(body, metadata={"name": "r.17d"}, involvedObject=dict(involved,
                                                                          namespace="other"))
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_event(NS, wrong_ns)
    assert "does not match event.namespace" in json.loads(exc.value.body)["message"]


def _post(fake: FakeKube, path: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(fake.url + path, data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- Leases and leader election ----------------------------------------------------------------
def test_lease_optimistic_concurrency_and_micro_time(fake_kube, api):
    coord = client.CoordinationV1Api(api)
    made = coord.create_namespaced_lease(NS, {"metadata": {"name": "kpigate"}, "spec": {
        "holderIdentity": "a", "leaseDurationSeconds": 2, "leaseTransitions": 0,
        "acquireTime": "2024-05-01T10:00:00+02:00", "renewTime": "2024-05-01T08:00:00.5Z"}})
    stored = fake_kube.get_object("leases", NS, "kpigate")
    assert stored["spec"]["acquireTime"] == "2024-05-01T08:00:00.000000Z"  # MicroTime
    assert stored["spec"]["renewTime"] == "2024-05-01T08:00:00.500000Z"
    made.spec.holder_identity = "b"
    coord.replace_namespaced_lease("kpigate", NS, made)
    made.spec.holder_identity = "c"  # stale resourceVersion
    with pytest.raises(client.ApiException) as exc:
        coord.replace_namespaced_lease("kpigate", NS, made)
    assert exc.value.status == 409
    made.metadata.resource_version = None  # Leases refuse unconditional updates
    with pytest.raises(client.ApiException) as exc:
        coord.replace_namespaced_lease("kpigate", NS, made)
    assert exc.value.status == 422
    with pytest.raises(client.ApiException) as exc:
        coord.patch_namespaced_lease("kpigate", NS, {"spec": {"leaseDurationSeconds": 0}})
    assert exc.value.status == 422
    assert coord.read_namespaced_lease("kpigate", NS).spec.holder_identity == "b"


def test_leader_election_fails_over_within_the_lease(fake_kube):
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    # LeaseLock builds its API from the default configuration.
    previous = client.Configuration.get_default_copy()
    config.load_kube_config(str(fake_kube.kubeconfig))
    try:
        leading: dict[str, threading.Event] = {"a": threading.Event(), "b": threading.Event()}
        release = {"a": threading.Event(), "b": threading.Event()}
        stopped: dict[str, threading.Event] = {"a": threading.Event(), "b": threading.Event()}

        class Released(Exception):
            pass

        def candidate(identity: str) -> threading.Thread:
            def lead() -> None:
                leading[identity].set()
                release[identity].wait(30)
                raise Released(identity)  # leaderelection stops renewing when this raises

            cfg = electionconfig.Config(
                LeaseLock("kpigate-operator", NS, identity), lease_duration=2,
                renew_deadline=1.5, retry_period=1, onstarted_leading=lead,
                onstopped_leading=stopped[identity].set)
            thread = threading.Thread(target=leaderelection.LeaderElection(cfg).run,
                                      daemon=True, name=f"candidate-{identity}")
            thread.start()
            return thread

        threads = {"a": candidate("a")}
        assert leading["a"].wait(5)
        threads["b"] = candidate("b")
        time.sleep(2.5)  # longer than the lease: b keeps seeing a renew it
        assert not leading["b"].is_set()
        lease = fake_kube.get_object("leases", NS, "kpigate-operator")
        assert lease["spec"]["holderIdentity"] == "a"
        assert lease["spec"]["leaseDurationSeconds"] == 2

        release["a"].set()  # a stops leading
        threads["a"].join(5)
        assert not threads["a"].is_alive()
        assert stopped["a"].is_set()
        gone = time.monotonic()
        assert leading["b"].wait(6)
        assert time.monotonic() - gone < 2 + 2 * 1 + 1  # lease + two retry periods + slack
        lease = fake_kube.get_object("leases", NS, "kpigate-operator")
        assert lease["spec"]["holderIdentity"] == "b"
        release["b"].set()
        threads["b"].join(5)
        assert not threads["b"].is_alive()
        assert fake_kube.count("update", "leases") >= 3
    finally:
        client.Configuration.set_default(previous)


def test_raw_stream_is_chunked_ndjson_and_watch_1_works(fake_kube):
    import http.client

    fake_kube.seed({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}, NS)
    host, port = fake_kube.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", f"/api/v1/namespaces/{NS}/configmaps?watch=1&timeoutSeconds=1")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Transfer-Encoding") == "chunked"
        lines = resp.read().decode().splitlines()
        assert [json.loads(line)["type"] for line in lines] == ["ADDED"]
        assert json.loads(lines[0])["object"]["kind"] == "ConfigMap"
        conn.request("GET", f"/api/v1/namespaces/{NS}/configmaps?watch=true&"
                            "resourceVersion=abc")
        resp = conn.getresponse()  # the same kept-alive connection
        assert resp.status == 400
        resp.read()
    finally:
        conn.close()
    assert [r.verb for r in fake_kube.requests] == ["watch", "watch"]
