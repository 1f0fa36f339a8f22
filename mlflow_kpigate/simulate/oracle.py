"""The oracle SPRT: the efficiency reference a gate that must *estimate* cannot beat.

It knows the scenario's truth (the :class:`~.stream.StreamSpec`'s baseline and candidate
:class:`~.stream.RoleModel`) and runs Wald's sequential probability ratio test of the known
baseline value against the known alternative, on the candidate's own data only, for every
decisive KPI of the policy whose true value is *worse* for the candidate:

* proportions (recall, precision, false-positive/negative rate, true-negative rate,
  accuracy, error rate): Bernoulli over the KPI's units (recall: the labelled positives,
  precision: the predicted positives, error rate: the requests), from the cumulative
  counts of all strata, LLR = x·ln(p1/p0) + (n−x)·ln((1−p1)/(1−p0));
* fairness KPIs: the same, summed over the segments whose rate differs (the likelihood
  ratio of all the KPI's segment data; one test at the KPI's α share);
* latency (quantile or mean): Gaussian log-latency with the known log-σ of each role, from
  the candidate's log moments;
* other kinds (AUC, F1, business values) have no oracle test.

It looks at the gate's intervals, uses the gate's per-KPI rollback α share
(:func:`~mlflow_kpigate.gate.engine.alpha_per_weight` × the KPI's ``alpha_weight`` ×
(1 − ``window_share``)) and β = 1 − ``evaluation.power``, and rolls back when any KPI's
LLR reaches ln((1−β)/α). It ignores the lower boundary and never promotes: it exists to
measure detection exposure. For a drifting candidate the alternative is its truth once
the drift is complete. It tests the truth, not the policy's margins, so for a guardrail it
answers an easier question than the gate's ("worse at all" instead of "worse by more than
the margin").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import norm

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.decision import Action, Decision
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.engine import alpha_per_weight
from mlflow_kpigate.kpis import Confusion, RoleAggregate
from mlflow_kpigate.policy import Direction, KpiKind, KpiSpec, Policy
from mlflow_kpigate.policy.vocabulary import LATENCY
from mlflow_kpigate.simulate.rules import RuleResult
from mlflow_kpigate.simulate.stream import RoleModel, StreamSpec

#: Confusion-matrix rates the oracle can test: (successes, units) of each.
_RATES = ("recall", "false_negative_rate", "false_positive_rate", "true_negative_rate",
          "precision", "accuracy", "positive_rate")


@dataclass(frozen=True)
class Bernoulli:
    """One rate's units in the candidate's data: known p0 (baseline) against p1."""

    rate: str  # one of _RATES or "error_rate"
    segment: str | None
    p0: float
    p1: float

    def llr(self, agg: RoleAggregate, segment_field: str) -> float:
        """Log-likelihood ratio of p1 against p0 given the counts in ``agg``."""
        if self.rate == "error_rate":
            x, n = agg.errors, agg.requests
        else:
            conf = agg.confusion if self.segment is None else \
                agg.segments.get(segment_field, {}).get(self.segment, Confusion())
            x, n = _successes(self.rate, conf)
        return (x * math.log(self.p1 / self.p0)
                + (n - x) * math.log((1 - self.p1) / (1 - self.p0)))


@dataclass(frozen=True)
class Gaussian:
    """Log-latency: known N(mu0, sd0²) against N(mu1, sd1²)."""

    mu0: float
    sd0: float
    mu1: float
    sd1: float

    def llr(self, agg: RoleAggregate, segment_field: str) -> float:
        """Log-likelihood ratio from the candidate's log-latency moments."""
        lat = agg.latency
        n = lat.n
        if n == 0:
            return 0.0
        mean = lat.mean_log()
        ss = lat.var_log() * (n - 1) if n > 1 else 0.0
        ss0 = ss + n * (mean - self.mu0) ** 2
        ss1 = ss + n * (mean - self.mu1) ** 2
        return (n * math.log(self.sd0 / self.sd1) + ss0 / (2 * self.sd0 ** 2)
                - ss1 / (2 * self.sd1 ** 2))


