"""The in-cluster collector service under test: events as Seldon sends them, a service
running on 127.0.0.1 with one token per scope, and readers of what it exports.

Events are built the way Seldon Core v1's executor sends them (binary-mode CloudEvents with
the ``Ce-*`` attributes of ``executor/logger/worker.go`` and Seldon-protocol bodies);
``/metrics`` is read back with prometheus_client's own text parser. Shared by
``test_collector_service.py`` and ``test_collector_auth.py``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import requests
from _router_fixtures import running
from prometheus_client.parser import text_string_to_metric_families

from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.service_app import create_collector_app
from mlflow_kpigate.metrics.service_auth import CollectorTokens
from mlflow_kpigate.metrics.service_config import CollectorServiceConfig
from mlflow_kpigate.policy import Stage

DEPLOYMENT = "fraud"
COLUMNS = ["amount", "velocity", "region", "customer_id"]
SPEC = AggregateSpec(segment_fields=("region",), value_names=("amount", "loss"))
REQUEST_TYPE = "io.seldon.serving.inference.request"
RESPONSE_TYPE = "io.seldon.serving.inference.response"
#: The policy's stages the test service checks notices against: 0 shadow, 1 at 5 %,
#: 2 at 25 %, 3 the final 100 %.
STAGES = (Stage("shadow", 0.0, shadow=True), Stage("5%", 5.0), Stage("25%", 25.0),
          Stage("full", 100.0))
#: One fresh token per scope for this test run.
TOKENS = {scope: secrets.token_hex(32) for scope in ("ingest", "labels", "operator")}


def auth(scope: str) -> dict[str, str]:
    """The Authorization header with ``scope``'s token."""
    return {"Authorization": f"Bearer {TOKENS[scope]}"}


# -- building events as Seldon sends them ------------------------------------------------


@dataclass(frozen=True)
class Event:
    headers: dict[str, str]
    body: bytes


def seldon_event(kind: str, puid: str, role: str, payload: dict[str, Any], *,
                 ce_id: str | None = None, deployment: str = DEPLOYMENT,
                 protocol: str = "seldon") -> Event:
    """A binary-mode CloudEvent with the attributes Seldon's logger worker sets."""
    headers = {
        "Ce-Id": ce_id or str(uuid.uuid4()),
        "Ce-Specversion": "1.0",
        "Ce-Source": f"http://0.0.0.0:8000/{role}",
        "Ce-Type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "Ce-Time": "2024-05-02T10:15:30.123456789Z",
        "Ce-Modelid": "classifier",
        "Ce-Requestid": puid,
        "Ce-Inferenceservicename": deployment,
        "Ce-Namespace": "models",
        "Ce-Endpoint": role,
        "Ce-Protocol": protocol,
        "Content-Type": "application/json",
    }
    return Event(headers, json.dumps(payload).encode())


def seldon_request(rows: list[list[Any]]) -> dict[str, Any]:
    return {"data": {"names": COLUMNS, "ndarray": rows}, "meta": {}}


def seldon_response(scores: list[float]) -> dict[str, Any]:
    # What an sklearn predict_proba model returns through Seldon's protocol.
    return {"data": {"names": ["t:0", "t:1"], "ndarray": [[1 - s, s] for s in scores]},
            "meta": {"requestPath": {"classifier": "seldonio/mlflowserver:1.17.1"}}}


def pair(puid: str, role: str, rows: list[list[Any]], scores: list[float]
         ) -> tuple[Event, Event]:
    return (seldon_event("request", puid, role, seldon_request(rows)),
            seldon_event("response", puid, role, seldon_response(scores)))


def post(url: str, event: Event, *, token: str | None = None) -> requests.Response:
    """POST ``event`` to /cloudevents with the ingest token (``token``: another one, or ""
    for none)."""
    given = TOKENS["ingest"] if token is None else token
    headers = {**event.headers, **({"Authorization": f"Bearer {given}"} if given else {})}
    return requests.post(f"{url}/cloudevents", data=event.body, headers=headers, timeout=30)


def feedback(url: str, body: Any, *, token: str | None = None, timeout: float = 30
             ) -> requests.Response:
    """POST labels to /feedback with the labels token (``token`` as for :func:`post`)."""
    given = TOKENS["labels"] if token is None else token
    headers = {"Authorization": f"Bearer {given}"} if given else {}
    return requests.post(f"{url}/feedback", json=body, headers=headers, timeout=timeout)


def write_token_files(directory: Path) -> list[str]:
    """``TOKENS`` as one file per scope in ``directory`` (mode 0600, as a mounted Secret
    would be readable only by its pod), and the ``--token-file`` options naming them."""
    directory.mkdir(parents=True, exist_ok=True)
    options = []
    for scope, token in TOKENS.items():
        path = directory / scope
        path.write_text(token + "\n", encoding="ascii")
        path.chmod(0o600)
        options += ["--token-file", f"{scope}={path}"]
    return options


# -- the service ---------------------------------------------------------------------------


def make_config(data_dir: Path, **overrides: Any) -> CollectorServiceConfig:
    # A large sweep interval: tests expire halves explicitly with service.sweep(now).
    base = CollectorServiceConfig(deployment=DEPLOYMENT, data_dir=data_dir, spec=SPEC,
                                  maturity_s=0.0, metrics_cache_s=0.0,
                                  sweep_interval_s=3600.0, versions={"baseline": "1",
                                                                     "candidate": "2"},
                                  stages=STAGES, tokens=CollectorTokens.of(TOKENS))
    return replace(base, **overrides)


@contextmanager
def serving(config: CollectorServiceConfig) -> Iterator[tuple[str, Any]]:
    app = create_collector_app(config)
    with running(app) as url:
        yield url, app.state.service


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = requests.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /,
          **labels: str) -> float | None:
    return metrics.get((metric, frozenset(labels.items())))


def series(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /,
           **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    want = set(labels.items())
    return {key: v for (n, key), v in metrics.items() if n == metric and want <= set(key)}


def status(url: str) -> dict[str, Any]:
    return requests.get(f"{url}/status", timeout=30).json()


def stage_notice(url: str, stage_index: int, revision: int, *, shadow: bool = False,
                 percent: float = 5, token: str | None = None) -> requests.Response:
    """POST a stage notice with the operator token (``token`` as for :func:`post`)."""
    given = TOKENS["operator"] if token is None else token
    headers = {"Authorization": f"Bearer {given}"} if given else {}
    return requests.post(f"{url}/admin/stage", json={
        "deployment": DEPLOYMENT, "stage_index": stage_index, "shadow": shadow,
        "candidate_percent": percent, "revision": revision}, headers=headers, timeout=30)


def stored_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "predictions.db") as conn:
        return conn.execute(
            "SELECT request_id, role, version, stage_index, shadow, error, score, predicted, "
            "latency_bin FROM predictions ORDER BY request_id, role").fetchall()
