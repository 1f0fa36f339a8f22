"""The embedded router over real HTTP: uvicorn on 127.0.0.1, real registered MLflow models.

Faulty candidates (raising, hanging) wrap nothing: they are the smallest objects with the
``.predict(DataFrame)`` contract the router relies on. A hanging candidate blocks on an
event the test releases, so no test depends on how fast anything runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from _router_fixtures import (
    MODEL_NAME,
    Registry,
    free_port,
    make_frame,
    register_models,
    running,
    wait_until_healthy,
)
from prometheus_client.parser import text_string_to_metric_families

from mlflow_kpigate.backends.local import (
    CachedWeights,
    RouterConfig,
    RoutingKey,
    create_app,
    unit_interval,
)
from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.events import OtherEvent
from mlflow_kpigate.core.payloads import PayloadError, interpret_output, parse_payload
from mlflow_kpigate.core.records import Label
from mlflow_kpigate.core.state import Phase, RolloutState, Weights
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics import Collector

REPO = Path(__file__).resolve().parents[1]
SPEC = AggregateSpec(segment_fields=("region",))
SALT = "fraud:2"  # the default salt: deployment and candidate version


@dataclass(frozen=True)
class Models:
    registry: Registry
    baseline: Any
    candidate: Any


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    import mlflow

    previous = mlflow.get_tracking_uri()
    try:
        registry = register_models(tmp_path_factory.mktemp("mlflow"))
        yield Models(registry, mlflow.pyfunc.load_model(registry.baseline_uri),
                     mlflow.pyfunc.load_model(registry.candidate_uri))
    finally:
        mlflow.set_tracking_uri(previous)


class Switch:
    """A weights source the test moves by hand (the controller's role)."""

    def __init__(self, weights: Weights, stage: int = 0) -> None:
        self.value = (weights, stage)

    def set(self, weights: Weights, stage: int = 0) -> None:
        self.value = (weights, stage)

    def __call__(self) -> tuple[Weights, int]:
        return self.value


class Raising:
    def predict(self, frame: pd.DataFrame) -> Any:
        raise RuntimeError("candidate exploded")


class RejectingInput:
    """A candidate whose signature needs a column the callers do not send yet."""

    def predict(self, frame: pd.DataFrame) -> Any:
        from mlflow.exceptions import MlflowException

        raise MlflowException.invalid_parameter_value(
            "Failed to enforce schema of data ... Error: Model is missing inputs ['device'].",
            error_class="SCHEMA_ENFORCEMENT_FAILED")


class Hanging:
    """Answers only once ``release`` is set."""

    def __init__(self, model: Any, release: threading.Event) -> None:
        self.model, self.release = model, release

    def predict(self, frame: pd.DataFrame) -> Any:
        self.release.wait(60)
        return self.model.predict(frame)


@dataclass
class Live:
    url: str
    collector: Collector
    db: Path
    app: Any


@contextmanager
def router(tmp_path: Path, models: Models, weights: Any, candidate: Any = "default",
           **config: Any) -> Iterator[Live]:
    db = tmp_path / f"{uuid.uuid4().hex}.db"
    collector = Collector(db, SPEC)
    cfg = RouterConfig(
        deployment="fraud", baseline_version="1", candidate_version="2",
        baseline_model=models.baseline,
        candidate_model=models.candidate if candidate == "default" else candidate,
        segment_fields=("region",), **config,
    )
    app = create_app(cfg, collector, weights)
    try:
        with running(app) as url:
            yield Live(url, collector, db, app)
    finally:
        collector.close()


def invoke(url: str, frame: pd.DataFrame, session: Any = requests, **headers: str) -> Any:
    body = {"dataframe_split": json.loads(frame.to_json(orient="split"))}
    return session.post(f"{url}/invocations", json=body, headers=headers, timeout=30)


def probabilities(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["predictions"])


# -- pure parts -----------------------------------------------------------------------------


def test_routing_key_parse_and_hash():
    assert RoutingKey.parse(None) == RoutingKey("header", "X-Kpigate-Routing-Key")
    assert RoutingKey.parse("column:customer_id") == RoutingKey("column", "customer_id")
    assert str(RoutingKey.parse("header:X-User")) == "header:X-User"
    for bad in ("customer_id", "cookie:x", "column:"):
        with pytest.raises(ValueError, match="header:NAME' or 'column:NAME"):
            RoutingKey.parse(bad)
    points = [unit_interval(f"k{i}", "s") for i in range(2000)]
    assert all(0 <= u < 1 for u in points)
    assert unit_interval("k1", "s") == points[1]  # stable
    assert unit_interval("k1", "other rollout") != points[1]  # salted per rollout


def test_interpret_output():
    two = interpret_output(np.array([[0.8, 0.2], [0.3, 0.7]]), 2, threshold=0.5)
    assert two.scores == pytest.approx([0.2, 0.7])
    assert two.predicted == [0, 1]
    assert interpret_output(pd.Series([0.1, 0.9]), 2).predicted == [0, 1]
    labels = interpret_output(np.array([1, 0, 1]), 3)
    assert (labels.scores, labels.predicted) == ([None] * 3, [1, 0, 1])
    for raw in (np.array(["fraud", "ok"]), np.array([0.5, 2.0]), np.array([[0.1, 0.2, 0.7]] * 2),
                np.array([1, 0, 1]), {"a": 1}):
        assert not interpret_output(raw, 2).understood


def test_parse_payload_errors_are_one_line():
    with pytest.raises(PayloadError, match="unsupported content type") as info:
        parse_payload(b"{}", "text/plain")
    assert info.value.status == 415
    with pytest.raises(PayloadError, match="charset"):
        parse_payload(b"{}", "application/json; charset=latin-1")


# -- over HTTP -----------------------------------------------------------------------------


def test_every_payload_format_gives_the_models_predictions(tmp_path: Path, models: Models):
    frame = make_frame(5, seed=3)
    expected = models.baseline.predict(frame)
    split = json.loads(frame.to_json(orient="split"))
    records = json.loads(frame.to_json(orient="records"))
    columns = {c: [row[i] for row in split["data"]] for i, c in enumerate(split["columns"])}
    bodies = {
        "dataframe_split": ({"dataframe_split": split}, "application/json"),
        "dataframe_records": ({"dataframe_records": records}, "application/json"),
        "instances": ({"instances": records}, "application/json"),
        "inputs (columns)": ({"inputs": columns}, "application/json"),
        "inputs (rows)": ({"inputs": split["data"]}, "application/json"),
        "csv": (frame.to_csv(index=False), "text/csv"),
    }
    with router(tmp_path, models, Switch(Weights(0.0))) as live:
        for name, (body, ctype) in bodies.items():
            data = body if isinstance(body, str) else json.dumps(body)
            response = requests.post(f"{live.url}/invocations", data=data,
                                     headers={"Content-Type": ctype}, timeout=30)
            np.testing.assert_allclose(probabilities(response), expected, err_msg=name)
            assert response.headers["X-Kpigate-Role"] == "baseline"
            assert response.headers["X-Kpigate-Version"] == "1"
        one = invoke(live.url, frame.head(1), **{"X-Kpigate-Request-Id": "txn-42"})
        np.testing.assert_allclose(probabilities(one), expected[:1])
        assert one.headers["X-Kpigate-Request-Id"] == "txn-42"
        live.collector.flush()
        assert live.collector.stats()["predictions"] == 5 * len(bodies) + 1
        # Each row of a multi-row request is its own prediction: REQID/i.
        rid = response.headers["X-Kpigate-Request-Id"]
        result = live.collector.add_labels([Label(f"{rid}/4", 1), Label("txn-42", 0)])
        assert (result.matched, result.unknown) == (2, ())


def test_bad_payloads_are_rejected_with_one_line(tmp_path: Path, models: Models):
    frame = make_frame(2)
    good_split = json.loads(frame.to_json(orient="split"))
    cases = [
        (b"not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "must be an object"),
        (b"{}", "application/json", 400, "exactly one of"),
        (json.dumps({"rows": []}).encode(), "application/json", 400, "unknown field 'rows'"),
        (json.dumps({"dataframe_split": good_split, "inputs": [[1]]}).encode(),
         "application/json", 400, "exactly one of"),
        (json.dumps({"dataframe_split": {"columns": ["a"]}}).encode(), "application/json",
         400, "dataframe_split"),
        (json.dumps({"dataframe_records": {"a": 1}}).encode(), "application/json", 400,
         "list of records"),
        (json.dumps({"dataframe_records": []}).encode(), "application/json", 400, "no rows"),
        (json.dumps({"dataframe_records": [{"amount": 1.0}]}).encode(), "application/json",
         400, "does not match the model's signature: Model is missing inputs"),
        (b"\xff\xfe", "application/json", 400, "UTF-8"),
        (b"", "text/csv", 400, "empty"),
        (b"amount\n1", "text/plain", 415, "unsupported content type"),
    ]
    with router(tmp_path, models, Switch(Weights(0.0))) as live:
        for body, ctype, status, message in cases:
            response = requests.post(f"{live.url}/invocations", data=body,
                                     headers={"Content-Type": ctype}, timeout=30)
            assert response.status_code == status, (body, response.text)
            text = response.json()["message"]
            assert message in text, (body, text)
            assert "\n" not in text
        bad_id = invoke(live.url, frame, **{"X-Kpigate-Request-Id": "a/b"})
        assert bad_id.status_code == 400
        assert "X-Kpigate-Request-Id" in bad_id.json()["message"]
        # None counts as a model error: the signature mismatch is the client's mistake.
        live.collector.flush()
        assert live.collector.stats()["predictions"] == 0
        metrics = requests.get(f"{live.url}/metrics", timeout=30).text
        invalid = [(sample.labels, sample.value)
                   for family in text_string_to_metric_families(metrics)
                   for sample in family.samples
                   if sample.name == "kpigate_invalid_requests_total"]
        assert invalid == [({"namespace": "local", "deployment": "fraud"}, 1.0)]


def test_concurrent_clients_every_response_is_logged(tmp_path: Path, models: Models):
    frame = make_frame(1, seed=4)
    roles: Counter[str] = Counter()
    lock = threading.Lock()

    def client(i: int) -> None:
        with requests.Session() as session:
            for j in range(3):
                response = invoke(session=session, url=live.url, frame=frame,
                                  **{"X-Kpigate-Routing-Key": f"user-{i}-{j}"})
                assert response.status_code == 200
                with lock:
                    roles[response.headers["X-Kpigate-Role"]] += 1

    with router(tmp_path, models, Switch(Weights(50.0), stage=2)) as live:
        with ThreadPoolExecutor(100) as pool:
            list(pool.map(client, range(100)))
        live.collector.flush()
        assert sum(roles.values()) == 300
        assert live.collector.stats()["predictions"] == 300
        (sample,) = live.collector.stage_samples(now=0, maturity_s=0)
        assert sample.stage_index == 2
        assert (sample.baseline.requests, sample.candidate.requests) == (
            roles["baseline"], roles["candidate"])


def test_routing_is_sticky_and_monotone_across_stages(tmp_path: Path, models: Models):
    frame = make_frame(1, seed=5)
    keys = [f"customer-{i}" for i in range(100)]
    switch = Switch(Weights(5.0), stage=1)
    on_candidate: dict[float, set[str]] = {}
    with router(tmp_path, models, switch) as live, requests.Session() as session:
        for stage, percent in enumerate((5.0, 25.0, 50.0), start=1):
            switch.set(Weights(percent), stage)
            chosen = set()
            for key in keys:
                response = invoke(live.url, frame, session, **{"X-Kpigate-Routing-Key": key})
                if response.headers["X-Kpigate-Role"] == "candidate":
                    chosen.add(key)
            on_candidate[percent] = chosen
            assert chosen == {k for k in keys if unit_interval(k, SALT) < percent / 100}
        assert on_candidate[5.0] <= on_candidate[25.0] <= on_candidate[50.0]
        assert len(on_candidate[5.0]) < len(on_candidate[50.0])
        # The same keys again at the same weight: the same model.
        again = {k for k in keys[:30] if invoke(live.url, frame, session, **{
            "X-Kpigate-Routing-Key": k}).headers["X-Kpigate-Role"] == "candidate"}
        assert again == on_candidate[50.0] & set(keys[:30])


def test_routing_by_input_column(tmp_path: Path, models: Models):
    with router(tmp_path, models, Switch(Weights(50.0)), routing_key="column:customer_id"
                ) as live, requests.Session() as session:
        for seed in range(30):
            frame = make_frame(1, seed=seed)
            customer = frame["customer_id"].iloc[0]
            roles = set()
            for amount in (10.0, 900.0):  # different inputs, same customer
                role = invoke(live.url, frame.assign(amount=amount), session
                              ).headers["X-Kpigate-Role"]
                roles.add(role)
            expected = "candidate" if unit_interval(customer, SALT) < 0.5 else "baseline"
            assert roles == {expected}


@pytest.mark.parametrize("candidate", [Raising(), RejectingInput()],
                         ids=["raises", "rejects-input"])
def test_candidate_failure_in_canary_is_answered_by_the_baseline(tmp_path: Path, models: Models,
                                                                 candidate: Any):
    frame = make_frame(3, seed=6)
    with router(tmp_path, models, Switch(Weights(100.0), stage=3), candidate=candidate) as live:
        for _ in range(4):
            response = invoke(live.url, frame)
            np.testing.assert_allclose(probabilities(response), models.baseline.predict(frame))
            assert response.headers["X-Kpigate-Role"] == "baseline"
            assert response.headers["X-Kpigate-Fallback"] == "candidate-error"
        (sample,) = live.collector.stage_samples(now=0, maturity_s=0)
    # 4 requests x 3 rows, each logged for both roles.
    assert (sample.candidate.requests, sample.candidate.errors) == (12, 12)
    assert (sample.baseline.requests, sample.baseline.errors) == (12, 0)


def test_shadow_failures_are_invisible_to_callers(tmp_path: Path, models: Models):
    frame = make_frame(2, seed=7)
    expected = models.baseline.predict(frame)
    with router(tmp_path, models, Switch(Weights(0.0, shadow=True)), candidate=Raising()
                ) as live:
        for _ in range(5):
            response = invoke(live.url, frame)
            np.testing.assert_allclose(probabilities(response), expected)
            assert response.headers["X-Kpigate-Role"] == "baseline"
        db = live.db
    # Stopping the server waited for the shadow copies; read the file as the controller.
    with Collector(db, SPEC) as reader:
        (sample,) = reader.stage_samples(now=0, maturity_s=0)
    assert (sample.baseline.requests, sample.baseline.errors) == (10, 0)
    assert (sample.candidate.requests, sample.candidate.errors) == (10, 10)


def test_a_hanging_shadow_candidate_never_delays_callers(tmp_path: Path, models: Models):
    frame = make_frame(1, seed=8)
    release = threading.Event()
    hanging = Hanging(models.candidate, release)
    try:
        with router(tmp_path, models, Switch(Weights(0.0, shadow=True)), candidate=hanging,
                    shadow_timeout_s=0.2, shadow_max_inflight=3) as live:
            # The candidate answers none of these before the test ends; callers still do.
            for _ in range(10):
                response = invoke(live.url, frame)
                np.testing.assert_allclose(probabilities(response),
                                           models.baseline.predict(frame))
            db, app = live.db, live.app
            registry = app.state.router.metrics.registry
    finally:
        release.set()
    with Collector(db, SPEC) as reader:
        (sample,) = reader.stage_samples(now=0, maturity_s=0)
    assert sample.baseline.requests == 10
    # Three copies were in flight (timed out, logged as errors); the rest were skipped.
    assert (sample.candidate.requests, sample.candidate.errors) == (3, 3)
    shadow = {s.labels["outcome"]: s.value for s in _family(registry, "kpigate_shadow_requests")
              if s.name.endswith("_total")}
    assert shadow == {"timeout": 3.0, "skipped": 7.0}


def test_shadow_copies_are_logged_and_labelled_with_the_served_rows(tmp_path: Path,
                                                                    models: Models):
    frame = make_frame(1, seed=9)
    with router(tmp_path, models, Switch(Weights(0.0, shadow=True), stage=0)) as live:
        ids = [invoke(live.url, frame).headers["X-Kpigate-Request-Id"] for _ in range(6)]
        db = live.db
    with Collector(db, SPEC) as reader:
        result = reader.add_labels([Label(i, 1) for i in ids])
        assert result.matched == 6
        assert Counter((o.role, o.shadow) for o in result.outcomes) == {
            ("baseline", False): 6, ("candidate", True): 6}
        (sample,) = reader.stage_samples(now=1e12, maturity_s=0)
    assert sample.candidate.labelled == sample.baseline.labelled == 6
    assert sample.candidate.errors == 0


def test_while_baking_the_candidate_answers_and_the_baseline_scores_a_copy(
        tmp_path: Path, models: Models):
    frame = make_frame(1, seed=10)
    with router(tmp_path, models, Switch(Weights.baking(), stage=2)) as live:
        responses = [invoke(live.url, frame) for _ in range(5)]
        ids = [r.headers["X-Kpigate-Request-Id"] for r in responses]
        status = requests.get(f"{live.url}/status", timeout=30).json()
        db = live.db
    for response in responses:
        assert response.headers["X-Kpigate-Role"] == "candidate"
        np.testing.assert_allclose(probabilities(response), models.candidate.predict(frame))
    assert status["weights"]["baseline_shadow"] is True
    with Collector(db, SPEC) as reader:
        result = reader.add_labels([Label(i, 1) for i in ids])
        assert Counter((o.role, o.shadow) for o in result.outcomes) == {
            ("candidate", False): 5, ("baseline", True): 5}
        (sample,) = reader.stage_samples(now=1e12, maturity_s=0)
    assert sample.stage_index == 2  # the bake's own stratum
    assert sample.candidate.labelled == sample.baseline.labelled == 5


def test_while_baking_a_failing_candidate_falls_back_without_a_second_copy(
        tmp_path: Path, models: Models):
    frame = make_frame(1, seed=11)
    with router(tmp_path, models, Switch(Weights.baking(), stage=2),
                candidate=Raising()) as live:
        for _ in range(4):
            response = invoke(live.url, frame)
            assert response.headers["X-Kpigate-Role"] == "baseline"
            assert response.headers["X-Kpigate-Fallback"] == "candidate-error"
        db = live.db
    with Collector(db, SPEC) as reader:
        (sample,) = reader.stage_samples(now=0, maturity_s=0)
    assert (sample.candidate.requests, sample.candidate.errors) == (4, 4)
    assert (sample.baseline.requests, sample.baseline.errors) == (4, 0)


class Counting:
    """Counts the predictions asked of a model (from any thread)."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls, self._lock = model, 0, threading.Lock()

    def predict(self, frame: pd.DataFrame) -> Any:
        with self._lock:
            self.calls += 1
        return self.model.predict(frame)


@pytest.mark.parametrize("warm", [True, False])
def test_in_canary_the_candidate_scores_unlogged_warming_copies(tmp_path: Path,
                                                                models: Models, warm: bool):
    frame = make_frame(1, seed=12)
    counting = Counting(models.candidate)
    with router(tmp_path, models, Switch(Weights(25.0), stage=1), candidate=counting,
                warm_candidate=warm) as live:
        roles = Counter(invoke(live.url, frame).headers["X-Kpigate-Role"] for _ in range(40))
        db, registry = live.db, live.app.state.router.metrics.registry
    # Stopping the server waited for the copies in flight.
    assert roles["candidate"] > 0
    assert roles["baseline"] > 0
    copies = {s.labels["outcome"]: s.value for s in _family(registry, "kpigate_shadow_requests")
              if s.name.endswith("_total")}
    with Collector(db, SPEC) as reader:
        (sample,) = reader.stage_samples(now=0, maturity_s=0)
    # Only the answers are evidence: the copies are neither logged nor counted as served.
    assert sample.candidate.requests == roles["candidate"]
    assert sample.baseline.requests == roles["baseline"]
    if warm:
        # Sequential callers: the candidate is idle at nearly every baseline answer.
        assert 0 < copies["warm"] <= roles["baseline"]
        assert counting.calls == roles["candidate"] + copies["warm"]
    else:
        assert "warm" not in copies
        assert counting.calls == roles["candidate"]


def test_a_fallback_starts_no_warming_copy(tmp_path: Path, models: Models):
    frame = make_frame(1, seed=13)
    counting = Counting(Raising())
    with router(tmp_path, models, Switch(Weights(50.0), stage=1), candidate=counting) as live:
        outcomes = Counter(invoke(live.url, frame).headers.get("X-Kpigate-Fallback", "baseline")
                           for _ in range(40))
        registry = live.app.state.router.metrics.registry
    copies = {s.labels["outcome"]: s.value for s in _family(registry, "kpigate_shadow_requests")
              if s.name.endswith("_total")}
    assert outcomes["candidate-error"] > 0
    assert outcomes["baseline"] > 0
    # Copies follow the baseline's own answers only: a fallback (the candidate just
    # failed that request) adds none.
    assert 0 < copies["warm"] <= outcomes["baseline"]
    assert counting.calls == outcomes["candidate-error"] + copies["warm"]


def test_feedback_single_batch_and_malformed(tmp_path: Path, models: Models):
    with router(tmp_path, models, Switch(Weights(50.0), stage=1)) as live:
        ids = [invoke(live.url, make_frame(1, seed=s)).headers["X-Kpigate-Request-Id"]
               for s in range(6)]
        multi = invoke(live.url, make_frame(3)).headers["X-Kpigate-Request-Id"]
        single = requests.post(f"{live.url}/feedback",
                               json={"request_id": ids[0], "label": 1}, timeout=30)
        assert single.json() == {"matched": 1, "unknown": [], "duplicates": 0}
        batch = requests.post(f"{live.url}/feedback", json={"labels": [
            *({"request_id": i, "label": 0} for i in ids[1:]),
            {"request_id": f"{multi}/2", "label": 1},
            {"request_id": "never-served", "label": 1},
            {"request_id": ids[0], "label": 0},
        ]}, timeout=30)
        assert batch.json() == {"matched": 6, "unknown": ["never-served"], "duplicates": 1}
        for body, field in [
            ({"labels": [{"request_id": "x", "label": 1}, {"request_id": "y", "label": 2}]},
             "labels[1].label"),
            ({"request_id": 7, "label": 1}, "request_id"),
            ({"label": 1}, "request_id"),
            ({"request_id": "x", "label": 1, "score": 3}, "score"),
            ({"request_id": "x", "label": 1, "values": {"loss": "high"}}, "values.loss"),
            ({"labels": {"request_id": "x"}}, "labels must be a list"),
        ]:
            response = requests.post(f"{live.url}/feedback", json=body, timeout=30)
            assert response.status_code == 400, body
            assert field in response.json()["message"], response.text
        not_json = requests.post(f"{live.url}/feedback", data=b"{", timeout=30)
        assert not_json.status_code == 400
        assert live.collector.stats()["unknown_labels"] == 1


def test_metrics_health_status_and_reload(tmp_path: Path, models: Models):
    switch = Switch(Weights(25.0), stage=2)
    cached = CachedWeights(switch, ttl_s=3600)  # only /admin/reload re-reads
    with router(tmp_path, models, cached, candidate=Raising()) as live:
        for i in range(40):
            invoke(live.url, make_frame(1, seed=i), **{"X-Kpigate-Routing-Key": f"k{i}"})
        ids = [invoke(live.url, make_frame(1)).headers["X-Kpigate-Request-Id"]
               for _ in range(3)]
        requests.post(f"{live.url}/feedback", json={"labels": [
            {"request_id": ids[0], "label": 1}, {"request_id": "nope", "label": 0}]},
            timeout=30)
        text = requests.get(f"{live.url}/metrics", timeout=30).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["kpigate_requests"].type == "counter"
        requests_by = {(s.labels["role"], s.labels["outcome"]): s.value
                       for s in families["kpigate_requests"].samples
                       if s.name == "kpigate_requests_total"}
        candidate_errors = requests_by[("candidate", "error")]
        assert candidate_errors == sum(unit_interval(f"k{i}", SALT) < 0.25 for i in range(40)) + \
            sum(unit_interval(i, SALT) < 0.25 for i in ids)
        assert requests_by[("baseline", "ok")] == 43
        durations = [s for s in families["kpigate_request_duration_seconds"].samples
                     if s.name.endswith("_count")]
        assert sum(s.value for s in durations) == 43 + candidate_errors
        labels = {s.labels["status"]: s.value for s in families["kpigate_labels"].samples
                  if s.name == "kpigate_labels_total"}
        assert labels == {"matched": 1.0, "unknown": 1.0, "duplicate": 0.0}
        outcomes = [s for s in families["kpigate_outcomes"].samples
                    if s.name == "kpigate_outcomes_total"]
        assert [(s.labels["role"], s.labels["version"]) for s in outcomes] == [("baseline", "1")]
        weights = {s.labels["role"]: s.value for s in families["kpigate_traffic_weight"].samples}
        assert weights == {"candidate": 0.25, "baseline": 0.75}
        # The controller's name for the stage, and the label the dashboard selects on.
        (stage,) = families["kpigate_rollout_stage"].samples
        assert (stage.labels, stage.value) == ({"namespace": "local", "deployment": "fraud"}, 2)
        assert "kpigate_stage_index" not in families
        assert "kpigate_shadow_requests" in families

        assert requests.get(f"{live.url}/health", timeout=30).json() == {"status": "ok"}
        status = requests.get(f"{live.url}/status", timeout=30).json()
        assert status["deployment"] == "fraud"
        assert status["versions"] == {"baseline": "1", "candidate": "2"}
        assert status["stage"] == 2
        assert status["weights"]["candidate_percent"] == 25.0
        assert status["collector"]["unknown_labels"] == 1

        switch.set(Weights.baseline_only(), stage=2)
        assert requests.get(f"{live.url}/status", timeout=30).json()["weights"][
            "candidate_attached"]  # still cached
        reloaded = requests.post(f"{live.url}/admin/reload", timeout=30).json()
        assert reloaded["weights"]["candidate_attached"] is False
        roles = {invoke(live.url, make_frame(1), **{"X-Kpigate-Routing-Key": f"k{i}"}
                        ).headers["X-Kpigate-Role"] for i in range(20)}
        assert roles == {"baseline"}


def test_health_is_503_without_the_candidate_model(tmp_path: Path, models: Models):
    with router(tmp_path, models, Switch(Weights(5.0)), candidate=None) as live:
        response = requests.get(f"{live.url}/health", timeout=30)
        assert response.status_code == 503
        assert "candidate model is not loaded" in response.json()["problems"][0]
        # Traffic still flows, all of it to the baseline.
        assert invoke(live.url, make_frame(1)).headers["X-Kpigate-Role"] == "baseline"


def test_server_end_to_end_in_a_subprocess(tmp_path: Path, models: Models):
    from mlflow_kpigate.policy import load_policy

    directory = tmp_path / "fraud-e2e"
    directory.mkdir()
    policy_file = directory / "policy.yaml"
    policy_file.write_text((REPO / "examples/policies/fraud.yaml").read_text())
    port = free_port()
    store = RolloutStore(directory)
    state = RolloutState(
        name="fraud-e2e", model_name=MODEL_NAME, candidate_version="2", baseline_version="1",
        candidate_uri=models.registry.candidate_uri, baseline_uri=models.registry.baseline_uri,
        policy_file=str(policy_file), tracking_uri=models.registry.tracking_uri, port=port,
        stage_index=1, approved_stage_index=1, phase=Phase.CANARY, weights=Weights(50.0),
    )
    state = store.save(state, OtherEvent("started", {"stage": 1}))
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow_kpigate.backends.local.server", str(directory)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process=process)
        roles: Counter[str] = Counter()
        with requests.Session() as session:
            for i in range(20):
                response = invoke(url, make_frame(1, seed=i), session,
                                  **{"X-Kpigate-Routing-Key": f"user-{i}"})
                roles[response.headers["X-Kpigate-Role"]] += 1
            status = session.get(f"{url}/status", timeout=30).json()
            assert status["versions"] == {"baseline": "1", "candidate": "2"}
            # The controller rolls back: the router follows once it re-reads the state.
            store.save(state.evolve(weights=Weights.baseline_only(), phase=Phase.ROLLED_BACK),
                       OtherEvent("rolled_back", {}))
            session.post(f"{url}/admin/reload", timeout=30)
            for i in range(10):
                response = invoke(url, make_frame(1, seed=i), session,
                                  **{"X-Kpigate-Routing-Key": f"user-{i}"})
                assert response.headers["X-Kpigate-Role"] == "baseline"
                roles["baseline"] += 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    output = (tmp_path / "server.log").read_text()
    assert "prediction log ingested" in output, output
    spec = AggregateSpec.from_policy(load_policy(policy_file))
    with Collector(directory / "predictions.db", spec) as reader:
        assert reader.stats()["predictions"] == 30
        (sample,) = reader.stage_samples(now=0, maturity_s=0)
    assert sample.stage_index == 1
    assert (sample.baseline.requests, sample.candidate.requests) == (
        roles["baseline"], roles["candidate"])
    assert roles["candidate"] == sum(unit_interval(f"user-{i}", "fraud-e2e:2") < 0.5
                                     for i in range(20))


def _family(registry: Any, name: str) -> list[Any]:
    for metric in registry.collect():
        if metric.name == name:
            return list(metric.samples)
    raise AssertionError(f"no metric {name}")


def test_cached_weights_read_once_per_interval_however_many_threads_wait():
    release = threading.Event()
    reads = []

    def load() -> tuple[Weights, int]:
        reads.append(1)
        release.wait(30)
        return Weights(5.0), 1

    cached = CachedWeights(load, ttl_s=60)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cached) for _ in range(8)]
        threading.Event().wait(0.3)  # the others queue behind the first read
        release.set()
        assert {f.result() for f in futures} == {(Weights(5.0), 1)}
    assert len(reads) == 1  # the threads that waited took the fresh value
    cached.refresh()
    assert len(reads) == 2  # /admin/reload still reads at once
