"""The Rollback Controller: evaluate every interval, persist the decision, act on it.

One evaluation (:meth:`Controller.step`)::

    state = store.require()                   # the committed truth
    samples = source.stage_samples(now)       # matured KPI aggregates per stage
    decision = gate.evaluate(...)             # pure
    decision.meta["forecast"] = ...           # time to decision (rollout/forecasting.py)
    new = transitions.after_decision(...)     # pure: weights follow from the stage
    store.save(new, Evaluated(...))           # ONE write: state + the evaluation's record
    effects.apply(new)                        # traffic, MLflow, alerts (repeatable)

The evaluation's record keeps the gate's inputs (:class:`~mlflow_kpigate.core.evaluation.
Evaluation`), so ``kpigate replay`` can re-judge it. The router follows the committed
state, so a controller killed at any instant leaves either the old state (nothing
happened) or the new one; on restart :meth:`Controller.resume` redoes side effects that
were pending. Traffic is never raised past the stage the committed state approves.

While the rollout bakes (phase ``baking``, after the final stage was approved under a
policy ``bake``) the same loop asks :func:`~mlflow_kpigate.gate.judge_bake` instead of
the gate: the bake stratum's samples go to the change detector, whose state the previous
decision carries (``state.last_decision``, saved with the state), so a controller killed
mid-bake resumes the detector exactly where the committed state left it. A bake rollback
is applied as ``bake_rollback`` (critical alert, alias moved back).

The controller knows its collaborators only by their ports (:mod:`.ports`); which
concrete parts it gets is decided by :mod:`mlflow_kpigate.deploy`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.errors import KpigateError, MetricsUnavailable, StateConflict
from mlflow_kpigate.core.evaluation import Evaluation, policy_digest
from mlflow_kpigate.core.events import (
    Evaluated,
    ReadinessAbort,
    ReadinessTimeout,
    Resumed,
    StageReady,
    traffic_percent,
)
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.gate import bake_streams, evaluate, judge_bake
from mlflow_kpigate.gate.bake import BAKE_STAGE, hold_without_data
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.effects import Effects
from mlflow_kpigate.rollout.forecasting import Forecaster
from mlflow_kpigate.rollout.ports import (
    Notifier,
    Registry,
    SampleSource,
    StateStore,
    TrafficBackend,
)

log = logging.getLogger("kpigate.controller")

#: What decides an evaluation: the gate (:func:`mlflow_kpigate.gate.evaluate`) by default;
#: simulations plug in the foils they compare it with.
Judge = Callable[[Policy, int, float, list[StageSample], RegistryBaseline | None], Decision]


def readiness_policy(policy: Policy) -> tuple[float, str]:
    """(timeout in seconds, ``hold`` | ``abort``) of the policy's ``readiness`` section."""
    section = getattr(policy, "readiness", None)
    if section is None:
        return 600.0, "hold"
    return float(section.timeout), str(section.on_timeout)


