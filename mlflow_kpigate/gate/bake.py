"""The bake's judge: after promotion, roll back if Δ regresses; promote when the bake ends.

While a rollout bakes, the candidate serves every request and the previous version scores
a shadow copy of each, so the bake is a stratum of its own (the final stage's index):
its samples are never mixed with the canary stages'. At every evaluation, for every
watched KPI (:attr:`~mlflow_kpigate.policy.Policy.baked_kpis`, critical and guardrail),
the gate's own estimator measures Δ over the bake stratum, and the change detector of
:mod:`.change_detector` takes the increment since the last evaluation:

* **rollback** as soon as a KPI's detector reaches its threshold (``A·J/w``: ``A`` the ARL
  target in evaluations, ``bake.arl / evaluation.interval``; ``J`` the watched KPIs);
* **promote** once ``bake.duration`` has passed without an alarm — provided every watched
  KPI's detector has taken at least one increment (fail closed: a bake that saw no data
  for a KPI holds, alerting once, rather than calling it "no regression");
* **hold** otherwise.

The bake is paired (both versions answer every request): where the sample carries the
joint outcomes the estimator's variances are the paired ones, so the detector's increments
have their actual variance instead of an upper bound. KPIs of values that describe the
served answer (business values) cannot compare the versions here and are reported as
``not_measurable``, neither watched nor waited for.

The detectors' state rides in the decision (``meta["bake"]["streams"]``): the controller
hands the previous decision's back (:func:`bake_streams`), so it is saved atomically with
the state, survives any restart, and a replay re-derives it evaluation by evaluation.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.core.bake import fmt_e
from mlflow_kpigate.core.decision import Action, Check, Decision, Evidence, Verdict
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate import change_detector as cd
from mlflow_kpigate.gate.estimators import measure
from mlflow_kpigate.gate.strata import Strata, not_measurable_reason
from mlflow_kpigate.policy import KpiKind, KpiSpec, Policy, Role

#: The ``stage_name`` of bake decisions (the report's and replay's stage label).
BAKE_STAGE = "bake"


@dataclass(frozen=True)
class Watched:
    """One stream of a watched KPI: its detector, weight and alarm threshold (in logs)."""

    kpi: str
    stream: cd.Stream
    weight: float
    log_threshold: float

    @property
    def alarm(self) -> bool:
        """Whether the detector has reached its threshold."""
        return self.stream.log_statistic >= self.log_threshold

    def to_dict(self) -> dict[str, Any]:
        """The stream's state with what it is judged against."""
        log_stat = self.stream.log_statistic
        return {"kpi": self.kpi, **self.stream.to_dict(), "weight": self.weight,
                "log_threshold": self.log_threshold,
                "log_statistic": log_stat if math.isfinite(log_stat) else None}


def bake_streams(decision: Mapping[str, Any] | Decision | None, stage_index: int
                 ) -> dict[tuple[str, str], cd.Stream]:
    """The detectors a previous bake decision left for ``stage_index``, by (kpi, label).

    Anything else (no decision, a canary decision) gives none: the detectors start fresh.
    """
    data = decision.to_dict() if isinstance(decision, Decision) else decision
    if not data or int(data.get("stage_index", -1)) != stage_index:
        return {}
    bake = (data.get("meta") or {}).get("bake")
    if not isinstance(bake, Mapping):
        return {}
    return {(str(s["kpi"]), str(s["label"])): cd.Stream.from_dict(s)
            for s in bake.get("streams") or ()}


def _log_threshold(kpi: KpiSpec, weight: float, log_a_j: float, log_n: float) -> float:
    """A stream's alarm level in logs: ``A·J/(w·N)`` (its share of the bake's false-alarm
    bound) for a fairness KPI's confidence sequences; ``2·A·J/w`` for a change detector,
    which shares its KPI's budget with the whole-bake sequence (:func:`_whole_bake`)."""
    if kpi.kind is KpiKind.FAIRNESS:
        return log_a_j - math.log(weight) - log_n
    return log_a_j - math.log(weight) + math.log(2.0)


def _whole_bake(kpi: KpiSpec, meas: Any, log_a_j: float, log_n: float
                ) -> tuple[float, float, float, str] | None:
    """The worst test's (log M, log level, Δ, label) of the confidence sequence on the whole
    bake's estimate, when it alarms (else None).

    The detector skips evaluations whose plug-in information did not grow; a regression
    that inflates the variance (a candidate whose hits become the baseline's misses turns
    the paired correlation negative) would be skipped for as long as that lasts. This
    check needs no increments: at level N/(2·A·J) per KPI it keeps the bake's N/A bound.
    """
    level = log_a_j - log_n + math.log(2.0)
    alpha = math.exp(-level)
    worst = None
    for test in meas.rollback_tests:
        s = cd.sequence_stream(None, test.label or kpi.name, test.delta, test.variance,
                               meas.rollback_threshold, meas.scale, alpha)
        if s is not None and s.log_statistic >= level and (
                worst is None or s.log_statistic > worst[0]):
            worst = (s.log_statistic, level, test.delta, s.label)
    return worst


