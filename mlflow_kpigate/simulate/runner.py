"""Run a staged rollout against a synthetic stream: the loop a real controller runs, with
the router, collector and clock replaced by :mod:`.stream`.

Per evaluation interval: the current stage's traffic is split between the roles (in the
shadow stage the candidate scores a copy of every request), requests count at once,
labelled predictions join their stage's stratum once they are mature (label delay and
the policy's maturity, rounded up to whole intervals), then the rule decides and the
stage advances, stops (rollback) or stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.gate import Action, BaselineKpi, RegistryBaseline, StageSample
from mlflow_kpigate.gate.estimators import kpi_value
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.simulate.rules import Rule
from mlflow_kpigate.simulate.stream import IntervalData, StreamGenerator, StreamSpec, rng_for

BASELINE, CANDIDATE = 0, 1


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

    status: str  # promoted | rolled_back | holding
    looks: list[Look] = field(default_factory=list)
    final_stage: int = 0

    @property
    def exposed_requests(self) -> int:
        """Candidate responses users received before the run ended."""
        return self.looks[-1].exposed_requests if self.looks else 0


def maturity_intervals(policy: Policy, stream: StreamSpec) -> int:
    """Intervals between a prediction and its counting (label delay vs. maturity)."""
    wait = max(stream.label_delay_s, policy.evaluation.maturity)
    return math.ceil(wait / policy.evaluation.interval - 1e-9) if wait > 0 else 0


def registry_from_stream(policy: Policy, stream: StreamSpec, seed: int = 0,
                         windows: int = 30) -> RegistryBaseline:
    """The baseline's KPI μ and σ over ``windows`` intervals at full traffic.

    This is what the registry would hold for the serving model if its KPIs had been logged
    per evaluation window before the rollout (the case study's control-chart baseline).
    """
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
    for name, xs in values.items():
        arr = np.array([x for x in xs if math.isfinite(x)])
        if arr.size >= 2:
            kpis[name] = BaselineKpi(float(arr.mean()), float(arr.std(ddof=1)), int(arr.size))
    return RegistryBaseline(kpis, prevalence=stream.prevalence, source=f"simulated:{stream.name}")


def run_rollout(policy: Policy, stream: StreamSpec, rule: Rule, *, seed: int = 0,
                rep: int = 0, registry: RegistryBaseline | None = None,
                on_look: Callable[[Look], None] | None = None) -> Outcome:
    """Simulate one rollout until promotion, rollback or the stream's horizon."""
    if stream.horizon_intervals < 1:
        raise ValueError("the stream needs a horizon (evaluation intervals) of at least 1")
    spec = AggregateSpec.from_policy(policy)
    gen = StreamGenerator(stream, spec)
    interval_s = policy.evaluation.interval
    delay = maturity_intervals(policy, stream)
    strata: dict[int, StageSample] = {}
    pending: list[tuple[int, int, IntervalData, IntervalData]] = []
    stage_index, stage_start = 0, 0
    served = exposed = 0
    outcome = Outcome("holding")
    for t in range(stream.horizon_intervals):
        stage = policy.stages[stage_index]
        n = stream.requests_per_interval
        route = rng_for(seed, rep, t, stage_index, 2)
        if stage.shadow:
            n_c, n_b = n, n
        else:
            n_c = int(route.binomial(n, stage.traffic / 100.0))
            n_b = n - n_c
        base = gen.draw(rng_for(seed, rep, t, stage_index, BASELINE), stream.baseline, n_b)
        cand = gen.draw(rng_for(seed, rep, t, stage_index, CANDIDATE),
                        stream.candidate_at(t), n_c)
        served += n_c
        if not stage.shadow:
            exposed += n_c
        s = strata.setdefault(stage_index, StageSample(stage_index, RoleAggregate(spec),
                                                       RoleAggregate(spec)))
        s.baseline.merge(base.requests)
        s.candidate.merge(cand.requests)
        pending.append((t + delay, stage_index, base, cand))
        # Window = what became visible in this interval (the paper's rule looks at it).
        window = StageSample(stage_index, base.requests.copy(), cand.requests.copy())
        still: list[tuple[int, int, IntervalData, IntervalData]] = []
        for due, idx, b, c in pending:
            if due <= t:
                strata[idx].baseline.merge(b.labelled)
                strata[idx].candidate.merge(c.labelled)
                if idx == stage_index:
                    window.baseline.merge(b.labelled)
                    window.candidate.merge(c.labelled)
            else:
                still.append((due, idx, b, c))
        pending = still
        elapsed = (t - stage_start + 1) * interval_s
        result = rule(policy, stage_index, elapsed, list(strata.values()), window, registry)
        look = Look(t, stage_index, stage.name, result.action, result.reason, served, exposed,
                    result.decision)
        outcome.looks.append(look)
        if on_look is not None:
            on_look(look)
        if result.action is Action.ROLLBACK:
            outcome.status = "rolled_back"
            outcome.final_stage = stage_index
            return outcome
        if result.action is Action.PROMOTE:
            stage_index += 1
            stage_start = t + 1
            if policy.stages[stage_index].is_final:
                outcome.status = "promoted"
                outcome.final_stage = stage_index
                return outcome
    outcome.final_stage = stage_index
    return outcome
