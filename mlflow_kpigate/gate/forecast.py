"""Time to decision: when each remaining stage could promote an equal candidate, and how
long a candidate at −detect would be served before its rollback.

Pure, like the gate: from the policy, the current stage and how long it has run, per-KPI
models of how the evidence grows (:mod:`.forecast_models`) and the traffic
(:mod:`.forecast_traffic`), it computes a :class:`~mlflow_kpigate.core.forecast.Forecast`.
The controller asks it after every gate evaluation; ``kpigate plan --traffic`` and
``mlflow deployments create -C expected_rps`` ask it before the rollout, with registry
figures instead of measurements.

**The formula.** A decisive KPI's information is I(t) = κ · H(t) (``forecast_models``),
H the effective units matured by t. Units of a stage arrive at R · share · u per second
(R live requests per second, share the role's share of them, u the KPI's units per
request) and count once their label has arrived, L = the label lag after the request
(0 for request-based KPIs). A stage's predictions join its own stratum, so a stage that
started less than L ago still adds to the previous stage's stratum. Then, per stage j
starting at t_j:

* **equal candidate** (Δ = 0 from now on): its promotion bound δ̂ − r(v) clears −s_j·m
  once E[δ̂] − r(v) ≥ −s_j·m and the guard's E[δ̂] > −m, where E[δ̂] carries the
  candidate's current estimate with the weight of the evidence it rests on
  (:func:`~.forecast_bounds.equal_clears`; before any estimate, and for one test, this
  is r(v) ≤ s_j·m: the information I*_j = 1 / v* at which the one-sided radius is s_j·m,
  α_promote and τ² tuned to m as the gate, the v* of the gate's ``samples_needed``).
  The stage promotes at the latest of: every decisive KPI clearing, ``min_dwell``,
  ``min_samples.requests`` (counted at once) and ``min_samples.labelled`` (after L),
  rounded up to the next evaluation;
* **at −detect**: a candidate worse by the KPI's ``detect`` (default 1.75 × margin) sits
  d = detect − m_r·m below the rollback threshold; its upper bound falls below the
  threshold when r(v) ≤ d (the KPI's α_rollback share split over its tests, τ² tuned to d,
  as the gate), at I*_r = 1 / v*(d). The stage's figure is the slowest KPI, with traffic
  staying at stage j (a worse candidate is not promoted); ``on_timeout: rollback`` caps it
  at ``max_duration``.

Both take the estimate at its expected value: they are the times the *expected* bound
crosses. The gate decides at the first look its random bound crosses; for a Brownian
estimate and this boundary the mean of that first passage is 0.94–1.02 times the
information of the expected crossing and its median 0.77–0.94 times
(``benchmarks/forecast_first_passage.py``, docs/statistics.md), so the forecast estimates
the mean time to decision. ``tests/test_forecast_accuracy.py`` and the low-traffic
benchmark compare it with the gate's simulated decisions.

Stage j + 1 starts when stage j promotes; a stage whose ``max_duration`` passes first
keeps holding (``hold_and_alert``: the gate still promotes once the evidence is there),
promotes then (``promote_if_no_guardrail_fails``) or ends the rollout (``rollback``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.forecast import INF, MIN_DWELL, MIN_SAMPLES, Forecast, KpiEta, StageEta
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.forecast_bounds import equal_clears, info_to_detect, info_to_promote
from mlflow_kpigate.gate.forecast_models import KpiModel, kpi_models, total_effective
from mlflow_kpigate.gate.forecast_traffic import Traffic
from mlflow_kpigate.policy import OnTimeout, Policy, Stage

#: Past this the forecast says "never at this traffic" (a hundred years, in seconds).
HORIZON_S = 100 * 365 * 86400.0


@dataclass(frozen=True)
class _Window:
    """A stage's traffic, in seconds relative to the forecast's time."""

    stage_index: int
    start: float
    end: float


def shares(stage: Stage) -> tuple[float, float]:
    """(candidate, baseline) shares of the live requests (shadow: both score them all)."""
    if stage.shadow:
        return 1.0, 1.0
    p = stage.traffic / 100.0
    return p, 1.0 - p


def _units_at(model: KpiModel, policy: Policy, traffic: Traffic,
              windows: Sequence[_Window], x: float) -> list[tuple[float, float]]:
    """Each stratum's (candidate, baseline) units matured by relative time ``x``."""
    lag = traffic.label_lag_s if model.labelled else 0.0
    lo, hi = -lag, x - lag  # already counted: requests before −lag
    strata = {i: [c, b] for i, c, b in model.units}
    if hi > lo:
        for w in windows:
            overlap = min(w.end, hi) - max(w.start, lo)
            if overlap <= 0:
                continue
            pc, pb = shares(policy.stages[w.stage_index])
            cell = strata.setdefault(w.stage_index, [0.0, 0.0])
            cell[0] += traffic.request_rate * pc * model.per_request[0] * overlap
            cell[1] += traffic.request_rate * pb * model.per_request[1] * overlap
    return [(c, b) for c, b in strata.values()]


