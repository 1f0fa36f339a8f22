"""The Rollback Controller's collaborators, as interfaces: what it needs, not who provides it.

The controller (:mod:`.controller`) and its side effects (:mod:`.effects`) are written
against these protocols only; a composition root (:mod:`mlflow_kpigate.deploy`) hands
them concrete parts:

================  ===================================  ===================================
port              embedded backend                     Seldon Core backend
================  ===================================  ===================================
TrafficBackend    ``backends.local.traffic``           ``backends.seldon.traffic``
SampleSource      ``metrics.collector.Collector``      ``metrics.prometheus.PrometheusSource``
StateStore        ``backends.local.state_store``       ``backends.seldon.state_store``
Registry          ``registry.Registry`` (MLflow)       the same
Notifier          ``notify`` (Slack, PagerDuty)        the same
================  ===================================  ===================================

:mod:`.memory` ships an in-memory implementation of each, for tests and simulations.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.events import AuditEvent, Recorded
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.core.state import Readiness, RolloutState
from mlflow_kpigate.policy import Policy


@runtime_checkable
class TrafficBackend(Protocol):
    """A Model Router the controller drives."""

    #: False when :meth:`apply` takes effect immediately (no readiness wait needed).
    needs_readiness: bool

    def apply(self, state: RolloutState) -> None:
        """Make the router serve ``state.weights``; raise if that could not be done.

        Must be idempotent: it is repeated after crashes and failures.
        """
        ...

    def readiness(self, state: RolloutState) -> Readiness:
        """Whether the weights of ``state`` are being served now."""
        ...


@runtime_checkable
class SampleSource(Protocol):
    """What the controller needs from a Metrics Collector: per-stage KPI aggregates."""

    def stage_samples(self, now: float, maturity_s: float) -> list[StageSample]:
        """One sample per stage seen; labelled KPIs only from labels older than maturity.

        Raises :class:`~mlflow_kpigate.core.errors.MetricsUnavailable` when the data
        cannot be had (the controller then holds and says why).
        """
        ...


@runtime_checkable
class StateStore(Protocol):
    """Durable rollout state and its append-only audit log (the committed truth).

    ``save`` is compare-and-set: ``state.revision`` must equal the stored revision,
    otherwise :class:`~mlflow_kpigate.core.errors.StateConflict` is raised and nothing is
    written; the state and its event are written together or not at all.
    """

    def exists(self) -> bool:
        """Whether a state has been saved."""
        ...

    def load(self) -> RolloutState | None:
        """The last saved state, or ``None``."""
        ...

    def require(self) -> RolloutState:
        """The saved state; ``UsageError`` naming the rollout if there is none."""
        ...

    def save(self, state: RolloutState, event: AuditEvent | None = None) -> RolloutState:
        """Persist ``state`` with the event that explains it; the saved state (new revision)."""
        ...

    def append(self, event: AuditEvent) -> int:
        """Record an event that changes no state; its sequence number."""
        ...

    def events(self, since: int = 0) -> list[Recorded]:
        """Events with sequence number > ``since``, oldest first."""
        ...


class Notifier(Protocol):
    """Sends an alert; ``dedup_key`` identifies the incident across repeats."""

    def alert(self, *, severity: str, summary: str, dedup_key: str,
              details: dict[str, Any]) -> None:
        """Deliver one alert (raise if it could not be delivered)."""
        ...


class Registry(Protocol):
    """The model registry and tracking server (MLflow): versions, tags, aliases, runs."""

    def resolve(self, uri: str) -> ModelRef:
        """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` as a resolved version."""
        ...

    def default_baseline(self, model_name: str, alias: str = "champion") -> ModelRef:
        """The version behind ``alias`` (the serving champion by default)."""
        ...

    def baseline_kpis(self, ref: ModelRef, policy: Policy) -> RegistryBaseline:
        """μ, σ and n per policy KPI of the baseline version ``ref``."""
        ...

    def output_kind(self, ref: ModelRef) -> str:
        """``scores``, ``labels`` or ``unknown``: what ``ref``'s model returns."""
        ...

    def status_tags(self, ref: ModelRef, *, status: str, stage: str, decision: str,
                    reason: str, rollout_run_id: str | None) -> None:
        """Write the rollout's ``kpigate.*`` status tags on ``ref``."""
        ...

    def mark_superseded(self, baseline: ModelRef, by: ModelRef) -> None:
        """Tag the old baseline as superseded by ``by``."""
        ...

    def clear_superseded(self, ref: ModelRef) -> None:
        """Remove ``kpigate.superseded_by`` from ``ref`` (promoted again), if it is there."""
        ...

    def move_alias(self, name: str, alias: str, version: str) -> str | None:
        """Point ``alias`` at ``version``; the version it pointed at before."""
        ...

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points at now (None if it is not set)."""
        ...

    def start_rollout_run(self, *, deployment: str, candidate: ModelRef, baseline: ModelRef,
                          policy_file: Path, params: Mapping[str, str]) -> str:
        """Create the rollout's run (policy attached); its id."""
        ...

    def log_evaluation(self, run_id: str, step: int, decision: Decision,
                       weights_percent: float, timestamp_ms: int | None = None) -> None:
        """Record one evaluation's evidence in the rollout run."""
        ...

    def log_evaluation_record(self, run_id: str, evaluation: Evaluation) -> None:
        """Attach the evaluation with its inputs to the run (for ``kpigate replay``)."""
        ...

    def run_link(self, run_id: str, artifact: str | None = None) -> str:
        """The MLflow UI route of the run (or of one of its ``artifact`` files)."""
        ...

    def describe_version(self, ref: ModelRef, body: str) -> None:
        """Replace kpigate's section of ``ref``'s description with ``body`` (repeatable)."""
        ...

    def log_run_image(self, run_id: str, path: Path, *, key: str, step: int) -> None:
        """Log a PNG as the run's image ``key`` at ``step`` (once per key and step)."""
        ...

    def log_model_kpis(self, ref: ModelRef, run_id: str, metrics: Mapping[str, float], *,
                       step: int, timestamp_ms: int, tags: Mapping[str, str]) -> str:
        """Log final KPIs and tags to ``ref``'s LoggedModel; what was done, in words."""
        ...

    def finish_rollout_run(self, run_id: str, *, outcome: str,
                           report_dir: Path | None) -> None:
        """Tag the outcome, attach the report, end the run."""
        ...
