"""What stands in for Seldon Core in end-to-end tests: :class:`SeldonSim`.

It plays Seldon's operator (a SeldonDeployment's status goes Creating → Available after
each spec change kpigate applies) and its executors (request counters per predictor, split
by the SeldonDeployment's current traffic, exported through a loopback exporter that a real
Prometheus scrapes), with a configurable error rate for the candidate. Fixture ``seldon``
starts one per rollout and stops them all at teardown.
"""

from __future__ import annotations

import textwrap
import threading
import time

import numpy as np
import pytest
from fake_kube import fake_kube  # noqa: F401
from prometheus_fixture import LoopbackExporter

NS = "models"
#: A quick policy for end-to-end rollouts on Seldon: error rate from the executors only.
POLICY = textwrap.dedent("""
    evaluation: {interval: 1s, maturity: 0s}
    stage_defaults:
      min_samples: {requests: 300}
      min_dwell: 2s
      max_duration: 120s
    stages: [5, 50, 100]
    kpis:
      - {name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.02}
    metrics:
      prometheus: {timeout: 5s, retries: 2, max_wait: 10s, requests_from: seldon}
    readiness: {timeout: 60s, on_timeout: hold}
""")


def cluster_store(fake, name: str, namespace: str = NS):
    """The rollout's state store in the fake cluster (its ConfigMaps)."""
    from mlflow_kpigate.backends.seldon.cluster import Cluster
    from mlflow_kpigate.backends.seldon.kinds import CONFIG_MAP
    from mlflow_kpigate.backends.seldon.state_store import ClusterStore

    return ClusterStore(Cluster.connect(namespace, fake.kubeconfig).objects(CONFIG_MAP), name)


class SeldonSim(threading.Thread):
    """Seldon's operator and executors, as far as kpigate can observe them."""

    def __init__(self, fake, exporter: LoopbackExporter, name: str, cand_error: float,
                 namespace: str = NS):
        super().__init__(daemon=True)
        self.fake, self.exporter, self.name = fake, exporter, name
        self.cand_error = cand_error
        self.stop = threading.Event()
        self.rng = np.random.default_rng(7)
        self.available_after: float | None = None
        self.seen_spec: str | None = None
        self.namespace = namespace

    def run(self) -> None:
        while not self.stop.wait(0.25):
            sdep = self.fake.get_object("seldondeployments", self.namespace, self.name)
            if sdep is None:
                continue
            spec = (sdep["metadata"].get("annotations") or {}).get("kpigate.io/managed-spec")
            now = time.monotonic()
            if spec != self.seen_spec:  # the operator reconciles a new spec
                self.seen_spec = spec
                self.fake.set_seldon_state(self.namespace, self.name, "Creating")
                self.available_after = now + 0.5
            elif self.available_after is not None and now >= self.available_after:
                self.fake.set_seldon_state(self.namespace, self.name, "Available")
                self.available_after = None
            self.serve(sdep["spec"]["predictors"], 200)

    def serve(self, predictors, n: int) -> None:
        for pred in predictors:
            count = n if pred.get("shadow") else round(n * pred.get("traffic", 0) / 100)
            if count == 0:
                continue
            error = self.cand_error if pred["name"] == "candidate" else 0.0
            failed = int(self.rng.binomial(count, error))
            self.exporter.add_executor_requests(
                self.name, pred["name"], self.rng.uniform(0.01, 0.03, count - failed),
                code="200", namespace=self.namespace)
            if failed:
                self.exporter.add_executor_requests(
                    self.name, pred["name"], self.rng.uniform(0.01, 0.03, failed),
                    code="500", namespace=self.namespace)


@pytest.fixture
def seldon(fake_kube, exporter):  # noqa: F811
    sims: list[SeldonSim] = []

    def start(name: str, cand_error: float) -> SeldonSim:
        sim = SeldonSim(fake_kube, exporter, name, cand_error)
        sim.start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop.set()
        sim.join(timeout=10)
