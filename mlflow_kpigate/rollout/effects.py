"""Side effects of a saved rollout state: traffic, MLflow tags/run/alias, alerts.

They run *after* the state is committed and are all safe to repeat, so a controller that
dies between the commit and the effects simply redoes them when it restarts (the state's
``effects_revision`` tells it what was done). A failing effect (MLflow unreachable, a
webhook down) is recorded in the audit log and retried on the next evaluation; it never
blocks or reverses a traffic decision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.backends.local.state_store import RolloutStore, StateConflict
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.gate import Decision
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.rollout.ports import Notifier

log = logging.getLogger(__name__)


@dataclass
class Effects:
    """Everything outside the state store that a state change must reach."""

    store: RolloutStore
    policy: Policy
    registry: Any | None = None  # mlflow_kpigate.registry.Registry
    notifier: Notifier | None = None
    on_terminal: Callable[[RolloutState], None] | None = None
    traffic: Any | None = None  # backends.traffic.TrafficBackend; default: embedded router

    def apply(self, state: RolloutState, decision: Decision | None, kind: str) -> RolloutState:
        """Run the effects of ``state`` (saved with ``effects_pending``) and clear the flag.

        On any failure the flag stays set, the error is audited, and the next call (the
        next evaluation, or a restarted controller) tries again.
        """
        errors: list[str] = []
        alert_keys = list(state.alert_keys)
        try:
            self._traffic().apply(state)
        except Exception as exc:  # recorded and retried; nothing else moves before traffic
            self.store.append_event("effect_error", {"errors": [f"traffic: {exc}"],
                                                     "revision": state.revision})
            return state
        if self.registry is not None:
            try:
                self._registry(state, decision, kind)
            except Exception as exc:  # recorded and retried, never fatal
                errors.append(f"mlflow: {exc}")
        if self.notifier is not None and self._alerting(state, decision, kind):
            try:
                alert_keys.append(self._notify(state, decision, kind))
            except Exception as exc:  # recorded and retried
                errors.append(f"alert: {exc}")
        if state.phase.terminal and self.on_terminal is not None and not errors:
            try:
                self.on_terminal(state)
            except Exception as exc:  # recorded and retried
                errors.append(f"finish: {exc}")
        if errors:
            self.store.append_event("effect_error", {"errors": errors,
                                                     "revision": state.revision})
            if alert_keys != list(state.alert_keys):
                return self._save(state.evolve(alert_keys=tuple(alert_keys)))
            return state
        return self._save(state.evolve(effects_pending=False, alert_keys=tuple(alert_keys)))

    def _traffic(self) -> Any:
        if self.traffic is None:
            from mlflow_kpigate.backends.local.traffic import LocalRouterTraffic

            self.traffic = LocalRouterTraffic()
        return self.traffic

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
    def _registry(self, state: RolloutState, decision: Decision | None, kind: str) -> None:
        reg = self.registry
        cand = reg.resolve(state.candidate_uri)
        stage = self.policy.stages[state.stage_index].describe()
        decision_text = decision.action.value if decision else kind
        reg.status_tags(cand, status=state.phase.value, stage=stage, decision=decision_text,
                        reason=state.reason, rollout_run_id=state.rollout_run_id)
        if decision is not None and state.rollout_run_id:
            reg.log_evaluation(state.rollout_run_id, state.evaluations, decision,
                               state.weights.candidate_percent if not state.weights.shadow
                               else 0.0)
        if state.phase is Phase.PROMOTED:
            base = reg.resolve(state.baseline_uri)
            previous = reg.move_alias(state.model_name, state.promote_alias,
                                      state.candidate_version)
            reg.mark_superseded(base, cand)
            self.store.append_event("alias_moved", {
                "alias": state.promote_alias, "to_version": state.candidate_version,
                "from_version": previous})

    # -- alerts ------------------------------------------------------------------------------
    @staticmethod
    def _dedup_key(state: RolloutState, kind: str) -> str:
        return f"kpigate/{state.name}/{state.candidate_version}/{kind}/{state.stage_index}"

    def _alerting(self, state: RolloutState, decision: Decision | None, kind: str) -> bool:
        wants = kind in ("rollback", "operator_rollback", "readiness_timeout",
                         "readiness_abort") or bool(decision and decision.alert)
        return wants and self._dedup_key(state, kind) not in state.alert_keys

    def _notify(self, state: RolloutState, decision: Decision | None, kind: str) -> str:
        severity = "critical" if "rollback" in kind or "abort" in kind else "warning"
        summary = (f"kpigate {state.name}: {state.model_name} v{state.candidate_version} "
                   f"{kind.replace('_', ' ')} — {state.reason}")
        details = {"deployment": state.name, "model": state.model_name,
                   "candidate_version": state.candidate_version,
                   "baseline_version": state.baseline_version, "phase": state.phase.value,
                   "weights": state.weights.describe(),
                   "decision": json.loads(decision.to_json()) if decision else None}
        key = self._dedup_key(state, kind)
        self.notifier.alert(severity=severity, summary=summary[:1000], dedup_key=key,  # type: ignore[union-attr]
                            details=details)
        self.store.append_event("alert_sent", {"severity": severity, "dedup_key": key})
        return key
