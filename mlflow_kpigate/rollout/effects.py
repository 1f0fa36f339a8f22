"""Side effects of a saved rollout state: traffic, MLflow tags/run/alias, alerts, the end.

They run *after* the state is committed and are all safe to repeat, so a controller that
dies between the commit and the effects simply redoes them when it restarts (the state's
``effects_pending`` flag says they are owed). A failing effect (MLflow unreachable, a
webhook down) is recorded in the audit log and retried on the next evaluation; it never
blocks or reverses a traffic decision. Traffic comes first: nothing else is announced
before the router serves what the state says.

The promote alias follows the candidate's traffic: it moves to the candidate when the
candidate serves everything (``baking`` or ``promoted``) and back to the previous version
when a rollout that had started its bake is rolled back or aborted — only if it still
points at the candidate, so a change someone made meanwhile stands. The previous version
is tagged ``superseded`` only once the rollout is ``promoted`` (after the bake), so a
rollback after promotion has no tag of it to undo; a candidate that was itself superseded
earlier loses that stale ``kpigate.superseded_by`` as soon as it serves everything.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.errors import StateConflict
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.events import AlertSent, AliasMoved, AliasRestored, EffectError
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.rollout.ports import Notifier, Registry, StateStore, TrafficBackend

log = logging.getLogger(__name__)


@dataclass
class Effects:
    """Everything outside the state store that a state change must reach."""

    store: StateStore
    policy: Policy
    traffic: TrafficBackend
    registry: Registry | None = None
    notifier: Notifier | None = None
    on_terminal: Callable[[RolloutState], object] | None = None  # its result is ignored

    def apply(self, state: RolloutState, decision: Decision | None, kind: str,
              evaluation: Evaluation | None = None) -> RolloutState:
        """Run the effects of ``state`` (saved with ``effects_pending``) and clear the flag.

        ``evaluation`` (the record of the evaluation that produced ``state``) is attached
        to the rollout run, so the run alone can replay the rollout.

        On any failure the flag stays set, the error is audited, and the next call (the
        next evaluation, or a restarted controller) tries again.
        """
        errors: list[str] = []
        alert_keys = list(state.alert_keys)
        try:
            self.traffic.apply(state)
        except Exception as exc:  # recorded and retried; nothing else moves before traffic
            self.store.append(EffectError((f"traffic: {exc}",), state.revision))
            return state
        if self.registry is not None:
            try:
                self._registry(self.registry, state, decision, kind, evaluation)
            except Exception as exc:  # recorded and retried, never fatal
                errors.append(f"mlflow: {exc}")
        if self.notifier is not None and self._alerting(state, decision, kind):
            try:
                alert_keys.append(self._notify(self.notifier, state, decision, kind))
            except Exception as exc:  # recorded and retried
                errors.append(f"alert: {exc}")
        if state.phase.terminal and self.on_terminal is not None and not errors:
            try:
                self.on_terminal(state)
            except Exception as exc:  # recorded and retried
                errors.append(f"finish: {exc}")
        if errors:
            self.store.append(EffectError(tuple(errors), state.revision))
            if alert_keys != list(state.alert_keys):
                return self._save(state.evolve(alert_keys=tuple(alert_keys)))
            return state
        return self._save(state.evolve(effects_pending=False, alert_keys=tuple(alert_keys)))

    def _save(self, state: RolloutState) -> RolloutState:
        """Record the effects' outcome unless someone saved a newer state meanwhile.

        A newer state was saved with its own ``effects_pending``, and its writer runs its
        effects (which include everything done here), so nothing is lost by yielding.
        """
        try:
            return self.store.save(state)
        except StateConflict:
            return self.store.require()

    # -- MLflow ------------------------------------------------------------------------------
    def _registry(self, reg: Registry, state: RolloutState, decision: Decision | None,
                  kind: str, evaluation: Evaluation | None) -> None:
        cand = reg.resolve(state.candidate_uri)
        stage = self.policy.stages[state.stage_index].describe()
        decision_text = decision.action.value if decision else kind
        reg.status_tags(cand, status=state.status, stage=stage, decision=decision_text,
                        reason=state.reason, rollout_run_id=state.rollout_run_id)
        if decision is not None and state.rollout_run_id:
            # At the evaluation's own time when known: a repeat (a resumed controller) then
            # logs the identical point, which MLflow stores once, and the final KPIs logged
            # to the candidate's LoggedModel at the end match it (deploy/outcome.py).
            at = evaluation.at if evaluation is not None else math.nan
            reg.log_evaluation(state.rollout_run_id, state.evaluations, decision,
                               state.weights.candidate_percent if not state.weights.shadow
                               else 0.0,
                               timestamp_ms=int(at * 1000) if math.isfinite(at) else None)
        if evaluation is not None and state.rollout_run_id:
            reg.log_evaluation_record(state.rollout_run_id, evaluation)
        if state.phase in (Phase.BAKING, Phase.PROMOTED):
            # A version promoted again (a rollback to it by a new rollout) sheds the
            # superseded_by tag of its earlier replacement.
            reg.clear_superseded(cand)
            # Repeated after a bake and on every resume: record only a real move.
            if reg.alias_version(state.model_name, state.promote_alias) \
                    != state.candidate_version:
                previous = reg.move_alias(state.model_name, state.promote_alias,
                                          state.candidate_version)
                self.store.append(AliasMoved(state.promote_alias, state.candidate_version,
                                             previous))
            if state.phase is Phase.PROMOTED:
                reg.mark_superseded(reg.resolve(state.baseline_uri), cand)
        elif state.bake_started_at is not None \
                and state.phase in (Phase.ROLLED_BACK, Phase.ABORTED) \
                and reg.alias_version(state.model_name, state.promote_alias) \
                == state.candidate_version:
            reg.move_alias(state.model_name, state.promote_alias, state.baseline_version)
            self.store.append(AliasRestored(state.promote_alias, state.baseline_version,
                                            state.candidate_version))

    # -- alerts ------------------------------------------------------------------------------
    @staticmethod
    def _dedup_key(state: RolloutState, kind: str) -> str:
        return f"kpigate/{state.name}/{state.candidate_version}/{kind}/{state.stage_index}"

    def _alerting(self, state: RolloutState, decision: Decision | None, kind: str) -> bool:
        wants = kind in ("rollback", "bake_rollback", "operator_rollback",
                         "readiness_timeout", "readiness_abort") \
            or bool(decision and decision.alert)
        return wants and self._dedup_key(state, kind) not in state.alert_keys

    def _notify(self, notifier: Notifier, state: RolloutState, decision: Decision | None,
                kind: str) -> str:
        severity = "critical" if "rollback" in kind or "abort" in kind else "warning"
        summary = (f"kpigate {state.name}: {state.model_name} v{state.candidate_version} "
                   f"{kind.replace('_', ' ')} — {state.reason}")
        details = {"deployment": state.name, "model": state.model_name,
                   "candidate_version": state.candidate_version,
                   "baseline_version": state.baseline_version, "phase": state.phase.value,
                   "weights": state.weights.describe(),
                   "decision": json.loads(decision.to_json()) if decision else None}
        key = self._dedup_key(state, kind)
        notifier.alert(severity=severity, summary=summary[:1000], dedup_key=key,
                       details=details)
        self.store.append(AlertSent(severity, key))
        return key
