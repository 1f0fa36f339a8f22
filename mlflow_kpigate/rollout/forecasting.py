"""The controller's time-to-decision forecast, kept beside each gate decision.

After the gate has judged an evaluation, :class:`Forecaster` adds the forecast of
:func:`mlflow_kpigate.gate.forecast.forecast` to the decision's ``meta["forecast"]``, so it
is saved with the evaluation and every surface shows it. It is computed *outside* the gate
(the gate's outputs for the same inputs stay exactly what they were; ``kpigate replay``
compares decisions without this key), from:

* the traffic measured over the rollout's recorded evaluations
  (:func:`~mlflow_kpigate.gate.forecast_traffic.measure_traffic`): one
  :class:`~mlflow_kpigate.gate.forecast_traffic.Observation` per evaluation, read back from
  the audit log once when the controller starts and kept in memory after that;
* the evaluation's own samples and the registry baseline (per-KPI models).

Once per rollout, when the forecast from traffic measured over at least two evaluations
and :data:`WARN_AFTER_S` of a stage (a tenth of its ``max_duration`` if that is
shorter) says a stage cannot decide within its ``max_duration``, it returns a
:class:`~mlflow_kpigate.core.events.ForecastWarning` for the audit log:
``create -C wait=true``, ``kpigate watch`` and ``status`` show it; it sends no alert
(nothing is wrong yet).
"""

from __future__ import annotations

import math
from dataclasses import replace

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.events import ForecastWarning
from mlflow_kpigate.core.forecast import META_KEY, Forecast
from mlflow_kpigate.core.history import History
from mlflow_kpigate.gate.forecast import forecast
from mlflow_kpigate.gate.forecast_traffic import Observation, Traffic, measure_traffic
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.rollout.ports import StateStore

#: Measured traffic must cover this much of a stage before its forecast may warn.
WARN_AFTER_S = 600.0


class Forecaster:
    """Adds the forecast to the controller's decisions (see the module docstring)."""

    def __init__(self, store: StateStore, policy: Policy,
                 registry_baseline: RegistryBaseline | None) -> None:
        self.store = store
        self.policy = policy
        self.registry_baseline = registry_baseline
        self._observations: list[Observation] | None = None
        self._warned = False

    def _history(self) -> list[Observation]:
        """The observations of the evaluations recorded so far (read once)."""
        if self._observations is None:
            history = History.of(self.store.events())
            observations = []
            for rec in history.evaluations():
                ev = rec.evaluation
                if not ev.samples or "bake" in ev.decision.meta:
                    continue
                obs = Observation.of(ev.at, ev.stage_index, ev.stage_elapsed_s, ev.samples)
                if obs is not None:
                    observations.append(obs)
            self._observations = observations
            self._warned = any(r.kind == ForecastWarning.KIND for r in history.events)
        return self._observations

    def annotate(self, evaluation: Evaluation) -> tuple[Evaluation, Observation | None]:
        """``evaluation`` with the forecast in its decision's meta, and its observation
        (None when it had no samples: nothing to forecast from)."""
        if evaluation.metrics_unavailable is not None or not evaluation.samples:
            return evaluation, None
        obs = Observation.of(evaluation.at, evaluation.stage_index,
                             evaluation.stage_elapsed_s, evaluation.samples)
        if obs is None:
            return evaluation, None
        coverage = self.registry_baseline.label_coverage if self.registry_baseline else 1.0
        fallback = Traffic(0.0, coverage, self.policy.evaluation.maturity,
                           "no traffic measured yet")
        traffic = measure_traffic(self.policy, [*self._history(), obs],
                                  evaluation.stage_index, fallback)
        fc = forecast(self.policy, evaluation.stage_index, evaluation.stage_elapsed_s,
                      evaluation.samples, self.registry_baseline, traffic, at=evaluation.at)
        decision = evaluation.decision
        decision = replace(decision, meta={**decision.meta, META_KEY: fc.to_dict()})
        return replace(evaluation, decision=decision), obs

    def committed(self, evaluation: Evaluation, obs: Observation | None
                  ) -> ForecastWarning | None:
        """Record a saved evaluation's observation; the once-only warning, if it is due."""
        if obs is None:
            return None
        history = self._history()
        history.append(obs)
        raw = evaluation.decision.meta.get(META_KEY)
        stage = self.policy.stages[evaluation.stage_index]
        due = min(WARN_AFTER_S, 0.1 * (stage.max_duration or math.inf))
        looks = sum(1 for o in history if o.stage_index == obs.stage_index)
        if self._warned or not isinstance(raw, dict) or obs.elapsed_s < due or looks < 2:
            return None
        fc = Forecast.from_dict(raw)
        if not (fc.basis.startswith("measured") and fc.request_rate > 0):
            return None
        warnings = fc.warnings()
        if not warnings:
            return None
        self._warned = True
        return ForecastWarning(stage.describe(), "forecast: " + "; ".join(warnings), fc.basis)
