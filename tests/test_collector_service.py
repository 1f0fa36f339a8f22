"""The in-cluster collector service over real HTTP.

The service runs under uvicorn on 127.0.0.1 (a thread, or the ``kpigate collector``
command in a subprocess) on a fresh data directory and is stopped by every test. Events
are built the way Seldon Core v1's executor sends them (``_collector_fixtures``), every
post carries its scope's token, and ``/metrics`` is read back with prometheus_client's own
text parser. Authentication itself is tested in ``test_collector_auth.py``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from _collector_fixtures import (
    COLUMNS,
    DEPLOYMENT,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    SPEC,
    Event,
    auth,
    feedback,
    make_config,
    pair,
    post,
    scrape,
    seldon_event,
    seldon_request,
    seldon_response,
    series,
    serving,
    stage_notice,
    status,
    stored_rows,
    value,
    write_token_files,
)
from _router_fixtures import free_port, wait_until_healthy
from click.testing import CliRunner

from mlflow_kpigate.cli.collector import collector_command
from mlflow_kpigate.core.records import Prediction
from mlflow_kpigate.metrics.collector import Collector
from mlflow_kpigate.metrics.exposition import LATENCY_BUCKETS, SCORE_BUCKETS
from mlflow_kpigate.metrics.service_exposition import stage_families


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    with serving(make_config(tmp_path / "collector")) as running_service:
        yield running_service



# -- joining -----------------------------------------------------------------------------------


def test_request_and_response_join_in_either_order(service: tuple[str, Any], tmp_path: Path):
    url, _ = service
    req, resp = pair("puid-a", "baseline", [[120.5, 3, "eu", "c1"]], [0.8])
    first = post(url, req)
    assert first.status_code == 200, first.text
    assert first.json()["outcome"] == "accepted"
    assert first.json()["joined"] is False
    assert status(url)["pending"] == {"request": 1, "response": 0}
    second = post(url, resp)
    assert second.json()["joined"] is True
    assert second.json()["predictions"] == 1

    req, resp = pair("puid-b", "candidate", [[15.0, 1, "us", "c2"]], [0.1])
    assert post(url, resp).json()["joined"] is False  # the response came first
    assert post(url, req).json()["joined"] is True

    st = status(url)
    assert st["pending"] == {"request": 0, "response": 0}
    assert st["collector"]["predictions"] == 2
    rows = stored_rows(tmp_path / "collector")
    assert rows == [
        ("puid-a", 0, "1", 0, 0, 0, 0.8, 1, -1),  # latency unknown: bucket -1
        ("puid-b", 1, "2", 0, 0, 0, pytest.approx(0.1), 0, -1),
    ]
    metrics = scrape(url)
    for role in ("baseline", "candidate"):
        assert value(metrics, "kpigate_stage_requests_total", deployment=DEPLOYMENT,
                     stage="0", role=role) == 1
        assert value(metrics, "kpigate_stage_errors_total", deployment=DEPLOYMENT,
                     stage="0", role=role) == 0
    # The logger carries no latency, so no latency histogram is made up.
    assert not series(metrics, "kpigate_stage_latency_seconds_count")
    assert value(metrics, "kpigate_cloudevents_total", deployment=DEPLOYMENT,
                 type="request", outcome="accepted") == 2
    assert value(metrics, "kpigate_cloudevents_total", deployment=DEPLOYMENT,
                 type="response", outcome="accepted") == 2


def test_duplicate_deliveries_are_idempotent(service: tuple[str, Any]):
    url, _ = service
    req, resp = pair("puid-d", "baseline", [[10.0, 1, "eu", "c3"]], [0.7])
    assert post(url, req).json()["outcome"] == "accepted"
    assert post(url, req).json()["outcome"] == "duplicate"  # a retried delivery: same Ce-Id
    assert post(url, resp).json()["joined"] is True
    assert post(url, resp).json()["outcome"] == "duplicate"
    assert post(url, req).json()["outcome"] == "duplicate"
    # The same request id logged again under a new Ce-Id while one waits is not paired twice.
    again = seldon_event("request", "puid-e", "baseline", seldon_request([[1.0, 1, "eu", "x"]]))
    other = seldon_event("request", "puid-e", "baseline", seldon_request([[2.0, 1, "eu", "x"]]))
    assert post(url, again).json()["outcome"] == "accepted"
    assert post(url, other).json()["outcome"] == "duplicate"
    st = status(url)
    assert st["collector"]["predictions"] == 1
    assert st["events"]["request"] == {"accepted": 2, "rejected": 0, "duplicate": 3}
    assert st["events"]["response"] == {"accepted": 1, "rejected": 0, "duplicate": 1}


def test_structured_mode_and_bare_path(service: tuple[str, Any]):
    url, _ = service
    envelope = {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": "http://executor",
        "type": REQUEST_TYPE, "requestid": "puid-s", "modelid": "classifier",
        "inferenceservicename": DEPLOYMENT, "namespace": "models", "endpoint": "candidate",
        "datacontenttype": "application/json",
        "data": seldon_request([[99.0, 2, "apac", "c9"]]),
    }
    answer = dict(envelope, id=str(uuid.uuid4()), type=RESPONSE_TYPE)
    del answer["data"]
    answer["data_base64"] = base64.b64encode(
        json.dumps(seldon_response([0.95])).encode()).decode()
    structured = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    structured.update(auth("ingest"))
    first = requests.post(f"{url}/", data=json.dumps(envelope), headers=structured, timeout=30)
    assert first.status_code == 200, first.text
    second = requests.post(f"{url}/", data=json.dumps(answer), headers=structured, timeout=30)
    assert second.json()["joined"] is True
    metrics = scrape(url)
    assert value(metrics, "kpigate_stage_requests_total", deployment=DEPLOYMENT, stage="0",
                 role="candidate") == 1


def _malformed() -> list[tuple[str, Event, str]]:
    good_req = seldon_event("request", "puid-x", "baseline",
                            seldon_request([[1.0, 1, "eu", "c"]]))

    def edit(event: Event, drop: str | None = None, body: bytes | None = None,
             **headers: str) -> Event:
        h = {k: v for k, v in event.headers.items() if k != drop}
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        return Event(h, event.body if body is None else body)

    return [
        ("no type", edit(good_req, drop="Ce-Type"), "type: missing"),
        ("unknown type", edit(good_req, Ce_Type="com.example.other"), "unknown event type"),
        ("feedback", edit(good_req, Ce_Type="io.seldon.serving.feedback"), "/feedback"),
        ("no request id", edit(good_req, drop="Ce-Requestid"), "requestid: missing"),
        ("no id", edit(good_req, drop="Ce-Id"), "id: missing"),
        ("spec version", edit(good_req, Ce_Specversion="2.0"), "specversion"),
        ("not JSON", edit(good_req, body=b"{not json"), "not valid JSON"),
        ("not an object", edit(good_req, body=b"[1, 2]"), "must be a JSON object"),
        ("protobuf", edit(good_req, Content_Type="application/x-protobuf"), "protobuf"),
        ("other predictor", edit(good_req, Ce_Endpoint="canary"), "neither 'baseline'"),
        ("no predictor", edit(good_req, drop="Ce-Endpoint"), "endpoint: missing"),
        ("other deployment", edit(good_req, Ce_Inferenceservicename="payments"),
         "this collector serves 'fraud'"),
        ("ragged rows", edit(good_req, body=json.dumps(
            {"data": {"ndarray": [[1, 2], [3]]}}).encode()), "different lengths"),
        ("names mismatch", edit(good_req, body=json.dumps(
            {"data": {"names": ["a"], "ndarray": [[1, 2]]}}).encode()), "1 names for rows"),
        ("no rows", edit(good_req, body=b'{"meta": {}}'), "request payload"),
        ("bad tensor", edit(good_req, body=json.dumps(
            {"data": {"tensor": {"shape": [2, 2], "values": [1, 2, 3]}}}).encode()),
         "does not hold 3 values"),
        ("response without output", seldon_event("response", "puid-x", "baseline",
                                                 {"meta": {}}), "needs 'data'"),
        ("no CloudEvent", Event({"Content-Type": "application/json"}, b"{}"),
         "not a CloudEvent"),
    ]


def test_malformed_events_get_a_400_and_nothing_is_recorded(service: tuple[str, Any]):
    url, _ = service
    cases = _malformed()
    for name, event, reason in cases:
        response = post(url, event)
        assert response.status_code == 400, name
        message = response.json()["error"]
        assert reason in message, (name, message)
        assert "\n" not in message, name
    st = status(url)
    assert st["collector"]["predictions"] == 0
    assert st["pending"] == {"request": 0, "response": 0}
    rejected = sum(v.get("rejected", 0) for v in st["events"].values())
    assert rejected == len(cases)
    metrics = scrape(url)
    total = sum(series(metrics, "kpigate_cloudevents_total", outcome="rejected").values())
    assert total == len(cases)
    assert not series(metrics, "kpigate_stage_requests_total")


# -- labels and the exported KPI series ---------------------------------------------------------


def _scenario(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({
            "puid": f"tx-{seed}-{i}",
            "role": "baseline" if i % 3 else "candidate",
            "row": [round(rng.uniform(1, 500), 2), rng.randint(0, 6),
                    rng.choice(["eu", "us", "apac"]), f"c{i}"],
            # Mid-bin scores: none sits on a bucket bound, so the expected counts are exact.
            "score": (rng.randrange(1000) + 0.5) / 1000,
            "label": rng.randint(0, 1),
            "loss": round(rng.uniform(0, 50), 2),
        })
    return out


def _cell(label: int, predicted: int) -> str:
    return {(1, 1): "tp", (0, 1): "fp", (0, 0): "tn", (1, 0): "fn"}[(label, predicted)]


def test_labels_and_metrics_equal_what_was_sent(service: tuple[str, Any]):
    url, _ = service
    assert stage_notice(url, 1, revision=3).json()["ignored"] is False
    rows = _scenario(seed=7, n=90)
    for r in rows:
        req, resp = pair(r["puid"], r["role"], [r["row"]], [r["score"]])
        assert post(url, req).status_code == 200
        assert post(url, resp).json()["joined"] is True
    # Labels in one batch; "amount" comes from the request's column, "loss" with the label.
    labelled = rows[:75]
    body = {"labels": [{"request_id": r["puid"], "label": r["label"],
                        "values": {"loss": r["loss"]}} for r in labelled]}
    reply = feedback(url, body, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"matched": 75, "unknown": [], "duplicates": 0}
    again = feedback(url, {"request_id": rows[0]["puid"], "label": 1,
                                                   "values": {"loss": 1.0}}, timeout=30)
    assert again.json()["duplicates"] == 1
    unknown = feedback(url, {"request_id": "nope", "label": 1,
                                                     "values": {"loss": 1.0, "amount": 2.0}},
                            timeout=30)
    assert unknown.json()["unknown"] == ["nope"]

    metrics = scrape(url)
    key = {"deployment": DEPLOYMENT, "stage": "1"}
    for role in ("baseline", "candidate"):
        mine = [r for r in rows if r["role"] == role]
        mine_labelled = [r for r in labelled if r["role"] == role]
        assert value(metrics, "kpigate_stage_requests_total", **key, role=role) == len(mine)
        cells = Counter(_cell(r["label"], int(r["score"] >= 0.5)) for r in mine_labelled)
        for outcome in ("tp", "fp", "tn", "fn"):
            assert value(metrics, "kpigate_stage_labelled_total", **key, role=role,
                         outcome=outcome) == cells[outcome], (role, outcome)
        for region in ("eu", "us", "apac"):
            seg = Counter(_cell(r["label"], int(r["score"] >= 0.5))
                          for r in mine_labelled if r["row"][2] == region)
            for outcome in ("tp", "fp", "tn", "fn"):
                got = value(metrics, "kpigate_stage_segment_labelled_total", **key, role=role,
                            field="region", value=region, outcome=outcome)
                assert (got or 0) == seg[outcome], (role, region, outcome)
        for label in ("0", "1"):
            scores = [r["score"] for r in mine_labelled if str(r["label"]) == label]
            buckets = series(metrics, "kpigate_stage_score_bucket", **key, role=role,
                             label=label)
            assert len(buckets) == len(SCORE_BUCKETS) + 1
            by_le = {dict(k)["le"]: v for k, v in buckets.items()}
            assert by_le["+Inf"] == len(scores)
            previous = 0.0
            for bound in SCORE_BUCKETS:
                count = by_le[repr(bound)]
                assert count == sum(s <= bound for s in scores), (role, label, bound)
                assert count >= previous
                previous = count
        amount = np.array([r["row"][0] for r in mine_labelled])
        loss = np.array([r["loss"] for r in mine_labelled])
        assert value(metrics, "kpigate_stage_value_count", **key, role=role) == len(amount)
        assert value(metrics, "kpigate_stage_value_sum", **key, role=role,
                     name="amount") == pytest.approx(amount.sum(), rel=1e-9)
        assert value(metrics, "kpigate_stage_value_sum", **key, role=role,
                     name="loss") == pytest.approx(loss.sum(), rel=1e-9)
        for a, b, expected in (("amount", "amount", amount @ amount),
                               ("amount", "loss", amount @ loss),
                               ("loss", "loss", loss @ loss)):
            assert value(metrics, "kpigate_stage_value_product_sum", **key, role=role,
                         name_a=a, name_b=b) == pytest.approx(expected, rel=1e-9)
        assert value(metrics, "kpigate_stage_value_product_sum", **key, role=role,
                     name_a="loss", name_b="amount") is None  # only name_a <= name_b
    assert value(metrics, "kpigate_labels_total", deployment=DEPLOYMENT, status="matched") == 75
    assert value(metrics, "kpigate_labels_total", deployment=DEPLOYMENT,
                 status="duplicate") == 1
    assert value(metrics, "kpigate_labels_total", deployment=DEPLOYMENT, status="unknown") == 1
    assert value(metrics, "kpigate_collector_stage", deployment=DEPLOYMENT) == 1


def test_labels_need_business_values_from_the_label_or_the_request(service: tuple[str, Any]):
    url, _ = service
    # A request without the "amount" column: the label must bring it.
    event = seldon_event("request", "puid-v", "baseline",
                         {"data": {"names": ["velocity", "region"], "ndarray": [[1, "eu"]]}})
    assert post(url, event).status_code == 200
    assert post(url, seldon_event("response", "puid-v", "baseline",
                                  seldon_response([0.9]))).json()["joined"] is True
    missing = feedback(url, {"request_id": "puid-v", "label": 1,
                                                     "values": {"loss": 3.0}}, timeout=30)
    assert missing.status_code == 400
    assert missing.json()["error"].startswith("values.amount: missing")
    ok = feedback(url, {"request_id": "puid-v", "label": 1,
                                                "values": {"loss": 3.0, "amount": 7.5}},
                       timeout=30)
    assert ok.json()["matched"] == 1
    bad = feedback(url, {"request_id": "puid-v", "label": 2},
                        timeout=30)
    assert bad.status_code == 400
    assert "label: must be 0 or 1" in bad.json()["error"]


def test_latency_histogram_rebinned_into_the_contract_buckets(tmp_path: Path):
    # Rows with a known latency (the embedded path) are exported as a cumulative
    # histogram over LATENCY_BUCKETS; rows without one only count as requests.
    # Between two bounds (1.1 x the lower of ratio-1.25 neighbours), below the first
    # and above the last.
    latencies = [LATENCY_BUCKETS[i] * 1.1 for i in (0, 5, 17, 17, 30, 44, 48)] + [0.0005, 75.0]
    for x in latencies:
        # More than one collector bucket (2 %) from every bound, so re-binning is exact.
        assert min(abs(x / b - 1) for b in LATENCY_BUCKETS) > 0.03
    with Collector(tmp_path / "p.db", SPEC) as collector:
        rows = [Prediction(f"r{i}", 1.0, "baseline", "1", 0, False, x, False, 0.5, 1)
                for i, x in enumerate(latencies)]
        rows.append(Prediction("u", 1.0, "baseline", "1", 0, False, None, True, None, None))
        collector.log(rows)
        samples = collector.stage_samples(now=2.0, maturity_s=0.0)
    agg = samples[0].baseline
    assert (agg.requests, agg.errors, agg.latency.n) == (10, 1, 9)
    families = {f.name: f for f in stage_families(DEPLOYMENT, samples)}
    hist = {s.labels["le"]: s.value for s in families["kpigate_stage_latency_seconds"].samples
            if s.name.endswith("_bucket") and s.labels["role"] == "baseline"}
    assert hist["+Inf"] == 9
    for bound in LATENCY_BUCKETS:
        assert hist[repr(bound)] == sum(x <= bound for x in latencies), bound
    total = [s.value for s in families["kpigate_stage_latency_seconds"].samples
             if s.name.endswith("_sum") and s.labels["role"] == "baseline"]
    assert total == [pytest.approx(sum(latencies))]


# -- stage notices, expiry, restarts ---------------------------------------------------------


def test_stage_notices_are_revision_guarded_and_survive_a_restart(tmp_path: Path):
    config = make_config(tmp_path / "collector")
    with serving(config) as (url, _):
        assert stage_notice(url, 0, revision=1, shadow=True, percent=0).json()["ignored"] is False
        shadow_req, shadow_resp = pair("s-1", "candidate", [[5.0, 1, "eu", "c"]], [0.6])
        post(url, shadow_req)
        post(url, shadow_resp)
        assert stage_notice(url, 2, revision=5, percent=25).json()["ignored"] is False
        assert stage_notice(url, 2, revision=5, percent=25).json()["ignored"] is False
        stale = stage_notice(url, 1, revision=4, percent=5)
        assert stale.status_code == 200
        assert stale.json()["ignored"] is True
        assert stale.json()["current"]["stage_index"] == 2
        # One half arrives before the restart, its partner after it.
        req, resp = pair("r-1", "candidate", [[5.0, 1, "us", "c"]], [0.3])
        assert post(url, req).json()["stage_index"] == 2
        assert status(url)["pending"]["request"] == 1
    with serving(config) as (url, _):
        st = status(url)
        assert st["stage"]["stage_index"] == 2
        assert st["stage"]["revision"] == 5
        assert st["pending"]["request"] == 1
        assert post(url, resp).json()["joined"] is True
        assert stage_notice(url, 1, revision=4).json()["ignored"] is True
        metrics = scrape(url)
        assert value(metrics, "kpigate_collector_stage", deployment=DEPLOYMENT) == 2
        assert value(metrics, "kpigate_stage_requests_total", deployment=DEPLOYMENT,
                     stage="2", role="candidate") == 1
    rows = stored_rows(tmp_path / "collector")
    assert [(r[0], r[3], r[4]) for r in rows] == [("r-1", 2, 0), ("s-1", 0, 1)]


@pytest.mark.parametrize(("body", "reason"), [
    ({"deployment": DEPLOYMENT, "stage_index": 1, "shadow": False, "candidate_percent": 5},
     "revision: missing"),
    ({"deployment": "payments", "stage_index": 1, "shadow": False, "candidate_percent": 5,
      "revision": 1}, "this collector serves 'fraud'"),
    ({"deployment": DEPLOYMENT, "stage_index": -1, "shadow": False, "candidate_percent": 5,
      "revision": 1}, "stage_index: must be an integer >= 0"),
    ({"deployment": DEPLOYMENT, "stage_index": 1, "shadow": "no", "candidate_percent": 5,
      "revision": 1}, "shadow: must be true or false"),
    ({"deployment": DEPLOYMENT, "stage_index": 1, "shadow": False, "candidate_percent": 150,
      "revision": 1}, "candidate_percent: must be a number from 0 to 100"),
    ({"deployment": DEPLOYMENT, "stage_index": 1, "shadow": False, "candidate_percent": 5,
      "revision": 1, "weight": 3}, "weight: unknown field"),
])
def test_bad_stage_notices_are_refused(service: tuple[str, Any], body: dict[str, Any],
                                       reason: str):
    url, _ = service
    response = requests.post(f"{url}/admin/stage", json=body, headers=auth("operator"),
                             timeout=30)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert status(url)["stage"]["revision"] == -1  # nothing stored


def test_unmatched_halves_expire_and_late_partners_are_dropped(tmp_path: Path):
    config = make_config(tmp_path / "collector", pending_ttl_s=60.0)
    with serving(config) as (url, service):
        lonely_req, late_resp = pair("x-1", "baseline", [[5.0, 1, "eu", "c"]], [0.9])
        early_resp = seldon_event("response", "x-2", "candidate", seldon_response([0.7]))
        post(url, lonely_req)
        post(url, early_resp)
        assert service.sweep(now=time.time()) == {"request": 0, "response": 0}
        assert service.sweep(now=time.time() + 61) == {"request": 1, "response": 1}
        assert status(url)["pending"] == {"request": 0, "response": 0}
        late = post(url, late_resp)
        assert late.status_code == 200
        assert late.json().get("joined") is None
        metrics = scrape(url)
        assert value(metrics, "kpigate_cloudevents_expired_total", deployment=DEPLOYMENT,
                     type="request") == 1
        assert value(metrics, "kpigate_cloudevents_late_total", deployment=DEPLOYMENT,
                     type="response") == 1
        # The unanswered request is a failed prediction; the lone response still counts.
        assert value(metrics, "kpigate_stage_errors_total", deployment=DEPLOYMENT,
                     stage="0", role="baseline") == 1
        assert value(metrics, "kpigate_stage_requests_total", deployment=DEPLOYMENT,
                     stage="0", role="candidate") == 1
    rows = stored_rows(tmp_path / "collector")
    assert [(r[0], r[5], r[6]) for r in rows] == [("x-1", 1, None), ("x-2", 0, 0.7)]


def test_unanswered_requests_can_be_dropped(tmp_path: Path):
    with serving(make_config(tmp_path / "c", pending_ttl_s=60.0, unanswered="drop")) as (
            url, service):
        post(url, seldon_event("request", "d-1", "baseline",
                               seldon_request([[1.0, 1, "eu", "c"]])))
        assert service.sweep(now=time.time() + 61)["request"] == 1
        assert status(url)["collector"]["predictions"] == 0


# -- other payload formats ---------------------------------------------------------------------


def test_v2_protocol_tensors_batches_and_failures(service: tuple[str, Any], tmp_path: Path):
    url, _ = service
    v2_request = {"inputs": [
        {"name": "amount", "shape": [2, 1], "datatype": "FP64", "data": [10.0, 20.0]},
        {"name": "region", "shape": [2], "datatype": "BYTES", "data": ["eu", "us"]},
    ]}
    v2_response = {"model_name": "classifier", "outputs": [
        {"name": "predict", "shape": [2], "datatype": "INT64", "data": [1, 0]},
        {"name": "predict_proba", "shape": [2, 2], "datatype": "FP64",
         "data": [[0.2, 0.8], [0.9, 0.1]]},
    ]}
    assert post(url, seldon_event("request", "v2-1", "baseline", v2_request,
                                  protocol="v2")).status_code == 200
    assert post(url, seldon_event("response", "v2-1", "baseline", v2_response,
                                  protocol="v2")).json()["predictions"] == 2
    tensor_request = {"data": {"names": COLUMNS[:2],
                               "tensor": {"shape": [1, 2], "values": [5.0, 1.0]}}}
    tensor_response = {"data": {"names": ["proba"], "tensor": {"shape": [1], "values": [0.4]}}}
    post(url, seldon_event("request", "t-1", "candidate", tensor_request))
    assert post(url, seldon_event("response", "t-1", "candidate",
                                  tensor_response)).json()["joined"] is True
    failed = {"status": {"code": -1, "info": "model raised ValueError", "status": "FAILURE"}}
    post(url, seldon_event("request", "f-1", "candidate", seldon_request([[1, 1, "eu", "c"]])))
    post(url, seldon_event("response", "f-1", "candidate", failed))
    rows = stored_rows(tmp_path / "collector")
    assert [(r[0], r[1], r[5], r[6], r[7]) for r in rows] == [
        ("f-1", 1, 1, None, None),
        ("t-1", 1, 0, pytest.approx(0.4), 0),
        ("v2-1/0", 0, 0, pytest.approx(0.8), 1),
        ("v2-1/1", 0, 0, pytest.approx(0.1), 0),
    ]
    # Per-row ids of a batch take labels separately.
    reply = feedback(url, {"labels": [
        {"request_id": "v2-1/1", "label": 0, "values": {"loss": 0.0}}]}, timeout=30)
    assert reply.json()["matched"] == 1
    with sqlite3.connect(tmp_path / "collector" / "predictions.db") as conn:
        segments = dict(conn.execute(
            "SELECT request_id, s0 FROM predictions WHERE request_id LIKE 'v2-1/%'"))
    assert segments == {"v2-1/0": "eu", "v2-1/1": "us"}


# -- concurrency, health -----------------------------------------------------------------------


def test_200_concurrent_events_are_all_accounted_for(service: tuple[str, Any]):
    url, _ = service
    events = []
    for i in range(100):
        events.extend(pair(f"c-{i}", "baseline" if i % 2 else "candidate",
                           [[float(i), 1, "eu", f"c{i}"]], [0.25 + (i % 50) / 100]))
    random.Random(3).shuffle(events)
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda e: post(url, e), events))
    assert [r.status_code for r in replies] == [200] * 200
    assert sum(r.json().get("joined") is True for r in replies) == 100
    st = status(url)
    assert st["pending"] == {"request": 0, "response": 0}
    assert st["collector"]["predictions"] == 100
    assert st["events"]["request"]["accepted"] == 100
    assert st["events"]["response"]["accepted"] == 100
    metrics = scrape(url)
    assert sum(series(metrics, "kpigate_stage_requests_total").values()) == 100


def test_health_turns_503_when_the_store_cannot_write(service: tuple[str, Any]):
    url, svc = service
    assert requests.get(f"{url}/health", timeout=30).status_code == 200
    svc.collector.close()  # the store is gone: no write can succeed any more
    response = requests.get(f"{url}/health", timeout=30)
    assert response.status_code == 503
    assert "cannot write" in response.json()["problems"][0]
    event = seldon_event("request", "h-1", "baseline", seldon_request([[1, 1, "eu", "c"]]))
    assert post(url, event).status_code == 503


def test_oversized_bodies_are_refused(tmp_path: Path):
    with serving(make_config(tmp_path / "c", max_body_bytes=1000)) as (url, _):
        event = seldon_event("request", "big", "baseline",
                             seldon_request([[1.0, 1, "eu", "x" * 2000]]))
        response = post(url, event)
        assert response.status_code == 413
        assert "larger than 1000 bytes" in response.json()["error"]


# -- the command -------------------------------------------------------------------------------

POLICY = """
stages: shadow,5,100
evaluation: {maturity: 30m}
kpis:
  - {name: recall, kind: proportion, metric: recall, margin: 0.02}
  - {name: fairness, kind: fairness, metric: false_positive_rate, segment_by: region,
     margin: 25%}
  - {name: loss_per_tx, kind: business, numerator: loss, denominator: count,
     direction: lower, margin: 5%}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--threshold", "1.5"], "--threshold: must be in (0, 1]"),
    (["--maturity", "soon"], "--maturity: 'soon' is not a duration"),
    (["--pending-ttl", "0s"], "--pending-ttl: must be a number > 0"),
    (["--deployment", "Fraud_Model"], "--deployment: 'Fraud_Model' is not a DNS-1123 label"),
    (["--policy", "missing.yaml"], "missing.yaml: file not found"),
])
def test_bad_options_exit_2_with_one_line(policy_file: Path, tmp_path: Path,
                                          args: list[str], message: str):
    base = {"--deployment": DEPLOYMENT, "--policy": str(policy_file),
            "--data-dir": str(tmp_path / "data")}
    for option, given in zip(args[::2], args[1::2], strict=True):
        base[option] = given
    argv = [item for pair_ in base.items() for item in pair_]
    argv += write_token_files(tmp_path / "tokens")
    result = CliRunner().invoke(collector_command, argv)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]


