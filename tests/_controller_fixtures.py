"""A deployment directory driven by the real controller, its SQLite store and collector.

Shared by the controller and replay tests: ``make_deployment`` saves a rollout's first
state, ``feed`` logs served predictions and their labels, ``controller`` builds the
controller with in-memory traffic (or the ports given).
"""

from pathlib import Path

import numpy as np

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.events import Created
from mlflow_kpigate.core.records import Label, Prediction
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.collector import Collector
from mlflow_kpigate.policy import load_policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.controller import Controller
from mlflow_kpigate.rollout.memory import InMemoryTraffic

POLICY = """
evaluation: {interval: 1s, maturity: 0s}
stage_defaults:
  min_samples: {requests: 300, labelled: 300}
  min_dwell: 0s
  max_duration: 60s
stages:
  - {traffic: 5, promote_margin_scale: 3}
  - {traffic: 50}
  - 100
kpis:
  - {name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.02}
  - {name: accuracy, kind: proportion, metric: accuracy, role: guardrail, margin: 0.1}
"""


class Clock:
    def __init__(self, start=1_000_000.0):
        self.now = start

    def __call__(self):
        return self.now


def make_deployment(tmp_path: Path, policy_text: str = POLICY, clock: Clock | None = None):
    directory = tmp_path / "dep"
    directory.mkdir()
    (directory / "policy.yaml").write_text(policy_text)
    policy = load_policy(directory / "policy.yaml")
    store = RolloutStore(directory)
    clock = clock or Clock()
    state = RolloutState(name="dep", model_name="m", candidate_version="2",
                         baseline_version="1", candidate_uri="models:/m/2",
                         baseline_uri="models:/m/1", policy_file=str(directory / "policy.yaml"),
                         tracking_uri="unused", port=1)
    store.save(transitions.initial(state, policy, clock()), Created())
    return directory, store, policy, clock


def controller(directory: Path, clock: Clock, **parts):
    """The deployment's controller: its SQLite store and prediction log, in-memory traffic
    (unless ``parts`` give other ports)."""
    policy = load_policy(directory / "policy.yaml")
    parts.setdefault("source", Collector(directory / "predictions.db",
                                         AggregateSpec.from_policy(policy)))
    parts.setdefault("traffic", InMemoryTraffic())
    return Controller(store=RolloutStore(directory), policy=policy, clock=clock, **parts)


def feed(directory: Path, policy, stage_index: int, *, n=2000, cand_error=0.0, cand_acc=0.9,
         ts=1_000_000.0, labels=True, seed=0):
    """Serve n requests at the stage's split; label them (accuracy as given)."""
    rng = np.random.default_rng(seed + 97 * stage_index)
    coll = Collector(directory / "predictions.db", AggregateSpec.from_policy(policy))
    share = policy.stages[stage_index].traffic / 100
    preds, labs = [], []
    for i in range(n):
        cand = rng.random() < share
        role = "candidate" if cand else "baseline"
        err = cand and rng.random() < cand_error
        rid = f"s{stage_index}-{seed}-{i}"
        y = int(rng.random() < 0.3)
        correct = rng.random() < (cand_acc if cand else 0.9)
        pred = None if err else (y if correct else 1 - y)
        preds.append(Prediction(rid, ts, role, "2" if cand else "1", stage_index, False,
                                0.01 + rng.random() * 0.01, err, None, pred))
        if labels:
            labs.append(Label(rid, y))
    coll.log(preds)
    coll.flush()
    if labs:
        coll.add_labels(labs)
    coll.close()