@dataclass(frozen=True)
class OracleTest:
    """One KPI's SPRT: the sum of its parts' LLRs against ln((1−β)/α)."""

    kpi: str
    parts: tuple[Bernoulli | Gaussian, ...]
    alpha: float
    threshold: float

    def llr(self, agg: RoleAggregate, segment_field: str) -> float:
        """The KPI's log-likelihood ratio on the candidate's data ``agg``."""
        return sum(p.llr(agg, segment_field) for p in self.parts)


def _successes(rate: str, c: Confusion) -> tuple[int, int]:
    """(x, n) of ``rate`` in ``c``: the counted units and how many of them are "hits"."""
    if rate == "recall":
        return c.tp, c.tp + c.fn
    if rate == "false_negative_rate":
        return c.fn, c.tp + c.fn
    if rate == "false_positive_rate":
        return c.fp, c.fp + c.tn
    if rate == "true_negative_rate":
        return c.tn, c.fp + c.tn
    if rate == "precision":
        return c.tp, c.tp + c.fp
    if rate == "accuracy":
        return c.tp + c.tn, c.tp + c.fp + c.tn + c.fn
    return c.tp + c.fp, c.tp + c.fp + c.tn + c.fn  # positive_rate


def true_rate(rate: str, model: RoleModel, stream: StreamSpec,
              segment: str | None = None) -> float:
    """The stream's true ``rate`` for ``model`` (overall, or in one segment)."""
    if rate == "error_rate":
        return model.error_rate
    prev = stream.prevalence
    fpr = segment_fprs(model, stream)
    if segment is None:
        total = sum(stream.segments.values())
        f = sum(w / total * fpr[s] for s, w in stream.segments.items())
    else:
        f = fpr[segment]
    r = model.recall
    values = {
        "recall": r,
        "false_negative_rate": 1 - r,
        "false_positive_rate": f,
        "true_negative_rate": 1 - f,
        "precision": prev * r / (prev * r + (1 - prev) * f),
        "accuracy": prev * r + (1 - prev) * (1 - f),
        "positive_rate": prev * r + (1 - prev) * f,
    }
    return values[rate]


def segment_fprs(model: RoleModel, stream: StreamSpec) -> dict[str, float]:
    """Each segment's false-positive rate, as :class:`~.stream.StreamGenerator` draws it."""
    base = model.base_fpr(stream.prevalence)
    return {s: min(base * model.fpr_multiplier.get(s, 1.0), 0.999) for s in stream.segments}


def _log_normal(model: RoleModel) -> tuple[float, float]:
    sd = model.latency_log_sd
    return math.log(model.latency_mean_s) - sd * sd / 2, sd


def _worse(kpi: KpiSpec, v0: float, v1: float) -> bool:
    if not (math.isfinite(v0) and math.isfinite(v1)) or math.isclose(v0, v1, rel_tol=1e-12,
                                                                     abs_tol=1e-15):
        return False
    return v1 < v0 if kpi.direction is Direction.HIGHER else v1 > v0


def _parts(kpi: KpiSpec, stream: StreamSpec, b: RoleModel, c: RoleModel
           ) -> tuple[Bernoulli | Gaussian, ...]:
    """The likelihood parts of ``kpi``'s data when its true value is worse, else ()."""
    if kpi.kind is KpiKind.PROPORTION and kpi.metric in (*_RATES, "error_rate"):
        rate = str(kpi.metric)
        p0, p1 = true_rate(rate, b, stream), true_rate(rate, c, stream)
        return (Bernoulli(rate, None, p0, p1),) if _worse(kpi, p0, p1) else ()
    if kpi.kind is KpiKind.FAIRNESS and kpi.metric in _RATES \
            and kpi.segment_by == stream.segment_field:
        rate = str(kpi.metric)
        r0 = {s: true_rate(rate, b, stream, s) for s in stream.segments}
        r1 = {s: true_rate(rate, c, stream, s) for s in stream.segments}
        index0 = min(r0.values()) / max(r0.values())
        index1 = min(r1.values()) / max(r1.values())
        if not _worse(kpi, index0, index1):
            return ()
        return tuple(Bernoulli(rate, s, r0[s], r1[s]) for s in stream.segments
                     if not math.isclose(r0[s], r1[s], rel_tol=1e-12))
    latency = (kpi.kind is KpiKind.QUANTILE and kpi.source == LATENCY) or \
        (kpi.kind is KpiKind.MEAN and kpi.source == LATENCY)
    if latency:
        (mu0, sd0), (mu1, sd1) = _log_normal(b), _log_normal(c)
        if kpi.kind is KpiKind.QUANTILE:
            z = float(norm.ppf(kpi.q if kpi.q is not None else 0.5))
            v0, v1 = math.exp(mu0 + sd0 * z), math.exp(mu1 + sd1 * z)
        elif kpi.log:
            v0, v1 = mu0, mu1
        else:
            v0, v1 = b.latency_mean_s, c.latency_mean_s
        return (Gaussian(mu0, sd0, mu1, sd1),) if _worse(kpi, v0, v1) else ()
    return ()


