"""What the GitHub report is made of: a rollout's record (state, evaluations, traffic) and
the links a reader follows (the MLflow UI, the workflow run).

Plain values, built by the caller from wherever the rollout lives; the comment, the job
summary, the annotation and the commit status are rendered from them.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import Policy


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
