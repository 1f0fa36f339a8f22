"""``kpigate feedback``: bad rows are reported one line each, the good ones still sent.

The real CLI in a subprocess, against a deployment directory with a frozen policy that has
a business KPI and a recording ``/feedback`` endpoint on 127.0.0.1 in the router's place.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.state import RolloutState, Weights

POLICY = """\
stages: [20, 100]
kpis:
  - {name: error_rate, kind: proportion, metric: error_rate, margin: 0.05}
  - {name: revenue, kind: business, numerator: amount, denominator: count,
     direction: higher, margin: 5%}
"""


class _Router(BaseHTTPRequestHandler):
    posted: list[list[dict[str, Any]]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posted.append(body["labels"])
        answer = json.dumps({"matched": len(body["labels"]), "unknown": [],
                             "duplicates": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, Any]]:
    posted: list[list[dict[str, Any]]] = []
    handler = type("Router", (_Router,), {"posted": posted})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    directory = tmp_path / "state" / "churn"
    directory.mkdir(parents=True)
    (directory / "policy.yaml").write_text(POLICY)
    RolloutStore(directory).save(RolloutState(
        name="churn", model_name="churn", candidate_version="2", baseline_version="1",
        candidate_uri="models:/churn/2", baseline_uri="models:/churn/1",
        policy_file=str(directory / "policy.yaml"), tracking_uri="sqlite:///x.db",
        port=server.server_port, weights=Weights(20.0)))
    try:
        yield {"root": tmp_path, "state_dir": tmp_path / "state", "posted": posted}
    finally:
        server.shutdown()
        server.server_close()


def feedback(dep: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlflow_kpigate.cli", "feedback", "churn",
                           "--file", str(path), "--state-dir", str(dep["state_dir"])],
                          capture_output=True, text=True, timeout=120)


def test_bad_rows_are_listed_and_the_good_ones_sent(deployment):
    labels = deployment["root"] / "labels.csv"
    labels.write_text("request_id,label,amount\n"
                      "r1,1,12.5\n"
                      "r2,0,\n"          # the business value is missing
                      "r3,maybe,3\n"
                      "r4,1,lots\n"
                      ",1,2\n"
                      "r6,0,7\n")
    r = feedback(deployment, labels)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.splitlines()[0] == "2 labels: 2 matched, 0 unknown request ids, 0 duplicates"
    assert r.stderr.splitlines() == [
        f"{labels}:3: no value for 'amount': the policy's business KPIs need 'amount' with "
        "every label",
        f"{labels}:4: label must be 0 or 1, got 'maybe'",
        f"{labels}:5: column 'amount' must be a number, got 'lots'",
        f"{labels}:6: needs a request_id",
        f"Error: {labels}: 4 of 6 rows not sent (listed above); fix them and send the file "
        "again (labels already recorded count as duplicates)",
    ]
    assert deployment["posted"] == [[
        {"request_id": "r1", "label": 1, "values": {"amount": 12.5}},
        {"request_id": "r6", "label": 0, "values": {"amount": 7.0}},
    ]]


def test_jsonl_rows_are_checked_one_by_one(deployment):
    labels = deployment["root"] / "labels.jsonl"
    labels.write_text('{"request_id": "a", "label": 1, "values": {"amount": 1}}\n'
                      '{"request_id": "b", "label": 1}\n'
                      "not json\n"
                      '{"request_id": "c", "label": 0, "values": {"amount": "high"}}\n')
    r = feedback(deployment, labels)
    assert r.returncode == 2
    assert r.stderr.splitlines()[:3] == [
        f"{labels}:2: no value for 'amount': the policy's business KPIs need 'amount' with "
        "every label",
        f"{labels}:3: not JSON (Expecting value)",
        f"{labels}:4: values.amount must be a finite number, got 'high'",
    ]
    assert deployment["posted"] == [[{"request_id": "a", "label": 1,
                                      "values": {"amount": 1}}]]


def test_a_clean_file_exits_0(deployment):
    labels = deployment["root"] / "labels.csv"
    labels.write_text("request_id,label,amount\nr1,1,12.5\n")
    r = feedback(deployment, labels)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout == "1 labels: 1 matched, 0 unknown request ids, 0 duplicates\n"


def test_a_file_without_the_header_is_rejected_whole(deployment):
    labels = deployment["root"] / "labels.csv"
    labels.write_text("id,y\nr1,1\n")
    r = feedback(deployment, labels)
    assert r.returncode == 2
    assert r.stderr == f"Error: {labels}: the CSV needs a header with request_id and label " \
                       "columns\n"
    assert deployment["posted"] == []