def test_the_collector_command_serves_until_sigterm(policy_file: Path, tmp_path: Path):
    port = free_port()
    data = tmp_path / "data"
    code = "from mlflow_kpigate.cli.collector import collector_command; collector_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--deployment", DEPLOYMENT, "--policy", str(policy_file),
         "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port),
         "--maturity", "0s", "--candidate-version", "7",
         *write_token_files(tmp_path / "tokens")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process=process)
        req, resp = pair("cli-1", "candidate", [[3.0, 1, "eu", "c"]], [0.8])
        post(url, req)
        assert post(url, resp).json()["joined"] is True
        reply = feedback(url, {"request_id": "cli-1", "label": 1,
                                                       "values": {"loss": 0.0}}, timeout=30)
        assert reply.json()["matched"] == 1
        metrics = scrape(url)
        assert value(metrics, "kpigate_stage_labelled_total", deployment=DEPLOYMENT,
                     stage="0", role="candidate", outcome="tp") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
    rows = stored_rows(data)
    assert [(r[0], r[2]) for r in rows] == [("cli-1", "7")]
    assert not math.isnan(rows[0][6])


def test_the_command_offers_exactly_the_services_unanswered_choices():
    from mlflow_kpigate.cli import collector as command
    from mlflow_kpigate.metrics import service_config

    assert command.UNANSWERED == service_config.UNANSWERED
