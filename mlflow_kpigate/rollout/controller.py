"""The rollback controller: evaluate every interval, persist the decision, act on it.

One evaluation (:meth:`Controller.step`)::

    state = store.load()                      # the committed truth
    samples = collector.stage_samples(now)    # matured KPI aggregates per stage
    decision = gate.evaluate(...)             # pure
    new = transitions.after_decision(...)     # pure: weights follow from the stage
    store.save(new, event)                    # ONE transaction: state + audit event
    effects.apply(new)                        # router reload, MLflow, alerts (repeatable)

The router reads its weights from the committed state, so a controller killed with
SIGKILL at any instant leaves either the old state (nothing happened) or the new one
(the router follows it); on restart :meth:`Controller.resume` redoes side effects that
were pending. Traffic is never raised past the stage the committed state approves.

Run as a process: ``python -m mlflow_kpigate.rollout.controller DEPLOYMENT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.local.state_store import RolloutStore, StateConflict
from mlflow_kpigate.backends.local.traffic import LocalRouterTraffic
from mlflow_kpigate.core.baseline import BaselineKpi
from mlflow_kpigate.core.errors import KpigateError, MetricsUnavailable
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.gate import Action, Decision, RegistryBaseline, evaluate
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.collector import Collector
from mlflow_kpigate.policy import Policy, load_policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.effects import Effects
from mlflow_kpigate.rollout.ports import Notifier, SampleSource, TrafficBackend

log = logging.getLogger("kpigate.controller")

BASELINE_FILE = "baseline_kpis.json"


def save_registry_baseline(directory: Path, baseline: RegistryBaseline | None) -> None:
    """Keep the registry baseline beside the state, so restarts decide on the same figures."""
    data: dict[str, Any] = {"kpis": {}}
    if baseline is not None:
        data = {"prevalence": baseline.prevalence, "label_coverage": baseline.label_coverage,
                "kpis": {k: {"mean": v.mean, "std": v.std, "n": v.n}
                         for k, v in baseline.kpis.items()}}
    (directory / BASELINE_FILE).write_text(json.dumps(data, indent=2))


def load_registry_baseline(directory: Path) -> RegistryBaseline | None:
    """The registry baseline saved by :func:`save_registry_baseline` (None if empty)."""
    path = directory / BASELINE_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    kpis = {k: BaselineKpi(v["mean"], v.get("std"), int(v.get("n", 1)))
            for k, v in data.get("kpis", {}).items()}
    if not kpis:
        return None
    return RegistryBaseline(kpis, data.get("prevalence"), data.get("label_coverage") or 1.0,
                            source=str(path))


def readiness_policy(policy: Policy) -> tuple[float, str]:
    """(timeout in seconds, ``hold`` | ``abort``) of the policy's ``readiness`` section."""
    section = getattr(policy, "readiness", None)
    if section is None:
        return 600.0, "hold"
    return float(section.timeout), str(section.on_timeout)