def _first(ok: Callable[[float], bool], lo: float) -> float:
    """The first relative time ≥ ``lo`` at which ``ok`` holds (it stays true once it does;
    INF: not within :data:`HORIZON_S`)."""
    if ok(lo):
        return lo
    step = 3600.0
    while not ok(lo + step):
        if step > HORIZON_S:
            return INF
        step *= 2
    a, b = (lo + step / 2 if step > 3600.0 else lo), lo + step
    while b - a > 1.0:
        mid = (a + b) / 2
        if ok(mid):
            b = mid
        else:
            a = mid
    return b


def _on_grid(x: float, interval: float, earliest: float) -> float:
    """The first evaluation at or after ``x`` (evaluations at whole intervals from now)."""
    if not math.isfinite(x):
        return INF
    return max(earliest, interval * math.ceil(x / interval - 1e-9))


def _requirements(policy: Policy, j: int, start: float, counts: tuple[int, int],
                  traffic: Traffic) -> list[tuple[float, str]]:
    """(time, what) of the stage's min dwell and min samples, relative times."""
    stage = policy.stages[j]
    pc = shares(stage)[0]
    rate = traffic.request_rate * pc
    out = [(start + stage.min_dwell, MIN_DWELL)]
    req_now, lab_now = counts
    more = stage.min_samples.requests - req_now
    if more > 0:
        out.append((max(start, 0.0) + more / rate if rate > 0 else INF, MIN_SAMPLES))
    more = stage.min_samples.labelled - lab_now
    if more > 0 and any(k.needs_labels for k in policy.kpis if k.decides):
        lag = traffic.label_lag_s
        flow = rate * traffic.labels_per_request
        out.append((lag + max(start, -lag) + more / flow if flow > 0 else INF, MIN_SAMPLES))
    return out


def project(policy: Policy, stage_index: int, stage_elapsed: float,
            models: Sequence[KpiModel], traffic: Traffic, *, at: float = 0.0,
            counts: tuple[int, int] = (0, 0), notes: Sequence[str] = ()) -> Forecast:
    """The forecast from the current stage on (see the module docstring).

    ``counts`` are the candidate's requests and labelled predictions in the current stage
    so far (its ``min_samples``).
    """
    interval = policy.evaluation.interval
    windows: list[_Window] = []
    if stage_index > 0:
        windows.append(_Window(stage_index - 1, -INF, -stage_elapsed))
    rows: list[StageEta] = []
    out_notes = list(notes)
    start = -stage_elapsed
    for j in range(stage_index, len(policy.stages) - 1):
        stage = policy.stages[j]
        current = j == stage_index
        open_ = [*windows, _Window(j, start, INF)]
        earliest = interval if current else start + interval
        etas: list[KpiEta] = []
        needs: list[tuple[float, str]] = _requirements(
            policy, j, start, counts if current else (0, 0), traffic)
        caught: list[tuple[float, str]] = []
        for m in models:
            t_eq, t_r = _kpi_times(m, policy, stage, traffic, open_, max(start, 0.0))
            needs.append((t_eq, m.kpi))
            caught.append((t_r, m.kpi))
            more, rate = _more_units(m, policy, traffic, open_, j, t_eq) if current \
                else (math.nan, math.nan)
            etas.append(KpiEta(m.kpi, m.unit, _on_grid(t_eq, interval, earliest),
                               _caught(t_r, interval, earliest, current), more, rate))
        t_equal, binds = max(needs, key=lambda n: n[0])
        t_equal = _on_grid(t_equal, interval, earliest)
        t_margin, slowest = max(caught, key=lambda n: n[0]) if caught else (INF, "")
        t_margin = _caught(t_margin, interval, earliest, current)
        limit = stage.max_duration
        if limit is not None and stage.on_timeout is OnTimeout.ROLLBACK:
            t_margin = min(t_margin, _on_grid(start + limit, interval, earliest))
        rows.append(StageEta(j, stage.describe(), start, t_equal, t_margin, binds, slowest,
                             limit, stage.on_timeout.value, tuple(etas)))
        if not math.isfinite(t_equal):
            out_notes.append(f"{stage.describe()} does not decide at this traffic; later "
                             "stages are not forecast")
            break
        nxt = t_equal
        if limit is not None and t_equal - start > limit:
            if stage.on_timeout is OnTimeout.ROLLBACK:
                out_notes.append(f"{stage.describe()} reaches its max_duration first and "
                                 "rolls back; later stages are not reached")
                break
            if stage.on_timeout is OnTimeout.PROMOTE_IF_NO_GUARDRAIL_FAILS:
                nxt = _on_grid(start + limit, interval, earliest)
        windows.append(_Window(j, start, nxt))
        start = nxt
    return Forecast(at, stage_index, traffic.request_rate, traffic.labels_per_request,
                    traffic.label_lag_s, traffic.basis, tuple(rows), tuple(out_notes))


