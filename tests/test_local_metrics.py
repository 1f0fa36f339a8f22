"""The embedded controller's ``/metrics`` (deploy/local_metrics.py) over real HTTP, with the
real SQLite store and controller of tests/_controller_fixtures.py: the address goes to
``metrics.json``, a fixed port that is taken is retried until it is free, every scrape
shows what an operator changed since the last evaluation, and stopping removes the file.
The live controller process is checked by tests/test_supervisor_healing.py
(tests/_local_metrics.py: promtool and the alert rules on its series).
"""

from __future__ import annotations

import socket

import requests
from _controller_fixtures import controller, feed, make_deployment
from processes import wait_for
from prometheus_client.parser import text_string_to_metric_families

from mlflow_kpigate.deploy import local_metrics
from mlflow_kpigate.deploy.local_layout import METRICS_FILE, metrics_endpoint
from mlflow_kpigate.deploy.local_metrics import LocalMetrics


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


MINE = (("deployment", "dep"), ("namespace", "local"))


def test_served_on_a_free_port_refreshed_per_scrape_and_withdrawn_at_stop(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    metrics = LocalMetrics(directory, store.require())
    ctl = controller(directory, clock, observer=metrics.observe)
    metrics.start()
    try:
        url = metrics_endpoint(directory)
        assert url is not None
        assert url.startswith("http://127.0.0.1:")
        feed(directory, policy, 0, n=6000)
        clock.now += 5
        ctl.step()
        got = _samples(url)
        assert got[("kpigate_rollout_stage", MINE)] == 1
        assert got[("kpigate_decisions_total", (("action", "promote"), *MINE))] == 1
        assert got[("kpigate_readiness_waiting_seconds", MINE)] == 0
        # A pause between evaluations shows at the next scrape, not the next evaluation.
        store.save(store.require().evolve(paused=True))
        assert _samples(url)[("kpigate_rollout_paused", MINE)] == 1
    finally:
        metrics.stop()
    assert not (directory / METRICS_FILE).exists()
    assert metrics_endpoint(directory) is None


def test_a_taken_fixed_port_is_retried_until_it_is_free(tmp_path, monkeypatch):
    monkeypatch.setattr(local_metrics, "RETRY_S", 0.1)
    directory, store, _policy, _clock = make_deployment(tmp_path)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    metrics = LocalMetrics(directory, store.require().evolve(metrics_port=port))
    try:
        metrics.start()  # does not raise, does not block: the controller evaluates meanwhile
        assert metrics_endpoint(directory) is None
        holder.close()  # the rollout this one replaces stopped
        url = wait_for(lambda: metrics_endpoint(directory), "the port to be taken over", 30)
        assert url == f"http://127.0.0.1:{port}/metrics"
        assert _samples(url)[("kpigate_rollout_stage", MINE)] == 0
    finally:
        holder.close()
        metrics.stop()
    assert not (directory / METRICS_FILE).exists()
