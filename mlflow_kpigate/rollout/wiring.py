"""Builds a :class:`Controller` with its real collaborators from a deployment directory.

Kept apart from the controller so that the controller itself can be tested with
in-memory collaborators, and so that MLflow is imported only where it is used.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.gate import Decision
from mlflow_kpigate.notify import notifier_from_policy
from mlflow_kpigate.policy import load_policy
from mlflow_kpigate.rollout.controller import Controller, load_registry_baseline

log = logging.getLogger("kpigate.controller")


def finish_rollout(directory: Path, state: RolloutState, registry: object | None, *,
                   store: object | None = None, policy: object | None = None) -> Path:
    """Write the report for a finished rollout and close its MLflow run; returns the dir.

    ``store`` and ``policy`` default to the deployment directory's (embedded backend); the
    Seldon backend passes its ConfigMap store and the policy it loaded from the cluster.
    """
    from mlflow_kpigate.report import build_report

    store = store if store is not None else RolloutStore(directory)
    policy = policy if policy is not None else load_policy(state.policy_file)
    decisions: list[Decision] = []
    stamps: list[float] = []
    weights: list[tuple[float, float]] = []
    for ev in store.events():  # type: ignore[attr-defined]
        if "weights_percent" in ev:
            weights.append((ev["ts"], float(ev["weights_percent"])))
        if isinstance(ev.get("decision"), dict):
            decisions.append(Decision.from_dict(ev["decision"]))
            stamps.append(ev["ts"])
    out = directory / "report"
    build_report(out, state=state, decisions=decisions, timestamps=stamps,
                 weights_history=weights, policy=policy,
                 registry_baseline=load_registry_baseline(directory),
                 control_k=policy.control_limits.k)  # type: ignore[attr-defined]
    if registry is not None and state.rollout_run_id:
        registry.finish_rollout_run(state.rollout_run_id, outcome=state.phase.value,
                                    report_dir=out)
    store.append_event("report_written", {"path": str(out)})  # type: ignore[attr-defined]
    return out


def controller_for(directory: Path) -> Controller:
    """The controller of the deployment in ``directory``, wired to MLflow and alerts."""
    from mlflow_kpigate.registry import Registry

    state = RolloutStore(directory).require()
    registry = Registry(state.tracking_uri)
    policy = load_policy(state.policy_file)
    return Controller(directory, registry=registry, notifier=notifier_from_policy(policy),
                      on_terminal=lambda s: finish_rollout(directory, s, registry) and None)
