"""What ``kpigate operator`` exports to Prometheus.

The operator's own series (prefix ``kpigate_operator_``): whether this replica leads,
ModelRollouts by namespace and phase, reconcile errors, worker restarts and watch
restarts. Beside them, every rollout's decision metrics exactly as a rollout Job exports
them (:class:`~mlflow_kpigate.rollout.exposition.DecisionMetrics`, labelled by
``deployment`` = the ModelRollout's name), so dashboards and alert rules serve both ways of
running a rollout. Each rollout keeps its own registry (its families have the same names),
and :class:`_Merged` joins them family by family into one exposition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import Metric

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.state import Phase, RolloutState

Key = tuple[str, str]


class _Merged:
    """A collector that yields the families of several registries, merged by name, each
    registry's samples labelled with its rollout's ``namespace`` (with ``--all-namespaces``
    two rollouts of one name in two namespaces stay two series)."""

    def __init__(self, registries: Callable[[], Iterable[tuple[str, CollectorRegistry]]]
                 ) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for namespace, registry in self.registries():
            for family in registry.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
                into.samples.extend(
                    s._replace(labels={**s.labels, "namespace": namespace})
                    for s in family.samples)
        yield from merged.values()


class OperatorMetrics:
    """The operator's registry (see the module docstring)."""

    def __init__(self, identity: str) -> None:
        self.registry = CollectorRegistry()
        self.identity = identity
        self.leader = Gauge("kpigate_operator_leader", "1 while this replica leads.",
                            ["identity"], registry=self.registry)
        self.rollouts = Gauge("kpigate_operator_rollouts", "ModelRollouts by phase.",
                              ["namespace", "phase"], registry=self.registry)
        self.errors = Counter("kpigate_operator_reconcile_errors",
                              "Reconciles that failed (retried).", ["namespace"],
                              registry=self.registry)
        self.restarts = Counter("kpigate_operator_worker_restarts",
                                "Rollout workers restarted after they died.",
                                ["namespace", "rollout"], registry=self.registry)
        self.watch_restarts = Counter("kpigate_operator_watch_restarts",
                                      "Watches restarted (expired or failed).", ["resource"],
                                      registry=self.registry)
        self.leader.labels(identity).set(0)
        self._lock = threading.Lock()
        self._decisions: dict[Key, Any] = {}
        self._phases: dict[Key, Phase] = {}
        self._revisions: dict[Key, tuple[int, int]] = {}  # revision, evaluations
        self.registry.register(_Merged(self._rollout_registries))

    def _rollout_registries(self) -> list[tuple[str, CollectorRegistry]]:
        with self._lock:
            return [(key[0], m.registry) for key, m in self._decisions.items()]

    def observe(self, key: Key, state: RolloutState | None) -> None:
        """Follow ``key``'s rollout (None: forget it)."""
        from mlflow_kpigate.rollout.exposition import DecisionMetrics

        with self._lock:
            if state is None:
                self._decisions.pop(key, None)
                self._phases.pop(key, None)
                self._revisions.pop(key, None)
            else:
                self._phases[key] = state.phase
                seen = self._revisions.get(key)
                if seen is None:
                    # From 0, so that increase() sees the first restart too.
                    self.restarts.labels(*key)
                if seen is None or seen[0] != state.revision:
                    self._revisions[key] = (state.revision, state.evaluations)
                    metrics = self._decisions.get(key)
                    if metrics is None:
                        metrics = self._decisions[key] = DecisionMetrics(
                            key[1], registry=CollectorRegistry())
                    # A decision counts once: only a save that came with a new evaluation
                    # carries one (an operator's action re-saves the last decision).
                    fresh = seen is None or state.evaluations != seen[1]
                    decision = (Decision.from_dict(state.last_decision)
                                if state.last_decision and fresh else None)
                    metrics.observe(state, decision)
            counts: dict[tuple[str, str], int] = {}
            for (namespace, _name), phase in self._phases.items():
                counts[(namespace, phase.value)] = counts.get((namespace, phase.value), 0) + 1
        self.rollouts.clear()
        for (namespace, phase_value), n in counts.items():
            self.rollouts.labels(namespace, phase_value).set(n)

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve ``/metrics`` on ``host:port``; returns a function that stops it."""
        server, thread = start_http_server(port, host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return stop
