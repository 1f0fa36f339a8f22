"""The router under faults it must absorb: a prediction log that cannot be written, huge
and deeply nested bodies.

Real HTTP to the real app (uvicorn on 127.0.0.1), real registered MLflow models. The
failing log is the router's own ``log`` port raising what a full disk raises
(``CollectorError``) while a switch is on: no candidate answer may go out unrecorded,
the candidate gets no traffic while the log fails, the controller's sample source holds,
and everything resumes when the log records again.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from _router_fixtures import Registry, make_frame, register_models, running

from mlflow_kpigate.backends.local import RouterConfig, create_app
from mlflow_kpigate.backends.local.evidence import RecordedEvidence, router_log_health
from mlflow_kpigate.core.errors import MetricsUnavailable
from mlflow_kpigate.core.records import Prediction
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics import Collector, CollectorError

SPEC = AggregateSpec(segment_fields=("region",))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    import mlflow

    previous = mlflow.get_tracking_uri()
    try:
        registry: Registry = register_models(tmp_path_factory.mktemp("mlflow"))
        yield (mlflow.pyfunc.load_model(registry.baseline_uri),
               mlflow.pyfunc.load_model(registry.candidate_uri))
    finally:
        mlflow.set_tracking_uri(previous)


class FlakyDisk:
    """The router's log port: the collector's queue, or a full disk while ``full``."""

    def __init__(self, collector: Collector) -> None:
        self.collector, self.full = collector, False

    def __call__(self, rows: Sequence[Prediction]) -> None:
        if self.full:
            raise CollectorError("segments/w0-1.seg: [Errno 28] No space left on device")
        self.collector.log(rows)


def _app(tmp_path: Path, models: tuple[Any, Any], weights: Weights, **config: Any
         ) -> tuple[Any, Collector, FlakyDisk]:
    collector = Collector(tmp_path / f"{uuid.uuid4().hex}.db", SPEC)
    disk = FlakyDisk(collector)
    cfg = RouterConfig(deployment="fraud", baseline_version="1", candidate_version="2",
                       baseline_model=models[0], candidate_model=models[1],
                       segment_fields=("region",), **config)
    return create_app(cfg, collector, lambda: (weights, 1), log=disk), collector, disk


def _send(url: str, n: int, seed: int = 0) -> Counter[str]:
    roles: Counter[str] = Counter()
    with requests.Session() as session:
        for i in range(n):
            body = {"dataframe_split": json.loads(make_frame(1, seed=seed + i).to_json(
                orient="split"))}
            response = session.post(f"{url}/invocations", json=body, timeout=30,
                                    headers={"X-Kpigate-Routing-Key": f"user-{seed + i}"})
            assert response.status_code == 200, response.text
            roles[response.headers["X-Kpigate-Role"]] += 1
    return roles


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_full_disk_sends_everything_to_the_baseline_and_the_gate_holds(
        tmp_path: Path, models: tuple[Any, Any]) -> None:
    app, collector, disk = _app(tmp_path, models, Weights(50.0))
    try:
        with running(app) as url:
            evidence = RecordedEvidence(collector, _port(url))
            assert _send(url, 40)["candidate"] > 0  # healthy: the split serves both
            assert len(evidence.stage_samples(now=1e12, maturity_s=0)) == 1
            disk.full = True
            failing = _send(url, 60, seed=100)
            # No candidate answer goes out unrecorded: the baseline answers all of them.
            assert failing == Counter(baseline=60)
            health = requests.get(f"{url}/health", timeout=30)
            assert health.status_code == 503
            assert "No space left on device" in health.text
            failing_now, refused = router_log_health(_port(url)) or (False, 0.0)
            # 60 answers unrecorded (a request the split had sent to the candidate as the
            # disk filled also counts the candidate's refused row).
            assert failing_now
            assert 60 <= refused <= 61
            with pytest.raises(MetricsUnavailable, match="cannot write the prediction log"):
                evidence.stage_samples(now=1e12, maturity_s=0)
            disk.full = False  # space is back: the next append succeeds
            assert _send(url, 40, seed=200)["candidate"] > 0
            assert requests.get(f"{url}/health", timeout=30).status_code == 200
            evidence.stage_samples(now=1e12, maturity_s=0)  # seen while failing: held then
            # A gap that opens and closes between two evaluations holds the next one.
            disk.full = True
            assert _send(url, 5, seed=300) == Counter(baseline=5)
            disk.full = False
            _send(url, 10, seed=400)
            with pytest.raises(MetricsUnavailable, match=r"could not record [56] predictions"):
                evidence.stage_samples(now=1e12, maturity_s=0)
            (sample,) = evidence.stage_samples(now=1e12, maturity_s=0)
    finally:
        collector.close()
    # The log holds what was recorded: 40 healthy, 40 and 10 after recovery.
    assert sample.baseline.requests + sample.candidate.requests == 90


def test_bodies_past_the_limit_get_413_and_deep_nesting_400(
        tmp_path: Path, models: tuple[Any, Any]) -> None:
    app, collector, _ = _app(tmp_path, models, Weights(50.0), max_body_bytes=2**20)
    try:
        with running(app) as url:
            big = b'{"instances": [' + b"[1.0, 2.0]," * 100_000 + b"[1.0, 2.0]]}"
            for path in ("/invocations", "/feedback"):
                response = requests.post(f"{url}{path}", data=big, timeout=30,
                                         headers={"Content-Type": "application/json"})
                assert response.status_code == 413, response.text
                assert "limit of 1,048,576 bytes (-C max_body)" in response.json()["message"]

            def chunks() -> Iterator[bytes]:  # no Content-Length: read, then refused
                for _ in range(2000):
                    yield b" " * 1024

            chunked = requests.post(f"{url}/invocations", data=chunks(), timeout=30)
            assert chunked.status_code == 413
            # 100,000 levels (200 kB, under the limit) was a 500 (RecursionError).
            nested = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
            response = requests.post(f"{url}/invocations", data=nested, timeout=30)
            assert response.status_code == 400, response.text
            assert "nested too deeply" in response.json()["message"]
            feedback = requests.post(f"{url}/feedback", data=nested, timeout=30)
            assert feedback.status_code == 400, feedback.text
            assert requests.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        collector.close()


def test_an_unreadable_state_keeps_the_last_weights_and_health_says_why(
        tmp_path: Path, models: tuple[Any, Any]) -> None:
    from mlflow_kpigate.backends.local import CachedWeights
    from mlflow_kpigate.core.errors import StateUnreadable

    broken = {"now": False}

    def load() -> tuple[Weights, int]:
        if broken["now"]:
            raise StateUnreadable("the state of deployment 'fraud' cannot be read (file is "
                                  "not a database: state.db)")
        return Weights(50.0), 1

    weights = CachedWeights(load, ttl_s=0.0)
    collector = Collector(tmp_path / "p.db", SPEC)
    cfg = RouterConfig(deployment="fraud", baseline_version="1", candidate_version="2",
                       baseline_model=models[0], candidate_model=models[1],
                       segment_fields=("region",))
    try:
        with running(create_app(cfg, collector, weights)) as url:
            assert requests.get(f"{url}/health", timeout=30).status_code == 200
            broken["now"] = True
            assert _send(url, 20)["candidate"] > 0  # the last approved weights still hold
            health = requests.get(f"{url}/health", timeout=30)
            assert health.status_code == 503
            assert "rollout state: StateUnreadable" in health.text
            broken["now"] = False
            assert requests.get(f"{url}/health", timeout=30).status_code == 200
    finally:
        collector.close()