def _watch(kpi: KpiSpec, strata: Strata, previous: Mapping[tuple[str, str], cd.Stream],
           log_a_j: float, log_n: float) -> tuple[Evidence, list[Watched]]:
    """Measure ``kpi`` over the bake stratum and step its detectors.

    A fairness KPI's tests are judged by confidence sequences on the bake's cumulative
    estimate, not by change detectors (its baseline index is re-chosen from the data:
    :mod:`.change_detector`, "statistics that are not sums of increments").
    """
    critical = kpi.role is Role.CRITICAL
    meas = measure(kpi, strata, 0.0 if critical else 1.0, 1.0)
    mine = [s for (name, _), s in previous.items() if name == kpi.name]
    several = kpi.kind is KpiKind.FAIRNESS
    labels = [s.label for s in mine]
    watched: list[Watched] = []
    for test in meas.rollback_tests:
        label = test.label or kpi.name
        old = previous.get((kpi.name, label))
        rank = 1 + (labels.index(label) if label in labels else len(labels))
        weight = cd.fairness_weight(rank) if several else 1.0
        log_level = _log_threshold(kpi, weight, log_a_j, log_n)
        if several:
            stream = cd.sequence_stream(old, label, test.delta, test.variance,
                                        meas.rollback_threshold, meas.scale,
                                        math.exp(-log_level))
        elif old is not None:
            stream = cd.step(old, test.delta, test.variance, meas.rollback_threshold,
                             meas.scale)
        else:
            stream = cd.start(label, test.delta, test.variance, meas.rollback_threshold,
                              meas.scale)
        if stream is None:
            continue
        if label not in labels:
            labels.append(label)
            mine.append(stream)
        watched.append(Watched(kpi.name, stream, weight, log_level))
    # Streams without a usable estimate this time keep their state.
    seen = {w.stream.label for w in watched}
    for s in mine:
        if s.label not in seen:
            weight = cd.fairness_weight(1 + labels.index(s.label)) if several else 1.0
            watched.append(Watched(kpi.name, s, weight,
                                   _log_threshold(kpi, weight, log_a_j, log_n)))
    base: dict[str, Any] = dict(kpi=kpi.name, kind=kpi.kind.value, role=kpi.role.value,
                                direction=kpi.direction.value,
                                margin=str(kpi.margin) if kpi.margin else None,
                                limit=kpi.limit, statistic=meas.statistic,
                                baseline_value=meas.baseline_value,
                                candidate_value=meas.candidate_value, samples=meas.samples)
    whole = None if several else _whole_bake(kpi, meas, log_a_j, log_n)
    if whole is not None:
        log_m, log_level, delta_w, _ = whole
        return Evidence(
            verdict=Verdict.WORSE, delta=delta_w, rollback_threshold=meas.rollback_threshold,
            reason=(f"{kpi.name} regressed during the bake: Δ {delta_w:+.4g} over the bake "
                    f"against threshold {meas.rollback_threshold:+.4g} (confidence sequence "
                    f"over the whole bake {fmt_e(log_m)} of threshold {fmt_e(log_level)})"),
            **base), watched
    worst = max(watched, key=lambda w: w.stream.log_statistic - w.log_threshold, default=None)
    if worst is None or worst.stream.steps == 0:
        why = meas.missing or "first look at the bake; the detector starts from here"
        return Evidence(verdict=Verdict.INSUFFICIENT_DATA, reason=f"{kpi.name}: {why}",
                        **base), watched
    where = f" [{worst.stream.label}]" if several else ""
    delta = next((t.delta for t in meas.rollback_tests if (t.label or kpi.name)
                  == worst.stream.label), math.nan)
    what, steps = ("confidence sequence", "looks") if several else ("detector", "increments")
    level = (f"{what} {fmt_e(worst.stream.log_statistic)} of threshold "
             f"{fmt_e(worst.log_threshold)} after {worst.stream.steps} {steps}")
    if worst.alarm:
        verdict = Verdict.WORSE
        reason = (f"{kpi.name} regressed during the bake{where}: Δ {delta:+.4g} over the "
                  f"bake against threshold {meas.rollback_threshold:+.4g} ({level})")
    else:
        verdict = Verdict.NO_REGRESSION
        reason = f"{kpi.name}: no regression detected ({level}; Δ {delta:+.4g} over the bake)"
    return Evidence(verdict=verdict, reason=reason, delta=delta,
                    rollback_threshold=meas.rollback_threshold, **base), watched


def _bake_evaluations(policy: Policy) -> float:
    """N: the evaluations a bake lasts (at least 1)."""
    return max(math.ceil(policy.bake.duration / policy.evaluation.interval - 1e-9), 1)


