"""In-memory implementations of every port, shipped with the package.

Like httpx's ``MockTransport``: real, small implementations of the interfaces in
:mod:`.ports` that keep everything in process memory, for tests and for simulations
(``kpigate simulate`` drives the real controller with them). They follow the same
contracts as the durable ones — the state store is compare-and-set and saves a state with
its event atomically, the registry refuses unknown versions with a ``UsageError`` — so
code tested against them behaves the same against SQLite, ConfigMaps and MLflow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.errors import MetricsUnavailable, StateConflict, UsageError
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.events import AuditEvent, Recorded
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.core.state import Readiness, RolloutState
from mlflow_kpigate.policy import Policy


class InMemoryStateStore:
    """A :class:`~.ports.StateStore` in a list; thread-safe, compare-and-set like the others."""

    def __init__(self, name: str = "rollout", clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.clock = clock
        self._lock = threading.Lock()
        self._state: RolloutState | None = None
        self._events: list[Recorded] = []

    def exists(self) -> bool:
        """Whether a state has been saved."""
        return self.load() is not None

    def load(self) -> RolloutState | None:
        """The last saved state, or ``None``."""
        with self._lock:
            return self._state

    def require(self) -> RolloutState:
        """The saved state; ``UsageError`` if there is none."""
        state = self.load()
        if state is None:
            raise UsageError(f"deployment {self.name!r} has no saved state (in memory)")
        return state

    def save(self, state: RolloutState, event: AuditEvent | None = None) -> RolloutState:
        """Persist ``state`` (compare-and-set on its revision) and ``event`` together."""
        with self._lock:
            current = self._state.revision if self._state is not None else None
            if current is not None and current != state.revision:
                raise StateConflict(f"deployment {self.name!r} changed meanwhile (revision "
                                    f"{current}, expected {state.revision}); reload and retry")
            saved = replace(state, revision=(current or 0) + 1)
            self._state = saved
            if event is not None:
                self._record(event, saved.revision)
            return saved

    def append(self, event: AuditEvent) -> int:
        """Record an event that changes no state; its sequence number."""
        with self._lock:
            return self._record(event, None)

    def _record(self, event: AuditEvent, revision: int | None) -> int:
        seq = len(self._events) + 1
        self._events.append(Recorded(seq, self.clock(), event, revision))
        return seq

    def events(self, since: int = 0) -> list[Recorded]:
        """Events with sequence number > ``since``, oldest first."""
        with self._lock:
            return [e for e in self._events if e.seq > since]


class InMemoryTraffic:
    """A :class:`~.ports.TrafficBackend` that records what it was asked to serve.

    ``ready`` (a readiness, or a function of the state giving one) says whether the
    applied weights are served; ``needs_readiness`` False (the default) serves at once,
    like the embedded router. Set ``fail`` to make :meth:`apply` raise it.
    """

    def __init__(self, *, needs_readiness: bool = False,
                 ready: Readiness | Callable[[RolloutState], Readiness] | None = None) -> None:
        self.needs_readiness = needs_readiness
        self.ready = ready or Readiness(True, "in memory")
        self.applied: list[RolloutState] = []
        self.fail: Exception | None = None

    def apply(self, state: RolloutState) -> None:
        """Record ``state`` as served (or raise ``fail``)."""
        if self.fail is not None:
            raise self.fail
        self.applied.append(state)

    def readiness(self, state: RolloutState) -> Readiness:
        """``ready`` for ``state``."""
        return self.ready(state) if callable(self.ready) else self.ready


class InMemorySampleSource:
    """A :class:`~.ports.SampleSource` whose samples are set by the caller.

    ``samples`` is returned as it is (the caller updates it between evaluations, e.g. a
    simulated stream); ``unavailable`` makes :meth:`stage_samples` raise
    ``MetricsUnavailable`` with that reason, as a real source does when its data are gone.
    """

    def __init__(self, samples: list[StageSample] | None = None) -> None:
        self.samples: list[StageSample] = list(samples or [])
        self.unavailable: str | None = None
        self.calls: list[tuple[float, float]] = []

    def stage_samples(self, now: float, maturity_s: float) -> list[StageSample]:
        """The current samples (``MetricsUnavailable`` while ``unavailable`` is set)."""
        self.calls.append((now, maturity_s))
        if self.unavailable is not None:
            raise MetricsUnavailable(self.unavailable)
        return list(self.samples)


@dataclass
class _Run:
    deployment: str
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[int, Decision, float]] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    outcome: str | None = None
    report_dir: Path | None = None
    images: dict[tuple[str, int], Path] = field(default_factory=dict)


class InMemoryRegistry:
    """A :class:`~.ports.Registry` holding versions, tags, aliases and runs in dicts.

    ``versions`` maps a model name to its versions (``register`` adds one); ``aliases``
    maps (model, alias) to a version; ``baselines`` gives the registry baseline of a
    version. Set ``fail`` to make every write raise it (an unreachable tracking server).
    """

    def __init__(self) -> None:
        self.versions: dict[str, list[str]] = {}
        self.aliases: dict[tuple[str, str], str] = {}
        self.tags: dict[tuple[str, str], dict[str, str]] = {}
        self.baselines: dict[tuple[str, str], RegistryBaseline] = {}
        self.runs: dict[str, _Run] = {}
        self.outputs: dict[tuple[str, str], str] = {}
        self.descriptions: dict[tuple[str, str], str] = {}
        #: (model, version) → the metrics and tags its LoggedModel got.
        self.model_metrics: dict[tuple[str, str], dict[str, float]] = {}
        self.model_tags: dict[tuple[str, str], dict[str, str]] = {}
        self.fail: Exception | None = None

    def register(self, name: str, version: str, *, alias: str | None = None,
                 baseline: RegistryBaseline | None = None) -> ModelRef:
        """Add version ``version`` of ``name`` (optionally behind ``alias``)."""
        self.versions.setdefault(name, []).append(str(version))
        if alias is not None:
            self.aliases[(name, alias)] = str(version)
        if baseline is not None:
            self.baselines[(name, str(version))] = baseline
        return self._ref(name, str(version))

    @staticmethod
    def _ref(name: str, version: str) -> ModelRef:
        uri = f"models:/{name}/{version}"
        return ModelRef(name, version, uri, None, uri, f"memory://{name}/{version}")

    def _write(self) -> None:
        if self.fail is not None:
            raise self.fail

    def resolve(self, uri: str) -> ModelRef:
        """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
        rest = uri.removeprefix("models:/")
        if rest == uri:
            raise UsageError(f"{uri}: give models:/NAME/VERSION or models:/NAME@ALIAS")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = self.aliases.get((name, alias))
            if version is None:
                raise UsageError(f"registered model {name!r} has no alias {alias!r}")
        else:
            name, _, version = rest.partition("/")
        if version not in self.versions.get(name, []):
            raise UsageError(f"registered model {name!r} has no version {version!r}")
        return self._ref(name, version)

    def default_baseline(self, model_name: str, alias: str = "champion") -> ModelRef:
        """The version behind ``alias``."""
        return self.resolve(f"models:/{model_name}@{alias}")

    def baseline_kpis(self, ref: ModelRef, policy: Policy) -> RegistryBaseline:
        """The baseline registered for ``ref`` (empty when none was)."""
        return self.baselines.get((ref.name, ref.version),
                                  RegistryBaseline(source=f"{ref.uri}: in memory"))

    def output_kind(self, ref: ModelRef) -> str:
        """What ``outputs`` says of ``ref`` (``unknown`` when it says nothing)."""
        return self.outputs.get((ref.name, ref.version), "unknown")

    def status_tags(self, ref: ModelRef, *, status: str, stage: str, decision: str,
                    reason: str, rollout_run_id: str | None) -> None:
        """Set the ``kpigate.*`` status tags."""
        self._write()
        self.tags.setdefault((ref.name, ref.version), {}).update({
            "kpigate.status": status, "kpigate.stage": stage, "kpigate.decision": decision,
            "kpigate.reason": reason, "kpigate.rollout_run_id": rollout_run_id or ""})

    def mark_superseded(self, baseline: ModelRef, by: ModelRef) -> None:
        """Tag the old baseline as superseded."""
        self._write()
        self.tags.setdefault((baseline.name, baseline.version), {}).update({
            "kpigate.superseded_by": by.label, "kpigate.status": "superseded"})

    def clear_superseded(self, ref: ModelRef) -> None:
        """Remove the ``kpigate.superseded_by`` tag."""
        self._write()
        self.tags.get((ref.name, ref.version), {}).pop("kpigate.superseded_by", None)

    def move_alias(self, name: str, alias: str, version: str) -> str | None:
        """Point ``alias`` at ``version``; the version it pointed at."""
        self._write()
        previous = self.aliases.get((name, alias))
        self.aliases[(name, alias)] = str(version)
        return previous

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version behind ``alias`` (None if unset)."""
        return self.aliases.get((name, alias))

    def start_rollout_run(self, *, deployment: str, candidate: ModelRef, baseline: ModelRef,
                          policy_file: Path, params: Mapping[str, str]) -> str:
        """A new run's id."""
        self._write()
        run_id = f"run-{len(self.runs) + 1}"
        self.runs[run_id] = _Run(deployment, dict(params))
        return run_id

    def log_evaluation(self, run_id: str, step: int, decision: Decision,
                       weights_percent: float, timestamp_ms: int | None = None) -> None:
        """Keep the evaluation's decision and traffic."""
        self._write()
        self.runs[run_id].metrics.append((step, decision, weights_percent))

    def log_evaluation_record(self, run_id: str, evaluation: Evaluation) -> None:
        """Keep the evaluation with its inputs."""
        self._write()
        self.runs[run_id].evaluations.append(evaluation)

    def run_link(self, run_id: str, artifact: str | None = None) -> str:
        """A UI route of the run, as the MLflow registry writes it."""
        return f"#/experiments/0/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")

    def describe_version(self, ref: ModelRef, body: str) -> None:
        """Keep ``body`` as the version's kpigate section."""
        self._write()
        self.descriptions[(ref.name, ref.version)] = body

    def log_run_image(self, run_id: str, path: Path, *, key: str, step: int) -> None:
        """Keep the image's path under (key, step)."""
        self._write()
        self.runs[run_id].images[(key, int(step))] = Path(path)

    def log_model_kpis(self, ref: ModelRef, run_id: str, metrics: Mapping[str, float], *,
                       step: int, timestamp_ms: int, tags: Mapping[str, str]) -> str:
        """Keep the metrics and tags as the version's LoggedModel's."""
        self._write()
        key = (ref.name, ref.version)
        self.model_metrics.setdefault(key, {}).update(metrics)
        self.model_tags.setdefault(key, {}).update(tags)
        return f"in-memory LoggedModel of {ref.label}: {len(metrics)} metrics"

    def finish_rollout_run(self, run_id: str, *, outcome: str,
                           report_dir: Path | None) -> None:
        """Record the outcome."""
        self._write()
        run = self.runs[run_id]
        run.outcome, run.report_dir = outcome, report_dir


@dataclass(frozen=True)
class Alert:
    """One alert a :class:`RecordingNotifier` received."""

    severity: str
    summary: str
    dedup_key: str
    details: dict[str, Any]


class RecordingNotifier:
    """A :class:`~.ports.Notifier` that keeps the alerts it is sent (``fail``: raise it)."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.fail: Exception | None = None

    def alert(self, *, severity: str, summary: str, dedup_key: str,
              details: dict[str, Any]) -> None:
        """Keep the alert (or raise ``fail``)."""
        if self.fail is not None:
            raise self.fail
        self.alerts.append(Alert(severity, summary, dedup_key, dict(details)))
