"""Prometheus exposition of the controller's decisions (stage, phase, KPI intervals).

The cluster controller serves these on ``/metrics`` (port 9102 in examples/k8s), the
embedded one with ``namespace="local"`` (``deploy/local_metrics.py``), so the Grafana
dashboard and the alert rules in ``examples/`` can show what the gate saw and did.
Names follow the design: prefix ``kpigate_``, base units, ``_total`` counters.

While a rollout bakes (``kpigate_rollout_phase{phase="baking"}``) the bake's progress is
exported too: ``kpigate_bake_remaining_seconds`` and, per watched KPI, the change
detector's statistic and alarm threshold as natural logs
(``kpigate_bake_detector_log_statistic`` / ``_log_threshold``; an alarm when the first
reaches the second).

The time-to-decision forecast (``decision.meta["forecast"]``) is exported per remaining
stage: ``kpigate_stage_decision_eta_seconds{stage, case}``, seconds from the evaluation
until the gate could decide (``case="equal"``: an equal candidate promoted;
``case="at_margin"``: a candidate at −detect rolled back; +Inf: not at this traffic),
``kpigate_stage_forecast_duration_seconds{stage}`` (how long the stage lasts for an equal
candidate) and ``kpigate_stage_max_duration_seconds{stage}`` (the policy's limit), so the
alert rule ``KpigateStageCannotDecideInTime`` compares the two. Series of stages the
forecast no longer covers (passed, or not reached) are removed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from mlflow_kpigate.core.bake import DetectorView, bake_view
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.forecast import forecast_view
from mlflow_kpigate.core.state import Phase, RolloutState


class DecisionMetrics:
    """Gauges and counters that follow one rollout's saved states and decisions."""

    def __init__(self, deployment: str, registry: CollectorRegistry | None = None, *,
                 readiness: bool = True) -> None:
        """``readiness``: the backend waits for its traffic to be served (Seldon); False
        (the embedded router applies weights at once): ``kpigate_readiness_waiting_seconds``
        stays 0, where a stage's age would read as a wait."""
        self.deployment = deployment
        self.readiness = readiness
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.info = Gauge("kpigate_rollout_info", "The rollout's model and versions (=1).",
                          ["deployment", "model", "candidate_version", "baseline_version"],
                          registry=r)
        self.stage = Gauge("kpigate_rollout_stage", "Index of the rollout's current stage.",
                           ["deployment"], registry=r)
        self.phase = Gauge("kpigate_rollout_phase", "1 for the rollout's current phase.",
                           ["deployment", "phase"], registry=r)
        self.weight = Gauge("kpigate_traffic_weight",
                            "Share of live traffic served by each role (0-1).",
                            ["deployment", "role"], registry=r)
        self.estimate = Gauge("kpigate_kpi_estimate", "Each role's KPI estimate.",
                              ["deployment", "kpi", "role"], registry=r)
        self.difference = Gauge("kpigate_kpi_difference",
                                "Candidate vs baseline on the tested scale "
                                "(positive = candidate better).", ["deployment", "kpi"],
                                registry=r)
        self.lower = Gauge("kpigate_kpi_interval_lower",
                           "Lower end of the anytime-valid interval of the difference.",
                           ["deployment", "kpi"], registry=r)
        self.upper = Gauge("kpigate_kpi_interval_upper",
                           "Upper end of the anytime-valid interval of the difference.",
                           ["deployment", "kpi"], registry=r)
        self.samples = Gauge("kpigate_kpi_samples", "Samples behind each KPI's evidence.",
                             ["deployment", "kpi"], registry=r)
        self.decisions = Counter("kpigate_decisions", "Gate decisions by action.",
                                 ["deployment", "action"], registry=r)
        self.evaluations = Counter("kpigate_evaluations", "Evaluations run.", ["deployment"],
                                   registry=r)
        self.last_eval = Gauge("kpigate_last_evaluation_timestamp_seconds",
                               "Unix time of the last evaluation.", ["deployment"], registry=r)
        self.unavailable = Gauge("kpigate_metrics_unavailable",
                                 "1 when the last evaluation held for missing metrics.",
                                 ["deployment"], registry=r)
        self.waiting = Gauge("kpigate_readiness_waiting_seconds",
                             "How long the current stage's traffic has waited to be served "
                             "(0 once ready).", ["deployment"], registry=r)
        self.paused = Gauge("kpigate_rollout_paused",
                            "1 while an operator has paused the rollout's evaluations.",
                            ["deployment"], registry=r)
        self.bake_remaining = Gauge("kpigate_bake_remaining_seconds",
                                    "Time left in the bake after promotion (0 once over).",
                                    ["deployment"], registry=r)
        self.detector = Gauge("kpigate_bake_detector_log_statistic",
                              "ln of the bake's change-detector statistic per watched KPI "
                              "(the stream closest to its threshold).", ["deployment", "kpi"],
                              registry=r)
        self.detector_threshold = Gauge("kpigate_bake_detector_log_threshold",
                                        "ln of that stream's alarm threshold.",
                                        ["deployment", "kpi"], registry=r)
        self.eta = Gauge("kpigate_stage_decision_eta_seconds",
                         "Forecast seconds until the gate can decide in each remaining stage "
                         "(case equal: an equal candidate promoted; at_margin: a candidate "
                         "at -detect rolled back).", ["deployment", "stage", "case"],
                         registry=r)
        self.stage_duration = Gauge("kpigate_stage_forecast_duration_seconds",
                                    "Forecast length of each remaining stage for an equal "
                                    "candidate.", ["deployment", "stage"], registry=r)
        self.max_duration = Gauge("kpigate_stage_max_duration_seconds",
                                  "The policy's max_duration of each remaining stage that "
                                  "has one.", ["deployment", "stage"], registry=r)
        self._forecast_labels: set[tuple[Gauge, tuple[str, ...]]] = set()
        for action in ("promote", "hold", "rollback"):
            self.decisions.labels(deployment, action)  # export zeros from the start
        self.evaluations.labels(deployment)

    def observe(self, state: RolloutState, decision: Decision | None,
                now: Callable[[], float] = time.time) -> None:
        """Update every series from a saved state and (if any) the decision behind it."""
        d = self.deployment
        self.info.labels(d, state.model_name, state.candidate_version,
                         state.baseline_version).set(1)
        self.stage.labels(d).set(state.stage_index)
        self.paused.labels(d).set(1 if state.paused else 0)
        for phase in Phase:
            self.phase.labels(d, phase.value).set(1 if phase is state.phase else 0)
        w = state.weights
        cand = 0.0 if (w.shadow or not w.candidate_attached) else w.candidate_percent / 100
        self.weight.labels(d, "candidate").set(cand)
        self.weight.labels(d, "baseline").set(1 - cand)
        waiting = self.readiness and state.stage_ready_at is None and not state.phase.terminal
        self.waiting.labels(d).set(now() - state.stage_started_at if waiting else 0)
        if decision is None:
            return
        self.decisions.labels(d, decision.action.value).inc()
        self.evaluations.labels(d).inc()
        self.last_eval.labels(d).set(now())
        self.unavailable.labels(d).set(1 if decision.meta.get("metrics_unavailable") else 0)
        self._bake(decision)
        self._forecast(decision)
        for ev in decision.evidence:
            for role, value in (("baseline", ev.baseline_value),
                                ("candidate", ev.candidate_value)):
                _set(self.estimate.labels(d, ev.kpi, role), value)
            _set(self.difference.labels(d, ev.kpi), ev.delta)
            _set(self.lower.labels(d, ev.kpi), ev.lower)
            _set(self.upper.labels(d, ev.kpi), ev.upper)
            self.samples.labels(d, ev.kpi).set(ev.samples)

    def _bake(self, decision: Decision) -> None:
        view = bake_view(decision)
        if view is None:
            return
        d = self.deployment
        self.bake_remaining.labels(d).set(view.remaining_s)
        closest: dict[str, DetectorView] = {}
        for det in view.detectors:
            if det.kpi not in closest or det.margin < closest[det.kpi].margin:
                closest[det.kpi] = det
        for kpi, det in closest.items():
            _set(self.detector.labels(d, kpi), det.log_statistic)
            _set(self.detector_threshold.labels(d, kpi), det.log_threshold)

    def _forecast(self, decision: Decision) -> None:
        fc = forecast_view(decision)
        if fc is None and decision.meta.get("metrics_unavailable"):
            return  # a hold without data: keep the last forecast's series
        d = self.deployment
        seen: set[tuple[Gauge, tuple[str, ...]]] = set()

        def put(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
            gauge.labels(*labels).set(value)
            seen.add((gauge, labels))

        for s in fc.stages if fc is not None else ():
            put(self.eta, (d, s.stage, "equal"), s.equal_s)
            put(self.eta, (d, s.stage, "at_margin"), s.at_margin_s)
            put(self.stage_duration, (d, s.stage), s.duration_s)
            if s.max_duration_s is not None:
                put(self.max_duration, (d, s.stage), s.max_duration_s)
        for gauge, labels in self._forecast_labels - seen:
            gauge.remove(*labels)
        self._forecast_labels = seen

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve ``/metrics`` on ``host:port`` in a thread; returns a function that stops it."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


def _set(gauge: Gauge, value: float) -> None:
    # An infinite interval end is honest ("no bound yet") and Prometheus stores ±Inf;
    # NaN (no estimate yet) is left out rather than plotted as a value.
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    gauge.set(value)