def judge_bake(policy: Policy, stage_index: int, elapsed: float,
               samples: Sequence[StageSample],
               previous: Mapping[tuple[str, str], cd.Stream] | None = None) -> Decision:
    """Rollback / promote / hold for a rollout baking at ``stage_index`` for ``elapsed`` s.

    ``samples`` are the rollout's stage samples (only the bake stratum, ``stage_index``,
    is used); ``previous`` the detectors of the previous bake evaluation
    (:func:`bake_streams`).
    """
    bake = policy.bake
    if not bake.enabled:
        raise ValueError("the policy has no bake; nothing to judge after promotion")
    if not (0 <= stage_index < len(policy.stages) and policy.stages[stage_index].is_final):
        raise ValueError(f"stage_index {stage_index} is not the policy's final stage")
    kpis = policy.baked_kpis
    steps = cd.threshold_steps(bake.arl, policy.evaluation.interval)
    log_a_j = math.log(steps * max(len(kpis), 1))
    log_n = math.log(_bake_evaluations(policy))
    stratum = [s for s in samples if s.stage_index == stage_index]
    strata = Strata(stratum, frozenset({stage_index}))
    evidence: list[Evidence] = []
    watched: list[Watched] = []
    for kpi in kpis:
        if kpi.depends_on_served_answer:
            # Both roles' rows carry the served (candidate's) outcome: nothing to compare,
            # and nothing the bake could wait for.
            evidence.append(Evidence(
                verdict=Verdict.NOT_MEASURABLE, reason=not_measurable_reason(kpi, bake=True),
                kpi=kpi.name, kind=kpi.kind.value, role=kpi.role.value,
                direction=kpi.direction.value,
                margin=str(kpi.margin) if kpi.margin else None, limit=kpi.limit))
            continue
        ev, ws = _watch(kpi, strata, previous or {}, log_a_j, log_n)
        evidence.append(ev)
        watched += ws
    done = elapsed >= bake.duration
    checks = (Check("bake seconds", elapsed, bake.duration, done),)
    meta = {"bake": {"elapsed_s": elapsed, "duration_s": bake.duration,
                     "arl_s": bake.arl, "threshold_steps": steps,
                     "streams": [w.to_dict() for w in watched]}}
    common: dict[str, Any] = dict(stage_index=stage_index, stage_name=BAKE_STAGE,
                                  evidence=tuple(evidence), checks=checks, meta=meta,
                                  rollback_tests=len(kpis))
    of = f"{format_duration(elapsed)} of the {format_duration(bake.duration)} bake"
    alarms = [e for e in evidence if e.verdict is Verdict.WORSE]
    if alarms:
        return Decision(Action.ROLLBACK, "rollback after promotion: "
                        + "; ".join(e.reason for e in alarms) + f" ({of})",
                        alert=True, **common)
    highest = max(watched, key=lambda w: w.stream.log_statistic - w.log_threshold,
                  default=None)
    top = ("" if highest is None or highest.stream.steps == 0 else
           f"; highest detector {fmt_e(highest.stream.log_statistic)} of threshold "
           f"{fmt_e(highest.log_threshold)} ({highest.kpi})")
    blind = [e.kpi for e in evidence if e.verdict is Verdict.INSUFFICIENT_DATA]
    if done and not blind:
        return Decision(Action.PROMOTE, f"promoted: baked {format_duration(elapsed)} with no "
                        f"regression detected in {len(kpis)} KPIs{top}", **common)
    if done:
        return Decision(Action.HOLD, f"holding at the end of the bake ({of}): no data yet "
                        f"to watch {', '.join(blind)}; the bake ends once it has some",
                        alert=True, **common)
    left = format_duration(max(bake.duration - elapsed, 0.0))
    return Decision(Action.HOLD, f"baking: {of}, {left} left; no regression detected"
                    f"{top}", **common)


def hold_without_data(policy: Policy, stage_index: int, elapsed: float,
                      previous: Decision | Mapping[str, Any] | None, why: str) -> Decision:
    """A bake hold for missing metrics that carries the detectors on unchanged."""
    streams = bake_streams(previous, stage_index)
    kpis = policy.baked_kpis
    steps = cd.threshold_steps(policy.bake.arl, policy.evaluation.interval)
    log_a_j = math.log(steps * max(len(kpis), 1))
    log_n = math.log(_bake_evaluations(policy))
    kept = []
    for kpi in kpis:
        mine = [s for (name, _), s in streams.items() if name == kpi.name]
        for rank, s in enumerate(mine, 1):
            weight = cd.fairness_weight(rank) if kpi.kind is KpiKind.FAIRNESS else 1.0
            kept.append(Watched(kpi.name, s, weight,
                                _log_threshold(kpi, weight, log_a_j, log_n)).to_dict())
    meta = {"metrics_unavailable": why,
            "bake": {"elapsed_s": elapsed, "duration_s": policy.bake.duration,
                     "arl_s": policy.bake.arl, "threshold_steps": steps, "streams": kept}}
    return Decision(Action.HOLD, f"baking: metrics unavailable ({why}); the bake does not "
                    "end without data", stage_index=stage_index, stage_name=BAKE_STAGE,
                    alert=True, meta=meta)
