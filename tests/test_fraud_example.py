"""The fraud case study's example code: generator, training/registration, traffic replay.

Real parts throughout: a SQLite MLflow store in a temporary directory, real XGBoost and
LightGBM models loaded back through ``mlflow.pyfunc``, and a real HTTP server (FastAPI on
uvicorn, 127.0.0.1, in a thread) serving one of those models for the traffic generator.
"""

from __future__ import annotations

import importlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import uvicorn
from fastapi import Body, FastAPI, Header
from fastapi.responses import JSONResponse
from mlflow.tracking import MlflowClient

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fraud"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))
data = importlib.import_module("data")
fraud_pyfunc = importlib.import_module("fraud_pyfunc")
train = importlib.import_module("train")
traffic = importlib.import_module("traffic")

MODEL_NAME = "fraud-test"
TRAIN_N = 60_000


# --------------------------------------------------------------------------- generator

def test_generate_columns_prevalence_and_segments():
    frame = data.generate(100_000, seed=0)
    assert list(frame.columns) == [data.ROUTING_KEY_COLUMN, *data.FEATURE_COLUMNS,
                                   data.LABEL_COLUMN]
    assert len(frame) == 100_000
    assert 0.012 <= frame["label"].mean() <= 0.018
    shares = frame["region"].value_counts(normalize=True)
    for region, share in zip(data.REGIONS, data.REGION_SHARES, strict=True):
        assert shares[region] == pytest.approx(share, abs=0.03)
    assert set(frame["payment_method"]) == set(data.PAYMENT_METHODS)
    assert set(frame["device"]) == set(data.DEVICES)
    assert set(frame["merchant_category"]) <= set(data.MERCHANT_CATEGORIES)
    assert frame["hour"].between(0, 23).all()
    assert (frame["velocity_1h"] >= 0).all()
    assert (frame["amount"] > 0).all()
    assert frame["customer_id"].nunique() < len(frame) / 5      # routing keys repeat
    # The fraud signal the docstring promises.
    fraud, legit = frame[frame["label"] == 1], frame[frame["label"] == 0]
    night = frame["hour"] < 6
    assert frame.loc[night, "label"].mean() > 3 * frame.loc[~night, "label"].mean()
    assert fraud["velocity_1h"].mean() > 2 * legit["velocity_1h"].mean()
    assert fraud["spend_deviation"].abs().mean() > 2 * legit["spend_deviation"].abs().mean()
    assert (fraud["payment_method"] == "card_not_present").mean() > \
        2 * (legit["payment_method"] == "card_not_present").mean()


