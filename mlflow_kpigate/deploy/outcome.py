"""The outcome of an ended rollout, written where MLflow users look.

Runs inside :func:`~.finish.finish_rollout` (the controller's ``on_terminal`` effect,
retried until it succeeds), after the report is written and before the rollout run is
ended (MLflow links a LoggedModel's metrics to an active run that logs them):

* the candidate version's description gets the rollout's section
  (:func:`~mlflow_kpigate.report.summary.version_summary`), replaced in place on a later
  rollout, the user's own text kept; a baseline replaced by a promotion gets a one-line
  section (:func:`~mlflow_kpigate.report.summary.replaced_note`);
* the decision timeline (``report/timeline.png``) is logged as the run's
  ``decision_timeline`` image;
* the last evaluation's ``candidate.<kpi>`` and ``delta.<kpi>`` go to the candidate's
  LoggedModel with the outcome as its tags — or the audit log says why not.

Every step is safe to repeat (each says so in its own module), so a controller killed
half-way through re-applies them all without duplicating anything. What was done is
recorded as an ``outcome_published`` audit event.
"""

from __future__ import annotations

import math
from pathlib import Path

from mlflow_kpigate.core.events import OutcomePublished
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.report.summary import replaced_note, version_summary
from mlflow_kpigate.rollout.ports import Registry, StateStore

#: The rollout run's image key of the decision timeline.
TIMELINE_KEY = "decision_timeline"


def publish_outcome(registry: Registry, state: RolloutState, report_dir: Path, *,
                    store: StateStore, policy: Policy) -> OutcomePublished:
    """Write the outcome of ``state``'s rollout to MLflow (see the module docstring)."""
    run_id = state.rollout_run_id
    if not run_id:
        raise ValueError("publish_outcome needs the rollout's run id")
    evaluations = History.of(store.events()).evaluations()
    decisions = [e.evaluation.decision for e in evaluations]
    timestamps = [e.ts for e in evaluations]
    run_link = registry.run_link(run_id)
    candidate = registry.resolve(state.candidate_uri)
    registry.describe_version(candidate, version_summary(
        state, decisions, timestamps, policy, run_link=run_link,
        report_link=registry.run_link(run_id, "report/report.md")))
    described = [candidate.label]
    if state.phase is Phase.PROMOTED:
        baseline = registry.resolve(state.baseline_uri)
        registry.describe_version(baseline, replaced_note(state, timestamps, run_link=run_link))
        described.append(baseline.label)

    timeline = Path(report_dir) / "timeline.png"
    if timeline.is_file():
        registry.log_run_image(run_id, timeline, key=TIMELINE_KEY, step=len(decisions))

    model_metrics = "no evaluation: no model metrics"
    if evaluations:
        last = evaluations[-1].evaluation
        metrics: dict[str, float] = {}
        for ev in last.decision.evidence:
            metrics[f"candidate.{ev.kpi}"] = ev.candidate_value
            metrics[f"delta.{ev.kpi}"] = ev.delta
        # ``at`` is the time the run's metrics of this evaluation carry (rollout/effects.py),
        # so MLflow keeps one point; a record made before inputs were kept has none.
        at = last.at if math.isfinite(last.at) else evaluations[-1].ts
        model_metrics = registry.log_model_kpis(
            candidate, run_id, metrics, step=last.number, timestamp_ms=int(at * 1000),
            tags={"kpigate.outcome": state.status, "kpigate.rollout_run_id": run_id,
                  "kpigate.deployment": state.name,
                  "kpigate.baseline_version": state.baseline_version})
    event = OutcomePublished(",".join(described), timeline.is_file(), model_metrics)
    store.append(event)
    return event