def oracle_tests(policy: Policy, stream: StreamSpec,
                 registry: RegistryBaseline | None = None) -> tuple[OracleTest, ...]:
    """The oracle's SPRTs for ``stream`` under ``policy`` (empty: nothing is worse)."""
    # The gate's pooled rollback share of each KPI: weighted Bonferroni over its checks, of
    # what the recent-window check leaves (evaluation.window_share).
    unit = alpha_per_weight(policy, registry) * (1.0 - policy.evaluation.window_share)
    beta = 1.0 - policy.evaluation.power
    alternative = stream.drifted()
    tests = []
    for kpi in policy.kpis:
        if not kpi.decides:
            continue
        parts = _parts(kpi, stream, stream.baseline, alternative)
        if parts:
            alpha = unit * kpi.alpha_weight
            tests.append(OracleTest(kpi.name, parts, alpha, math.log((1 - beta) / alpha)))
    return tuple(tests)


class OracleRule:
    """Wald's SPRT with the truth known; rolls back, never promotes (see the module).

    With ``accept_h0`` a KPI whose LLR falls to ln(β/(1−α)) is accepted as no worse and no
    longer tested (Wald's two boundaries): the instance then remembers what it accepted, so
    use one per run. Without it (the default, and the benchmark's oracle) it is stateless
    and tests until the horizon, like a gate that must eventually catch every worse
    candidate.
    """

    name = "oracle"

    def __init__(self, stream: StreamSpec, *, accept_h0: bool = False) -> None:
        self.stream = stream
        self.accept_h0 = accept_h0
        self._accepted: set[str] = set()

    def __call__(self, policy: Policy, stage_index: int, stage_elapsed: float,
                 samples: Sequence[StageSample], window: StageSample | None,
                 registry: RegistryBaseline | None) -> RuleResult:
        stage = policy.stages[stage_index]
        tests = tuple(t for t in oracle_tests(policy, self.stream, registry)
                      if t.kpi not in self._accepted)
        if not samples or not tests:
            return RuleResult(Action.HOLD, "hold: the oracle has nothing (left) to test")
        cand = samples[0].candidate.copy()
        for sample in samples[1:]:
            cand.merge(sample.candidate)
        llrs = {t.kpi: t.llr(cand, self.stream.segment_field) for t in tests}
        alpha, upper = tests[0].alpha, tests[0].threshold  # one α share for every KPI
        crossed = [t.kpi for t in tests if llrs[t.kpi] >= upper]
        if self.accept_h0 and not crossed:
            lower = math.log((1.0 - policy.evaluation.power) / (1 - alpha))
            self._accepted.update(k for k, llr in llrs.items() if llr <= lower)
        meta = {"oracle_llr": llrs, "oracle_threshold": upper, "oracle_alpha": alpha,
                "oracle_accepted": sorted(self._accepted)}
        if crossed:
            action = Action.ROLLBACK
            reason = (f"rollback: oracle SPRT of {', '.join(crossed)} crossed "
                      f"ln((1-β)/α) = {upper:.3f}")
        else:
            action = Action.HOLD
            reason = "hold: no oracle LLR at its boundary (the oracle never promotes)"
        decision = Decision(action=action, reason=reason, stage_index=stage_index,
                            stage_name=stage.name, meta=meta)
        return RuleResult(action, reason, decision)
