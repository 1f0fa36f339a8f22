"""The embedded controller's ``/metrics``: the decision series the Seldon controller exports.

The controller process of an embedded rollout serves
:class:`~mlflow_kpigate.rollout.exposition.DecisionMetrics` (``kpigate_rollout_*``,
``kpigate_kpi_*``, ``kpigate_decisions_total``, …) with ``namespace="local"`` on every
series (:mod:`mlflow_kpigate.metrics.constant_labels`), so the Grafana dashboard and the
alert rules in ``examples/`` show local rollouts beside cluster ones.

Where: ``-C metrics_host`` (default 127.0.0.1) and ``-C metrics_port``. The default port 0
takes a free port at each start of the controller: two rollouts (or the old and the new
rollout of one name during an ``update``) never clash, and the address it got is written to
``metrics.json`` in the rollout's directory, which ``mlflow deployments get`` shows as
``metrics_endpoint`` (give a fixed port for a static Prometheus scrape config). A
fixed port that is taken (by the rollout this one replaces, until it stops) is retried
in the background; the controller evaluates meanwhile: its metrics never hold up a
decision. ``metrics.json`` is removed when the controller stops serving.

Each scrape first reads the saved state, so what an operator changed between evaluations
(a pause, ``kpigate promote``) shows at once; the KPI series follow the evaluations.

After the rollout ends the controller keeps serving for ``KPIGATE_METRICS_LINGER`` seconds
(90, as the Seldon controller does) so a Prometheus scrape sees the final phase the alert
rules look for, unless it is stopped first.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.atomic_files import write_text_atomic
from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy.local_layout import METRICS_FILE
from mlflow_kpigate.metrics.constant_labels import LOCAL_LABELS, with_labels
from mlflow_kpigate.rollout.exposition import DecisionMetrics

__all__ = ["LocalMetrics", "linger_s"]

log = logging.getLogger("kpigate.controller")

RETRY_S = 2.0
DEFAULT_LINGER_S = 90.0


def linger_s() -> float:
    """``KPIGATE_METRICS_LINGER`` (seconds to keep serving after the end; default 90)."""
    try:
        return max(0.0, float(os.environ.get("KPIGATE_METRICS_LINGER", DEFAULT_LINGER_S)))
    except ValueError:
        return DEFAULT_LINGER_S  # a bad value must not stop a controller: the default


class LocalMetrics:
    """One controller's decision metrics and the HTTP server that exposes them."""

    def __init__(self, directory: Path, state: RolloutState) -> None:
        self.directory = directory
        self.host = state.metrics_host
        self.port = state.metrics_port
        # The embedded router applies weights at once: no readiness wait to export.
        self.decisions = DecisionMetrics(state.name, readiness=False)
        self.store = RolloutStore(directory)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Refreshed(self))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.decisions.observe(state, None)

    def observe(self, state: RolloutState, decision: Any) -> None:
        """The controller's observer: every saved state and its decision."""
        self.decisions.observe(state, decision)

    def refresh(self) -> None:
        """The state-driven series from the saved state (a scrape's first step)."""
        try:
            state = self.store.load()
        except (KpigateError, OSError, sqlite3.Error) as exc:
            # The last values stand; the next scrape tries again.
            log.warning("metrics: cannot read the state: %s", exc)
            return
        if state is not None:
            self.decisions.observe(state, None)

    def start(self) -> None:
        """Serve now, or (a fixed port that is taken) keep trying in the background."""
        if not self._bind():
            threading.Thread(target=self._retry, name="kpigate-metrics-bind",
                             daemon=True).start()

    def _bind(self) -> bool:
        try:
            server, thread = start_http_server(self.port, addr=self.host,
                                               registry=self.registry)
        except OSError as exc:
            log.warning("metrics: cannot listen on %s:%s (%s); trying again every %gs",
                        self.host, self.port, exc.strerror or exc, RETRY_S)
            return False
        with self._lock:
            if self._stopped.is_set():  # stopped while binding: do not leave it serving
                server.shutdown()
                server.server_close()
                return True
            self._server, self._thread = server, thread
        port = server.server_address[1]
        write_text_atomic(self.directory / METRICS_FILE, json.dumps(
            {"host": self.host, "port": port, "pid": os.getpid()}))
        log.info("metrics: serving http://%s:%s/metrics", self.host, port)
        return True

    def _retry(self) -> None:
        while not self._stopped.wait(RETRY_S):
            if self._bind():
                return

    def stop(self) -> None:
        """Stop serving and remove ``metrics.json`` (if it is still this process's)."""
        with self._lock:
            self._stopped.set()
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        path = self.directory / METRICS_FILE
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


class _Refreshed(Collector):
    """The decision series with ``namespace="local"``, refreshed from the state per scrape."""

    def __init__(self, metrics: LocalMetrics) -> None:
        self.metrics = metrics
        self.view = with_labels(metrics.decisions.registry, LOCAL_LABELS)

    def collect(self) -> Iterable[Metric]:
        self.metrics.refresh()
        yield from self.view.collect()
