"""What the GitHub report is made of: a rollout's record (state, evaluations, traffic) and
the links a reader follows (the MLflow UI, the workflow run).

Plain values: :func:`record_of` builds a record from a rollout's state and audit
:class:`~mlflow_kpigate.core.history.History`, wherever the caller read them (the command
line opens the deployment); the comment, the job summary, the annotation and the commit
status are rendered from it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.report.formats import DASH


@dataclass(frozen=True)
class Evaluation:
    """One gate decision of the rollout, when it was made and the traffic it left."""

    time: float
    decision: Decision
    traffic_percent: float | None = None


@dataclass(frozen=True)
class RolloutRecord:
    """What the report is made of: the state, every evaluation, the traffic changes."""

    state: RolloutState
    evaluations: tuple[Evaluation, ...]
    traffic: tuple[tuple[float, float], ...]  # (epoch seconds, candidate percent)
    final_stage: str
    policy: Policy | None = None
    report_path: str | None = None


@dataclass(frozen=True)
class Links:
    """Where a reader goes next; None when unknown (e.g. a non-http tracking URI)."""

    mlflow_run: str | None = None
    candidate_version: str | None = None
    baseline_version: str | None = None
    workflow_run: str | None = None


def final_stage(state: RolloutState, policy: Policy | None,
                evaluations: Sequence[Evaluation]) -> str:
    """Where the rollout ended (or is): the policy's stage (``50%``, ``shadow`` …),
    ``100%`` once promoted, else the last evaluation's stage name."""
    if policy is not None and 0 <= state.stage_index < len(policy.stages):
        return policy.stages[state.stage_index].describe()
    if state.phase is Phase.PROMOTED:
        return "100%"
    return evaluations[-1].decision.stage_name if evaluations else DASH


def record_of(state: RolloutState, history: History, policy: Policy | None,
              report_path: str | None = None) -> RolloutRecord:
    """The record of a rollout from its state and its audit history; ``report_path`` is
    the directory of its report files, when they exist."""
    evaluations = tuple(Evaluation(e.ts, e.evaluation.decision, e.traffic_percent)
                        for e in history.evaluations())
    return RolloutRecord(state, evaluations, tuple(history.traffic(changes_only=True)),
                         final_stage(state, policy, evaluations), policy, report_path)


def http_base(uri: str | None) -> str | None:
    """The MLflow UI base of an http(s) tracking URI (credentials dropped); else None."""
    if not uri:
        return None
    parts = urllib.parse.urlsplit(uri.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def mlflow_links(tracking_uri: str | None, state: RolloutState,
                 workflow_run: str | None = None) -> Links:
    """Links to the rollout run and to both model-version pages in the MLflow UI."""
    base = http_base(tracking_uri)
    if base is None:
        return Links(workflow_run=workflow_run)

    def q(value: str) -> str:
        return urllib.parse.quote(str(value), safe="")

    run = f"{base}/#/runs/{q(state.rollout_run_id)}" if state.rollout_run_id else None
    model = f"{base}/#/models/{q(state.model_name)}/versions/"
    return Links(run, model + q(state.candidate_version), model + q(state.baseline_version),
                 workflow_run)