class Controller:
    """Drives one rollout through its stages from the committed state."""

    def __init__(self, *, store: StateStore, source: SampleSource, traffic: TrafficBackend,
                 policy: Policy, registry: Registry | None = None,
                 notifier: Notifier | None = None,
                 registry_baseline: RegistryBaseline | None = None,
                 clock: Callable[[], float] = time.time,
                 on_terminal: Callable[[RolloutState], object] | None = None,
                 observer: Callable[[RolloutState, Decision | None], None] | None = None,
                 judge: Judge = evaluate, forecast: bool = True) -> None:
        """``on_terminal`` runs once the rollout has ended (the report); ``observer`` sees
        every saved state and decision (the cluster controller's Prometheus exposition);
        ``forecast`` adds the time-to-decision forecast to every gate decision (off for
        simulations of other decision rules, whose decisions it would not describe)."""
        self.store = store
        self.source = source
        self.traffic = traffic
        self.policy = policy
        self.registry_baseline = registry_baseline
        self.policy_digest = policy_digest(policy.raw)
        self.clock = clock
        self.observer = observer
        self.judge = judge
        self.forecaster = Forecaster(store, policy, registry_baseline) if forecast else None
        self.effects = Effects(store, policy, traffic, registry=registry, notifier=notifier,
                               on_terminal=on_terminal)

    def resume(self) -> RolloutState:
        """Finish side effects a previous controller committed but did not complete."""
        state = self.store.require()
        if state.effects_pending:
            decision = Decision.from_dict(state.last_decision) if state.last_decision else None
            self.store.append(Resumed(state.revision))
            state = self.effects.apply(state, decision, "resume", self._owed_evaluation(state))
        return state

    def _owed_evaluation(self, state: RolloutState) -> Evaluation | None:
        """The record of the evaluation whose effects are owed (the state's last decision)."""
        if state.last_decision is None:
            return None
        for rec in reversed(self.store.events()):
            if isinstance(rec.event, Evaluated):
                ev = rec.event.evaluation
                return ev if ev.decision.to_dict() == state.last_decision else None
        return None

    def step(self) -> Decision | None:
        """One evaluation; returns the decision, or None if nothing was evaluated."""
        state = self.store.require()
        if state.effects_pending and not state.phase.terminal:
            # Finishing them may reveal a newer state (an operator's rollback, say). Also
            # when paused: a pause committed by someone who did not apply its effects (the
            # in-cluster operator leaves them to the rollout's controller) is applied here.
            state = self.resume()
        if state.phase.terminal or state.paused:
            return None
        now = self.clock()
        if self.traffic.needs_readiness and state.stage_ready_at is None:
            ready_state = self._await_readiness(state, now)
            if ready_state is None or ready_state.stage_ready_at is None:
                return None
            state = ready_state
        baking = state.phase is Phase.BAKING
        evaluation = self._evaluate_bake(state, now) if baking else self._evaluate(state, now)
        observed = None
        if self.forecaster is not None and not baking:
            # After the judge: the forecast is kept beside the gate's output, not part of it.
            evaluation, observed = self.forecaster.annotate(evaluation)
        decision = evaluation.decision
        new, _kind = transitions.after_decision(state, self.policy, decision, now)
        new = new.evolve(effects_pending=True)
        stage = BAKE_STAGE if baking else self.policy.stages[state.stage_index].describe()
        event = Evaluated(evaluation, stage, new.weights.describe(),
                          traffic_percent(new.weights))
        try:
            saved = self.store.save(new, event)
        except StateConflict:
            # An operator changed the rollout meanwhile; their change stands and the next
            # evaluation starts from it.
            log.info("state changed during evaluation; re-evaluating next interval")
            return None
        if self.forecaster is not None:
            warning = self.forecaster.committed(evaluation, observed)
            if warning is not None:
                self.store.append(warning)
        kind = "bake_rollback" if baking and decision.action is Action.ROLLBACK else event.kind
        applied = self.effects.apply(saved, decision, kind, evaluation)
        if self.observer is not None:
            self.observer(applied, decision)
        return decision

    def _evaluate(self, state: RolloutState, now: float) -> Evaluation:
        """Ask the gate, keeping what it was given (a hold when the metrics are missing)."""
        started = state.stage_ready_at if state.stage_ready_at is not None \
            else state.stage_started_at
        elapsed = now - started
        number = state.evaluations + 1
        try:
            samples = tuple(self.source.stage_samples(now, self.policy.evaluation.maturity))
        except MetricsUnavailable as exc:
            return Evaluation(number, now, state.stage_index, elapsed,
                              self._hold_without_data(state, str(exc)),
                              registry_baseline=self.registry_baseline,
                              policy_digest=self.policy_digest, metrics_unavailable=str(exc))
        decision = self.judge(self.policy, state.stage_index, elapsed, list(samples),
                              self.registry_baseline)
        return Evaluation(number, now, state.stage_index, elapsed, decision, samples,
                          self.registry_baseline, self.policy_digest)

    def _evaluate_bake(self, state: RolloutState, now: float) -> Evaluation:
        """Ask the bake's change detector, keeping the bake stratum it was given."""
        started = state.stage_ready_at if state.stage_ready_at is not None \
            else state.stage_started_at
        elapsed = now - started
        number = state.evaluations + 1
        try:
            samples = tuple(s for s in self.source.stage_samples(
                now, self.policy.evaluation.maturity) if s.stage_index == state.stage_index)
        except MetricsUnavailable as exc:
            decision = hold_without_data(self.policy, state.stage_index, elapsed,
                                         state.last_decision, str(exc))
            return Evaluation(number, now, state.stage_index, elapsed, decision,
                              registry_baseline=self.registry_baseline,
                              policy_digest=self.policy_digest, metrics_unavailable=str(exc))
        previous = bake_streams(state.last_decision, state.stage_index)
        decision = judge_bake(self.policy, state.stage_index, elapsed, list(samples), previous)
        return Evaluation(number, now, state.stage_index, elapsed, decision, samples,
                          self.registry_baseline, self.policy_digest)

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
        stage = self.policy.stages[state.stage_index].describe()
        try:
            if ready.ready:
                return self.store.save(state.evolve(stage_ready_at=now), StageReady(
                    state.stage_index, stage, round(now - state.stage_started_at, 3),
                    ready.reason))
            timeout, on_timeout = readiness_policy(self.policy)
            waited = now - state.stage_started_at
            if not ready.failed and waited <= timeout:
                return state
            why = (f"{stage} traffic {'failed' if ready.failed else 'not ready'} after "
                   f"{waited:.0f} s: {ready.reason}")
            if on_timeout == "abort":
                new = transitions.rollback(state.evolve(effects_pending=True),
                                           f"aborted: {why}", phase=Phase.ABORTED)
                saved = self.store.save(new, ReadinessAbort(
                    stage, new.weights.describe(), traffic_percent(new.weights), why))
                self.effects.apply(saved, None, "readiness_abort")
                return None
            if state.phase is not Phase.HOLDING:
                held = state.evolve(phase=Phase.HOLDING, reason=f"holding: {why}",
                                    effects_pending=True)
                saved = self.store.save(held, ReadinessTimeout(why))
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
