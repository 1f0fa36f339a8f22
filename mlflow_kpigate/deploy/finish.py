"""The end of a rollout: write its report from the audit log, publish the outcome in
MLflow (:mod:`.outcome`: descriptions, the timeline image, LoggedModel metrics) and close
its MLflow run.

Runs as the controller's ``on_terminal`` effect (so it is retried until it succeeds), and
on demand (``kpigate report``, the GitHub Action for a rollout still running).
"""

from __future__ import annotations

from pathlib import Path

from mlflow_kpigate.core.events import ReportWritten
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy.inputs import load_registry_baseline
from mlflow_kpigate.deploy.outcome import publish_outcome
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.rollout.ports import Registry, StateStore


def write_report(directory: Path, state: RolloutState, store: StateStore, policy: Policy
                 ) -> Path:
    """Write the report of the rollout in ``store`` under ``directory/report``."""
    from mlflow_kpigate.report import build_report  # matplotlib: only where a report is made

    history = History.of(store.events())
    evaluations = history.evaluations()
    out = directory / "report"
    build_report(out, state=state, decisions=[e.evaluation.decision for e in evaluations],
                 timestamps=[e.ts for e in evaluations], weights_history=history.traffic(),
                 policy=policy, registry_baseline=load_registry_baseline(directory),
                 control_k=policy.control_limits.k)
    return out


def finish_rollout(directory: Path, state: RolloutState, registry: Registry | None, *,
                   store: StateStore, policy: Policy) -> Path:
    """Write the report, publish the outcome, attach the report to the rollout run and end
    the run; returns the report's directory."""
    out = write_report(directory, state, store, policy)
    if registry is not None and state.rollout_run_id:
        publish_outcome(registry, state, out, store=store, policy=policy)
        registry.finish_rollout_run(state.rollout_run_id, outcome=state.status,
                                    report_dir=out)
    store.append(ReportWritten(str(out)))
    return out
