"""A Seldon rollout in the fake API server, driven by the real controller, for CLI tests.

``start`` does what ``mlflow deployments create -t kpigate:/seldon/NS -C wait=false``
does before it spawns its controller (:func:`~mlflow_kpigate.deploy.seldon_rollout.
start_rollout`: the SeldonDeployment, the policy ConfigMap, the rollout run in a real
MLflow store, the first state in its ConfigMap), with model versions registered cheaply
(no model files: Seldon is not running). ``ClusterRollout.step`` runs one evaluation of
the real controller on the rollout's ConfigMap store, with a local prediction log as its
metrics source (standing in for Prometheus), so the audit log holds real, replayable
evaluations.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_kpigate.backends.seldon.manifests import ModelRef, seldon_deployment
from mlflow_kpigate.backends.seldon.state_store import ClusterStore
from mlflow_kpigate.core.records import Label, Prediction
from mlflow_kpigate.deploy.config import parse_config
from mlflow_kpigate.deploy.seldon_rollout import (
    ClusterRollout as Objects,
)
from mlflow_kpigate.deploy.seldon_rollout import (
    connect,
    seldon_target,
    start_rollout,
    workdir,
)
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.collector import Collector
from mlflow_kpigate.policy import Policy, load_policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.controller import Controller
from mlflow_kpigate.rollout.memory import InMemoryTraffic

NS = "models"

POLICY = textwrap.dedent("""
    evaluation: {interval: 1s, maturity: 0s}
    stage_defaults:
      min_samples: {requests: 300, labelled: 300}
      min_dwell: 0s
      max_duration: 1h
    stages:
      - {traffic: 5, promote_margin_scale: 3}
      - {traffic: 50}
      - 100
    kpis:
      - {name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.02}
      - {name: accuracy, kind: proportion, metric: accuracy, role: guardrail, margin: 0.1}
""")


class Clock:
    """The controller's clock: real time at the start, moved on by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class ClusterRollout:
    """One rollout in the fake cluster and what a test needs to drive and read it."""

    name: str
    kubeconfig: Path
    state_dir: Path
    tracking_uri: str
    model: str
    policy: Policy
    store: ClusterStore
    predictions: Path
    clock: Clock
    controller: Controller | None = None

    @property
    def target(self) -> str:
        return f"kpigate:/seldon/{NS}"

    def cli_args(self) -> list[str]:
        """``--namespace NS --kubeconfig FILE --state-dir DIR``."""
        return ["--namespace", NS, "--kubeconfig", str(self.kubeconfig),
                "--state-dir", str(self.state_dir)]

    def feed(self, stage_index: int, *, n: int, cand_error: float = 0.0, seed: int = 0
             ) -> None:
        """Serve ``n`` labelled requests at the stage's split (candidate errors as given)."""
        rng = np.random.default_rng(seed + 97 * stage_index)
        coll = Collector(self.predictions, AggregateSpec.from_policy(self.policy))
        share = self.policy.stages[stage_index].traffic / 100
        preds, labels = [], []
        for i in range(n):
            cand = bool(rng.random() < share)
            err = cand and bool(rng.random() < cand_error)
            rid = f"s{stage_index}-{seed}-{i}"
            y = int(rng.random() < 0.3)
            pred = None if err else (y if rng.random() < 0.9 else 1 - y)
            preds.append(Prediction(rid, self.clock.now - 1, "candidate" if cand else "baseline",
                                    "2" if cand else "1", stage_index, False,
                                    0.01 + rng.random() * 0.01, err, None, pred))
            labels.append(Label(rid, y))
        coll.log(preds)
        coll.flush()
        coll.add_labels(labels)
        coll.close()

    def step(self) -> Any:
        """One evaluation of the real controller on the ConfigMap store; its decision."""
        self.clock.now += 5
        if self.controller is None:
            self.controller = Controller(
                store=self.store, policy=self.policy, clock=self.clock,
                source=Collector(self.predictions, AggregateSpec.from_policy(self.policy)),
                traffic=InMemoryTraffic())
        return self.controller.step()


def register_versions(tracking_uri: str, model: str) -> None:
    """Versions 1 (champion) and 2 of ``model``, with bucket sources and no files."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.create_registered_model(model)
    for version in ("1", "2"):
        client.create_model_version(model, source=f"s3://models/{model}/{version}")
    client.set_registered_model_alias(model, "champion", "1")


def start(kubeconfig: Path, tracking_uri: str, tmp_path: Path, name: str = "fraud"
          ) -> ClusterRollout:
    """Create rollout ``name`` in namespace ``NS`` of the fake cluster (see module doc)."""
    from mlflow_kpigate.registry import Registry

    model = f"{name}-model"
    register_versions(tracking_uri, model)
    registry = Registry(tracking_uri)
    state_dir = tmp_path / "state"
    cfg = parse_config({"kubeconfig": str(kubeconfig), "state_dir": str(state_dir)})
    target = seldon_target(NS, name, cfg)
    candidate = registry.resolve(f"models:/{model}/2")
    baseline = registry.resolve(f"models:/{model}/1")
    directory = workdir(NS, name, state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    policy_file = directory / "policy.yaml"
    policy_file.write_text(POLICY)
    policy = load_policy(policy_file)
    manifests = [seldon_deployment(target, ModelRef.from_registry(baseline),
                                   ModelRef.from_registry(candidate),
                                   transitions.stage_weights(policy.stages[0]))]
    objects = Objects(connect(NS, cfg), name)
    start_rollout(objects, target, cfg, manifests, policy, policy_file, registry,
                  (candidate, baseline), tracking_uri, lambda _message: None)
    return ClusterRollout(name, kubeconfig, state_dir, tracking_uri, model, policy,
                          objects.store, tmp_path / f"{name}-predictions.db", Clock())