def _kpi_times(model: KpiModel, policy: Policy, stage: Stage, traffic: Traffic,
               windows: Sequence[_Window], lo: float) -> tuple[float, float]:
    """(equal candidate clears, −detect caught) for one KPI, unrounded relative times."""
    need_p, need_r = info_to_promote(model, stage), info_to_detect(model)

    def units(x: float) -> list[tuple[float, float]]:
        return _units_at(model, policy, traffic, windows, x)

    t_eq = _first(lambda x: equal_clears(model, stage, units(x), need_p), lo) \
        if math.isfinite(need_p) else INF
    t_r = _first(lambda x: model.info_rollback * total_effective(units(x), model.merged)
                 >= need_r, lo) if math.isfinite(need_r) else INF
    return t_eq, t_r


def _caught(x: float, interval: float, earliest: float, current: bool) -> float:
    """A rollback time on the evaluation grid; 0 when the evidence already suffices now."""
    if current and x <= 0:
        return 0.0
    return _on_grid(x, interval, earliest)


def _more_units(model: KpiModel, policy: Policy, traffic: Traffic,
                windows: Sequence[_Window], j: int, until: float) -> tuple[float, float]:
    """Candidate units the KPI gains from now until ``until``, and their rate in stage j."""
    pc = shares(policy.stages[j])[0]
    rate = traffic.request_rate * pc * model.per_request[0]
    if not math.isfinite(until) or until <= 0:
        return (0.0 if until <= 0 else math.nan), rate
    now = sum(c for c, _ in _units_at(model, policy, traffic, windows, 0.0))
    then = sum(c for c, _ in _units_at(model, policy, traffic, windows, until))
    return then - now, rate


def forecast(policy: Policy, stage_index: int, stage_elapsed: float,
             samples: Sequence[StageSample], registry: RegistryBaseline | None,
             traffic: Traffic, *, at: float = 0.0) -> Forecast:
    """The forecast at a look of a rollout: KPI models from its samples (registry figures
    for KPIs without an estimate yet), from the current stage on."""
    models, notes = kpi_models(policy, stage_index, samples, registry, traffic)
    cur = next((s for s in samples if s.stage_index == stage_index), None)
    counts = (cur.candidate.requests, cur.candidate.labelled) if cur else (0, 0)
    return project(policy, stage_index, stage_elapsed, models, traffic, at=at,
                   counts=counts, notes=notes)


def plan_forecast(policy: Policy, registry: RegistryBaseline, request_rate: float,
                  label_delay_s: float, basis: str) -> Forecast:
    """The forecast before a rollout starts: registry figures at ``request_rate``."""
    lag = max(label_delay_s, policy.evaluation.maturity)
    traffic = Traffic(request_rate, registry.label_coverage, lag, basis)
    return forecast(policy, 0, 0.0, (), registry, traffic)