class Controller:
    """Drives one deployment's rollout from its directory."""

    def __init__(self, directory: str | Path, *, registry: Any | None = None,
                 notifier: Notifier | None = None, clock: Callable[[], float] = time.time,
                 on_terminal: Callable[[RolloutState], None] | None = None,
                 store: Any | None = None, source: SampleSource | None = None,
                 traffic: TrafficBackend | None = None,
                 observer: Callable[[RolloutState, Decision | None], None] | None = None,
                 policy: Policy | None = None) -> None:
        """Wire the controller; the embedded backend's parts are the defaults.

        ``store`` (a RolloutStore or anything with its methods, e.g. the Seldon backend's
        ConfigMap store), ``source`` (where KPI samples come from) and ``traffic`` (the
        router) are injected for other backends; ``observer`` sees every saved state and
        decision (the cluster controller's Prometheus exposition uses it).
        """
        self.dir = Path(directory)
        self.store = store if store is not None else RolloutStore(self.dir)
        state = self.store.require()
        self.policy: Policy = policy if policy is not None else load_policy(state.policy_file)
        self.collector: Collector | None = None
        if source is None:
            self.collector = Collector(self.dir / "predictions.db",
                                       AggregateSpec.from_policy(self.policy))
            source = self.collector
        self.source: SampleSource = source
        self.traffic: TrafficBackend = traffic if traffic is not None else LocalRouterTraffic()
        self.registry_baseline = load_registry_baseline(self.dir)
        self.clock = clock
        self.observer = observer
        self.effects = Effects(self.store, self.policy, registry=registry, notifier=notifier,
                               on_terminal=on_terminal, traffic=self.traffic)

    def resume(self) -> RolloutState:
        """Finish side effects a previous controller committed but did not complete."""
        state = self.store.require()
        if state.effects_pending:
            decision = Decision.from_dict(state.last_decision) if state.last_decision else None
            self.store.append_event("resumed", {"redo_effects_for": state.revision})
            state = self.effects.apply(state, decision, "resume")
        return state

    def step(self) -> Decision | None:
        """One evaluation; returns the decision, or None if nothing was evaluated."""
        state = self.store.require()
        if state.phase.terminal or state.paused:
            return None
        if state.effects_pending:
            # Finishing them may reveal a newer state (an operator's rollback, say).
            state = self.resume()
            if state.phase.terminal or state.paused:
                return None
        now = self.clock()
        if self.traffic.needs_readiness and state.stage_ready_at is None:
            state = self._await_readiness(state, now)
            if state is None or state.stage_ready_at is None:
                return None
        started = state.stage_ready_at if state.stage_ready_at is not None \
            else state.stage_started_at
        if self.collector is not None:
            self.collector.flush()
        try:
            samples = self.source.stage_samples(now, self.policy.evaluation.maturity)
        except MetricsUnavailable as exc:
            decision = self._hold_without_data(state, str(exc))
        else:
            decision = evaluate(self.policy, state.stage_index, now - started, samples,
                                self.registry_baseline)
        new, kind = transitions.after_decision(state, self.policy, decision, now)
        new = new.evolve(effects_pending=True)
        event = {"stage_index": state.stage_index,
                 "stage": self.policy.stages[state.stage_index].describe(),
                 "action": decision.action.value, "reason": decision.reason,
                 "weights": new.weights.describe(),
                 "weights_percent": 0.0 if new.weights.shadow or not new.weights.candidate_attached
                 else new.weights.candidate_percent,
                 "decision": decision.to_dict()}
        try:
            saved = self.store.save(new, kind, event)
        except StateConflict:
            # An operator changed the rollout meanwhile; their change stands and the next
            # evaluation starts from it.
            log.info("state changed during evaluation; re-evaluating next interval")
            return None
        applied = self.effects.apply(saved, decision, kind)
        if self.observer is not None:
            self.observer(applied, decision)
        return decision

    def _hold_without_data(self, state: RolloutState, why: str) -> Decision:
        """A hold that says the metrics were missing: never promote on missing data."""
        stage = self.policy.stages[state.stage_index]
        return Decision(action=Action.HOLD, stage_index=state.stage_index,
                        stage_name=stage.describe(),
                        reason=f"holding at {stage.describe()}: metrics unavailable ({why}); "
                               "no decision is taken without data",
                        alert=True, meta={"metrics_unavailable": why})

    def _await_readiness(self, state: RolloutState, now: float) -> RolloutState | None:
        """Record when the stage's traffic is served; act on a readiness timeout.

        Returns the (possibly updated) state, or None when an operator's concurrent
        change won the save (the next interval starts from it).
        """
        ready = self.traffic.readiness(state)
        try:
            if ready.ready:
                return self.store.save(state.evolve(stage_ready_at=now), "stage_ready", {
                    "stage_index": state.stage_index,
                    "stage": self.policy.stages[state.stage_index].describe(),
                    "waited_s": round(now - state.stage_started_at, 3),
                    "reason": ready.reason})
            timeout, on_timeout = readiness_policy(self.policy)
            waited = now - state.stage_started_at
            if not ready.failed and waited <= timeout:
                return state
            why = (f"{self.policy.stages[state.stage_index].describe()} traffic "
                   f"{'failed' if ready.failed else 'not ready'} after {waited:.0f} s: "
                   f"{ready.reason}")
            if on_timeout == "abort":
                new = transitions.rollback(state.evolve(effects_pending=True),
                                           f"aborted: {why}", phase=Phase.ABORTED)
                saved = self.store.save(new, "readiness_abort", {"reason": why})
                self.effects.apply(saved, None, "readiness_abort")
                return None
            if state.phase is not Phase.HOLDING:
                held = state.evolve(phase=Phase.HOLDING, reason=f"holding: {why}",
                                    effects_pending=True)
                saved = self.store.save(held, "readiness_timeout", {"reason": why,
                                                                    "alert": True})
                self.effects.apply(saved, None, "readiness_timeout")
            return None
        except StateConflict:
            return None

    def run(self, stop: threading.Event | None = None) -> RolloutState:
        """Evaluate every policy interval until the rollout ends or ``stop`` is set."""
        stop = stop or threading.Event()
        state = self.resume()
        interval = self.policy.evaluation.interval
        while not stop.is_set():
            state = self.store.require()
            if state.phase.terminal:
                if state.effects_pending:
                    state = self.resume()
                return state
            if stop.wait(interval):
                break
            try:
                self.step()
            except StateConflict:
                continue
            except KpigateError as exc:
                # A cluster API, Prometheus or MLflow hiccup: nothing was committed for
                # this interval; the next one tries again from the stored state.
                log.warning("evaluation skipped: %s", exc)
        return self.store.require()


def main(argv: list[str] | None = None) -> int:
    """Process entry point used by the supervisor."""
    parser = argparse.ArgumentParser(prog="kpigate-controller")
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from mlflow_kpigate.rollout.wiring import (
        controller_for,  # heavy imports (MLflow) only in the process
    )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller = controller_for(Path(args.directory))
    state = controller.run(stop)
    log.info("controller stopping: rollout %s (%s)", state.phase.value, state.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