def test_generate_is_deterministic_per_seed():
    a, b = data.generate(5_000, seed=3), data.generate(5_000, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(data.generate(5_000, seed=4))
    with pytest.raises(ValueError, match="positive"):
        data.generate(0)


def test_split_features_labels():
    frame = data.generate(2_000, seed=1)
    features, labels = data.split_features_labels(frame)
    assert list(features.columns) == list(data.FEATURE_COLUMNS)
    assert labels.dtype == np.int64
    assert labels.shape == (2_000,)
    assert set(np.unique(labels)) <= {0, 1}
    assert set(data.SEGMENT_COLUMNS) <= set(features.columns)


def test_rescale_keeps_order_and_puts_threshold_at_one_half():
    p = np.array([0.0, 0.1, 0.2999999, 0.3, 0.31, 0.9, 1.0])
    s = fraud_pyfunc.rescale(p, 0.3)
    assert np.all(np.diff(s) > 0)
    assert s[0] == 0.0
    assert s[-1] == 1.0
    assert list(s >= 0.5) == list(p >= 0.3)
    with pytest.raises(ValueError, match="threshold"):
        fraud_pyfunc.rescale(p, 1.0)


def test_encoding_handles_unknown_and_single_rows_like_batches():
    frame = data.generate(600, seed=2)
    whole = fraud_pyfunc.encode_features(frame, data.FEATURE_COLUMNS, data.CATEGORICAL_COLUMNS)
    rows = np.vstack([fraud_pyfunc.encode_features(frame.iloc[i:i + 1], data.FEATURE_COLUMNS,
                                                   data.CATEGORICAL_COLUMNS)
                      for i in range(len(frame))])
    np.testing.assert_array_equal(whole, rows)
    odd = frame.head(2).copy()
    odd.loc[odd.index[0], "region"] = "mars"
    encoded = fraud_pyfunc.encode_features(odd, data.FEATURE_COLUMNS, data.CATEGORICAL_COLUMNS)
    assert np.isnan(encoded[0, data.FEATURE_COLUMNS.index("region")])
    with pytest.raises(ValueError, match="amount"):
        fraud_pyfunc.encode_features(frame.drop(columns="amount"), data.FEATURE_COLUMNS,
                                     data.CATEGORICAL_COLUMNS)


# --------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Iterator[tuple[str, list[Any]]]:
    """Three versions trained at a small size in a temporary SQLite store.

    One training thread: under ``pytest -n 2`` both cores are busy, and LightGBM's two
    threads, waiting on each other at every split, took 10-100 times as long as one.
    """
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    versions = train.train_and_register(uri, MODEL_NAME, n=TRAIN_N, seed=0, degraded=True,
                                        artifact_location=str(root / "artifacts"), log=False,
                                        threads=1)
    assert mlflow.get_tracking_uri() == previous      # train restores the process-wide URI
    mlflow.set_tracking_uri(uri)
    try:
        yield uri, versions
    finally:
        mlflow.set_tracking_uri(previous)


def test_training_registers_versions_with_aliases_and_metrics(registered):
    uri, versions = registered
    assert [v.role for v in versions] == ["baseline", "candidate", "degraded"]
    assert [v.kind for v in versions] == ["xgboost", "lightgbm", "lightgbm"]
    client = MlflowClient(uri)
    aliases = client.get_registered_model(MODEL_NAME).aliases
    assert {k: str(v) for k, v in aliases.items()} == {
        "champion": versions[0].version, "challenger": versions[1].version,
        "degraded": versions[2].version}
    for v in versions:
        mv = client.get_model_version(MODEL_NAME, v.version)
        assert mv.run_id == v.run_id
        assert mv.tags["fraud.role"] == v.role
        metrics = client.get_run(v.run_id).data.metrics
        for kpi in ("precision", "recall", "auc", "fpr_fairness"):
            history = client.get_metric_history(v.run_id, kpi)
            assert sorted(m.step for m in history) == list(range(train.N_FOLDS))
            assert all(0.0 <= m.value <= 1.0 for m in history)
            assert 0.0 <= metrics[f"validation_{kpi}"] <= 1.0
        assert 0.0 < metrics["threshold"] < 1.0
        assert metrics["n_validation"] == TRAIN_N // 5
        assert v.alias_uri == f"models:/{MODEL_NAME}@{v.alias}"
    base = client.get_run(versions[0].run_id).data.metrics
    assert base["validation_recall"] > 0.75
    assert base["validation_auc"] > 0.93


def test_loaded_versions_score_probabilities_with_expected_recall(registered):
    _, versions = registered
    fresh = data.generate(100_000, seed=99)
    inputs = fresh[data.request_columns()]
    recall = {}
    for v in versions:
        scores = mlflow.pyfunc.load_model(v.uri).predict(inputs)
        assert isinstance(scores, np.ndarray)
        assert scores.shape == (len(fresh),)
        assert scores.dtype == np.float64
        assert np.all((scores >= 0.0) & (scores <= 1.0))
        kpis = train.kpi_metrics(fresh["label"].to_numpy(), scores, fresh["region"].to_numpy())
        recall[v.role] = kpis["recall"]
        assert kpis["auc"] > (0.85 if v.role == "degraded" else 0.93)
        assert kpis["precision"] > (0.2 if v.role == "degraded" else 0.5)
    assert 0.80 <= recall["baseline"] <= 0.95
    assert abs(recall["candidate"] - recall["baseline"]) <= 0.04
    assert recall["baseline"] - recall["degraded"] >= 0.04


def test_train_rejects_too_small_n(capsys):
    assert train.main(["--tracking-uri", "sqlite:///unused.db", "--n", "100"]) == 2
    assert "at least" in capsys.readouterr().err


# --------------------------------------------------------------------------- traffic

class _Endpoint:
    """A tiny scoring server: MLflow's /invocations with a real model, and /feedback."""

    def __init__(self, model: Any, feedback: bool = True) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.served: dict[str, tuple[float, str | None, int]] = {}
        self.labels: list[tuple[str, int, float]] = []
        self.app = FastAPI()
        self.app.post("/invocations")(self._invocations)
        if feedback:
            self.app.post("/feedback")(self._feedback)

    def _invocations(self, payload: Annotated[dict, Body()],
                     x_kpigate_routing_key: Annotated[str | None, Header()] = None
                     ) -> JSONResponse:
        split = payload["dataframe_split"]
        frame = pd.DataFrame(split["data"], columns=split["columns"])
        scores = self.model.predict(frame)
        request_id = uuid.uuid4().hex
        with self.lock:
            self.served[request_id] = (time.monotonic(), x_kpigate_routing_key,
                                       int(frame["customer_id"].iloc[0]))
        return JSONResponse({"predictions": [float(s) for s in scores]},
                            headers={traffic.REQUEST_ID_HEADER: request_id})

    def _feedback(self, payload: Annotated[dict, Body()]) -> dict:
        now = time.monotonic()
        with self.lock:
            unknown = 0
            for item in payload["labels"]:
                unknown += item["request_id"] not in self.served
                self.labels.append((item["request_id"], int(item["label"]), now))
        return {"accepted": len(payload["labels"]) - unknown, "unknown": unknown}


@contextmanager
def _serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 (a free port) in a thread; stop it on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "test server stopped while starting"
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def champion(registered):
    return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")


def test_traffic_replays_and_posts_labels_after_the_delay(champion):
    endpoint = _Endpoint(champion)
    out = io.StringIO()
    delay = 1.0
    with _serving(endpoint.app) as url:
        stats = traffic.run_traffic(url + "/invocations", rate=80, duration_s=2.5,
                                    label_delay_s=delay, clients=4, seed=5, label_batch=40,
                                    progress=out, progress_interval_s=0.5)
    assert stats.sent == 200 == stats.ok == len(endpoint.served)     # 2.5 s at 80/s
    assert stats.errors == stats.missing_request_id == 0
    assert not stats.stopped
    assert stats.achieved_rate == pytest.approx(80, rel=0.25)
    assert stats.feedback_available is True
    assert stats.labels_posted == stats.ok == len(endpoint.labels)
    assert stats.labels_unknown == stats.labels_failed == stats.labels_unposted == 0
    assert stats.label_batches >= 5                              # 200 labels, 40 a batch
    assert {rid for rid, _, _ in endpoint.labels} == set(endpoint.served)
    assert sum(label for _, label, _ in endpoint.labels) == stats.positives
    waits = [t - endpoint.served[rid][0] for rid, _, t in endpoint.labels]
    assert min(waits) >= delay
    assert max(waits) < delay + 2.0
    for _, key, customer in endpoint.served.values():
        assert key == str(customer)                              # sticky-routing header
    assert stats.latency_p50_s is not None
    assert stats.latency_p50_s < 1.0
    assert "labels posted" in out.getvalue()


def test_traffic_without_feedback_endpoint_keeps_going_and_says_so_once(champion):
    endpoint = _Endpoint(champion, feedback=False)
    out = io.StringIO()
    with _serving(endpoint.app) as url:
        stats = traffic.run_traffic(url, rate=60, duration_s=1.5, label_delay_s=0.2,
                                    clients=3, seed=6, label_batch=10, progress=out)
    assert stats.sent == stats.ok == len(endpoint.served) == 90
    assert stats.feedback_available is False
    assert stats.labels_posted == 0
    assert stats.labels_unposted == stats.ok
    assert out.getvalue().count("takes no labels") == 1


def test_traffic_stops_promptly_on_the_stop_event(champion):
    endpoint = _Endpoint(champion)
    stop = threading.Event()
    timer = threading.Timer(0.8, stop.set)
    with _serving(endpoint.app) as url:
        started = time.monotonic()
        timer.start()
        try:
            stats = traffic.run_traffic(url, rate=50, duration_s=60, label_delay_s=30,
                                        clients=2, seed=7, stop_event=stop)
        finally:
            timer.cancel()
        took = time.monotonic() - started
    assert took < 5
    assert stats.stopped
    assert 0 < stats.sent < 200
    assert stats.ok == len(endpoint.served)
    assert stats.labels_posted == 0                                  # none were due
    assert stats.labels_unposted == stats.ok


def test_traffic_cli_stops_cleanly_on_ctrl_c(champion):
    endpoint = _Endpoint(champion)
    with _serving(endpoint.app) as url:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE / "traffic.py"), "--url", url, "--rate", "40",
             "--duration", "60", "--label-delay", "0.2", "--clients", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 30
            while len(endpoint.served) < 20:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "[stopped]" in out
    assert "stopping" in err
    served = len(endpoint.served)
    assert f"{served:,} ok" in out
    assert 0 < len(endpoint.labels) <= served


def test_traffic_refuses_other_hosts_and_bad_arguments(capsys):
    with pytest.raises(traffic.TrafficError, match="this machine"):
        traffic.run_traffic("http://192.0.2.1:5000", rate=10, duration_s=1, label_delay_s=0)
    with pytest.raises(traffic.TrafficError, match="rate"):
        traffic.run_traffic("http://127.0.0.1:5000", rate=0, duration_s=1, label_delay_s=0)
    assert traffic.base_url("http://localhost:5000/invocations") == "http://localhost:5000"
    assert traffic.base_url("http://[::1]:8080/") == "http://[::1]:8080"
    assert traffic.main(["--url", "http://example.com:5000", "--duration", "1"]) == 2
    assert "this machine" in capsys.readouterr().err
