"""Run a staged rollout against a synthetic stream with the real controller.

The :class:`~mlflow_kpigate.rollout.controller.Controller` runs with the package's
in-memory ports (:mod:`mlflow_kpigate.rollout.memory`): its state store, a traffic backend
that records the weights it is asked to serve, a sample source this module fills from the
stream (:mod:`.stream`), and a clock that advances one evaluation interval per look. So a
simulated rollout moves through the same state machine, transitions and audit events as a
real one; only the decision rule can be swapped for the foils it is compared with.

Per evaluation interval: the stage the committed state says is served splits the traffic
between the roles (in a shadow stage the candidate scores a copy of every request: both
roles' outcomes on those requests are drawn jointly, correlated, and the stratum carries
their paired part, as the embedded collector's does; :mod:`.paired_stream`),
requests count at once, labelled predictions join their stage's stratum once they are
mature (label delay and the policy's maturity, rounded up to whole intervals), then the
controller evaluates and the stage advances, stops (rollback) or stays.

Exposure counts candidate responses when they are served, so requests answered while
their labels are still pending are exposure too (users got those answers).

After promotion: today the controller's state is terminal once the final (100%) stage is
reached and the run ends there. When the controller keeps evaluating in the final stage (a
bake period: its phase is not terminal), the run goes on: the candidate serves every
request, the baseline scores a shadow copy of each, and a rollback then is a rollback
"after promotion" (:attr:`Outcome.rolled_back_in_bake`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlflow_kpigate.core.baseline import BaselineKpi, RegistryBaseline
from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.gate.estimators import kpi_value
from mlflow_kpigate.kpis import AggregateSpec, PairedAggregate, RoleAggregate
from mlflow_kpigate.policy import LATENCY, KpiKind, KpiSpec, Policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.controller import Controller, Judge
from mlflow_kpigate.rollout.memory import (
    InMemorySampleSource,
    InMemoryStateStore,
    InMemoryTraffic,
)
from mlflow_kpigate.simulate.paired_stream import PairedGenerator
from mlflow_kpigate.simulate.rules import KpigateRule, Rule
from mlflow_kpigate.simulate.stream import IntervalData, StreamGenerator, StreamSpec, rng_for

BASELINE, CANDIDATE = 0, 1
PAIRED = 3  # the joint draw of a stage where both roles answer every request


@dataclass(frozen=True)
class Look:
    """One evaluation of a simulated rollout."""

    interval: int
    stage_index: int
    stage: str
    action: Action
    reason: str
    candidate_requests: int  # served to (or, in shadow, scored by) the candidate so far
    exposed_requests: int  # candidate responses actually returned to users so far
    decision: Decision | None = None


@dataclass
class Outcome:
    """How a simulated rollout ended."""

    status: str  # promoted (reached 100%) | rolled_back (at any time) | holding
    looks: list[Look] = field(default_factory=list)
    final_stage: int = 0
    promoted_look: int | None = None  # interval of the look that promoted to 100%
    exposed_at_promotion: int | None = None
    bake_looks: int = 0  # evaluations with the candidate at 100% (a bake period)

    @property
    def exposed_requests(self) -> int:
        """Candidate responses users received before the run ended."""
        return self.looks[-1].exposed_requests if self.looks else 0

    @property
    def decided_look(self) -> int | None:
        """Interval of the first promotion to 100% or rollback (None: still holding)."""
        if self.promoted_look is not None:
            return self.promoted_look
        if self.status == "rolled_back" and self.looks:
            return self.looks[-1].interval
        return None

    @property
    def rolled_back_in_bake(self) -> bool:
        """Rolled back after reaching 100% (only possible when the controller bakes)."""
        return self.status == "rolled_back" and self.promoted_look is not None


def maturity_intervals(policy: Policy, stream: StreamSpec) -> int:
    """Intervals between a prediction and its counting (label delay vs. maturity)."""
    wait = max(stream.label_delay_s, policy.evaluation.maturity)
    return math.ceil(wait / policy.evaluation.interval - 1e-9) if wait > 0 else 0


def registry_from_stream(policy: Policy, stream: StreamSpec, seed: int = 0,
                         windows: int = 30) -> RegistryBaseline:
    """The baseline's KPI μ and σ over ``windows`` intervals at full traffic.

    This is what the registry would hold for the serving model if its KPIs had been logged
    per evaluation window before the rollout (the case study's control-chart baseline),
    with the planning figures of :func:`_planning_figures` (the gate does not read them;
    the forecast does).
    """
    stream = stream.per_interval(policy.evaluation.interval)
    spec = AggregateSpec.from_policy(policy)
    gen = StreamGenerator(stream, spec)
    values: dict[str, list[float]] = {k.name: [] for k in policy.kpis}
    for w in range(windows):
        rng = np.random.default_rng([seed, 10_000_019, w])
        data = gen.draw(rng, stream.baseline, stream.requests_per_interval)
        agg = data.requests.copy()
        agg.merge(data.labelled)
        for kpi in policy.kpis:
            values[kpi.name].append(kpi_value(kpi, agg))
    kpis = {}
    for kpi in policy.kpis:
        arr = np.array([x for x in values[kpi.name] if math.isfinite(x)])
        if arr.size >= 2:
            kpis[kpi.name] = replace(BaselineKpi(float(arr.mean()), float(arr.std(ddof=1)),
                                                 int(arr.size)), **_planning_figures(kpi, stream))
    return RegistryBaseline(kpis, prevalence=stream.prevalence, source=f"simulated:{stream.name}")


def _planning_figures(kpi: KpiSpec, stream: StreamSpec) -> dict[str, Any]:
    """The per-request figures ``kpigate plan`` and the forecast need, from the stream's
    truth (what the training run would log as ``<kpi>.unit_sd``, ``.rate``, ``.segments``):
    σ of log-latency (of latency for a plain mean), and a fairness rate's value in a typical
    segment with the number of segments."""
    b = stream.baseline
    if kpi.kind is KpiKind.QUANTILE or (kpi.kind is KpiKind.MEAN and kpi.source == LATENCY):
        sd = b.latency_log_sd if kpi.kind is KpiKind.QUANTILE or kpi.log \
            else b.latency_mean_s * math.sqrt(math.expm1(b.latency_log_sd ** 2))
        return {"unit_sd": sd}
    if kpi.kind is KpiKind.FAIRNESS and len(stream.segments) >= 2:
        fpr = b.base_fpr(stream.prevalence)
        rate = {"false_positive_rate": fpr, "true_negative_rate": 1 - fpr, "recall": b.recall,
                "false_negative_rate": 1 - b.recall}.get(kpi.metric or "")
        return {} if rate is None else {"rate": rate, "segments": len(stream.segments)}
    return {}


def _judge(rule: Rule, windows: dict[str, StageSample | None]) -> Judge:
    """The rule as the controller's judge (the latest window is the paper rule's input)."""

    def judge(policy: Policy, stage_index: int, elapsed: float, samples: list[StageSample],
              registry: RegistryBaseline | None) -> Decision:
        result = rule(policy, stage_index, elapsed, samples, windows["current"], registry)
        if result.decision is not None:
            return result.decision
        return Decision(action=result.action, reason=result.reason, stage_index=stage_index,
                        stage_name=policy.stages[stage_index].name)

    return judge


def _initial_state(policy: Policy, stream: StreamSpec) -> RolloutState:
    state = RolloutState(name=f"simulated-{stream.name}", model_name="simulated",
                         candidate_version="candidate", baseline_version="baseline",
                         candidate_uri="simulated:candidate", baseline_uri="simulated:baseline",
                         policy_file="(in memory)", tracking_uri="(none)", port=0)
    return transitions.initial(state, policy, 0.0)


def run_rollout(policy: Policy, stream: StreamSpec, rule: Rule, *, seed: int = 0,
                rep: int = 0, registry: RegistryBaseline | None = None,
                on_look: Callable[[Look], None] | None = None) -> Outcome:
    """Simulate one rollout until it ends (promotion, rollback) or the stream's horizon."""
    interval_s = policy.evaluation.interval
    stream = stream.per_interval(interval_s)
    if stream.horizon_intervals < 1:
        raise ValueError("the stream needs a horizon (evaluation intervals) of at least 1")
    spec = AggregateSpec.from_policy(policy)
    gen = StreamGenerator(stream, spec)
    delay = maturity_intervals(policy, stream)
    clock = _Clock()
    store = InMemoryStateStore(f"simulated-{stream.name}", clock=clock)
    store.save(_initial_state(policy, stream))
    source = InMemorySampleSource()
    windows: dict[str, StageSample | None] = {"current": None}
    controller = Controller(store=store, source=source, traffic=InMemoryTraffic(),
                            policy=policy, registry_baseline=registry, clock=clock,
                            judge=_judge(rule, windows),
                            forecast=isinstance(rule, KpigateRule))
    pgen = PairedGenerator(gen)
    strata: dict[int, StageSample] = {}
    pending: list[tuple[int, int, IntervalData, IntervalData, PairedAggregate | None]] = []
    served = exposed = 0
    outcome = Outcome("holding")
    for t in range(stream.horizon_intervals):
        stage_index = store.require().stage_index
        stage = policy.stages[stage_index]
        n = stream.requests_per_interval
        route = rng_for(seed, rep, t, stage_index, 2)
        if stage.shadow or stage.is_final:
            # Shadow: the candidate scores a copy of every request. Final stage (a bake
            # period after promotion): the baseline scores the copy.
            n_c, n_b = n, n
        else:
            n_c = int(route.binomial(n, stage.traffic / 100.0))
            n_b = n - n_c
        if stage.is_final:
            outcome.bake_looks += 1
        truth = stream.candidate_at(t, interval_s, _first_full_interval(outcome))
        paired_requests = paired_labelled = None
        if stage.shadow or stage.is_final:
            # Both roles answer the same requests: one joint draw, outcomes correlated.
            both = pgen.draw(rng_for(seed, rep, t, stage_index, PAIRED), stream.baseline,
                             truth, n, stream.correlation)
            base, cand = both.baseline, both.candidate
            paired_requests, paired_labelled = both.requests, both.labelled
        else:
            base = gen.draw(rng_for(seed, rep, t, stage_index, BASELINE), stream.baseline, n_b)
            cand = gen.draw(rng_for(seed, rep, t, stage_index, CANDIDATE), truth, n_c)
        served += n_c
        if not stage.shadow:
            # Counted when served: answers given while their labels are pending are exposure.
            exposed += n_c
        s = strata.setdefault(stage_index, StageSample(
            stage_index, RoleAggregate(spec), RoleAggregate(spec),
            PairedAggregate(spec.score_bins) if paired_requests is not None else None))
        s.baseline.merge(base.requests)
        s.candidate.merge(cand.requests)
        if s.paired is not None and paired_requests is not None:
            s.paired.merge(paired_requests)
        pending.append((t + delay, stage_index, base, cand, paired_labelled))
        # Window = what became visible in this interval (the paper's rule looks at it).
        window = StageSample(stage_index, base.requests.copy(), cand.requests.copy())
        still: list[tuple[int, int, IntervalData, IntervalData, PairedAggregate | None]] = []
        for due, idx, b, c, p in pending:
            if due <= t:
                strata[idx].baseline.merge(b.labelled)
                strata[idx].candidate.merge(c.labelled)
                target = strata[idx].paired
                if target is not None and p is not None:
                    target.merge(p)
                if idx == stage_index:
                    window.baseline.merge(b.labelled)
                    window.candidate.merge(c.labelled)
            else:
                still.append((due, idx, b, c, p))
        pending = still
        # The source hands out copies, as a real one reads fresh aggregates per look: the
        # evaluation records must not change when the strata grow.
        source.samples = [StageSample(i, x.baseline.copy(), x.candidate.copy(),
                                      None if x.paired is None else x.paired.copy())
                          for i, x in strata.items()]
        windows["current"] = window
        clock.now = (t + 1) * interval_s
        decision = controller.step()
        assert decision is not None  # in memory: always ready, never paused
        look = Look(t, stage_index, stage.name, decision.action, decision.reason, served,
                    exposed, decision)
        outcome.looks.append(look)
        if on_look is not None:
            on_look(look)
        state = store.require()
        outcome.final_stage = state.stage_index
        if outcome.promoted_look is None and policy.stages[state.stage_index].is_final:
            outcome.promoted_look = t
            outcome.exposed_at_promotion = exposed
        if state.phase is Phase.ROLLED_BACK or state.phase is Phase.ABORTED:
            outcome.status = "rolled_back"
            return outcome
        if state.phase.terminal:
            outcome.status = "promoted"
            return outcome
    if outcome.promoted_look is not None:
        outcome.status = "promoted"  # still baking at the horizon
    return outcome


def _first_full_interval(outcome: Outcome) -> int | None:
    """The first interval in which the candidate served all traffic (None: not yet)."""
    return None if outcome.promoted_look is None else outcome.promoted_look + 1


class _Clock:
    """The simulated time: the controller reads it, the loop advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
