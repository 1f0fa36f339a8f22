"""Re-judge a rollout's recorded evaluations: with its own policy, or with another one.

Every evaluation keeps what the gate was given (:class:`~mlflow_kpigate.core.evaluation.
Evaluation`), and the gate is a pure function, so :func:`replay` can ask it again:

* with the rollout's own policy every decision must come out *identical* (the same
  action, reason, and per-KPI evidence to the last digit) — a check that the record is
  complete and the gate deterministic. The time-to-decision forecast the controller keeps
  in ``meta["forecast"]`` is not the gate's output (it depends on rates over time) and is
  left out of the comparison (:func:`gate_output`);
* with another policy it shows where that policy would have decided differently: the
  first divergence and, per KPI, how the evidence reads under it.

A replay judges the evidence the real rollout gathered, at the stage and time it was
gathered: after a first divergence (say, an earlier promotion) the real rollout would
have continued differently, so later comparisons say what the other policy thinks of
that evidence, not what would have happened. Evaluations without kept inputs (recorded
by an older kpigate) and holds for missing metrics (no samples) are reported, not
re-judged.

Evaluations made while the rollout baked (after promotion) are re-judged by the bake's
change detector (:func:`~mlflow_kpigate.gate.judge_bake`), in order: each one gets the
detectors the *replayed* previous bake evaluation left (a hold for missing metrics passes
them on), so the detector state is re-derived from the recorded samples rather than
copied from the record. A policy without a bake cannot judge them (``not_replayable``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mlflow_kpigate.core.decision import Decision, Evidence
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.evaluation import Evaluation, policy_digest
from mlflow_kpigate.core.forecast import META_KEY
from mlflow_kpigate.gate import bake_streams, evaluate, judge_bake
from mlflow_kpigate.gate.change_detector import Stream
from mlflow_kpigate.policy import Policy


class Outcome(str, Enum):
    """How a replayed evaluation compares with the recorded one."""

    IDENTICAL = "identical"  # the same decision, to the last digit
    SAME_ACTION = "same_action"  # the same action, different evidence or reason
    DIFFERENT = "different"  # another action
    NO_DATA = "no_data"  # a hold for missing metrics: nothing to re-judge
    NOT_REPLAYABLE = "not_replayable"  # recorded before inputs were kept


@dataclass(frozen=True)
class KpiChange:
    """One KPI whose verdict or interval reads differently in the replay."""

    kpi: str
    recorded: Evidence | None
    replayed: Evidence | None


@dataclass(frozen=True)
class Rejudged:
    """One recorded evaluation and what the gate says of its inputs now."""

    evaluation: Evaluation
    replayed: Decision | None
    outcome: Outcome
    changes: tuple[KpiChange, ...] = ()

    @property
    def recorded(self) -> Decision:
        """The decision the rollout took."""
        return self.evaluation.decision


@dataclass(frozen=True)
class Replay:
    """The result of :func:`replay`."""

    policy_digest: str
    recorded_digests: tuple[str, ...]
    results: tuple[Rejudged, ...]

    @property
    def same_policy(self) -> bool:
        """Whether the replay's policy is the one every evaluation was recorded under."""
        return self.recorded_digests == (self.policy_digest,)

    def count(self, outcome: Outcome) -> int:
        """How many evaluations had ``outcome``."""
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def first_divergence(self) -> Rejudged | None:
        """The first evaluation whose action differs (None if the actions all agree)."""
        return next((r for r in self.results if r.outcome is Outcome.DIFFERENT), None)

    @property
    def reproduced(self) -> bool:
        """Whether every re-judged decision is identical to the recorded one."""
        return all(r.outcome in (Outcome.IDENTICAL, Outcome.NO_DATA, Outcome.NOT_REPLAYABLE)
                   for r in self.results)


def is_bake(evaluation: Evaluation) -> bool:
    """Whether ``evaluation`` was made while the rollout baked (its decision says so)."""
    return "bake" in evaluation.decision.meta


def check_compatible(evaluations: Sequence[Evaluation], policy: Policy) -> None:
    """``UsageError`` when ``policy`` cannot judge the recorded evidence, naming why."""
    baked = [e for e in evaluations if is_bake(e)]
    if baked and policy.bake.enabled and baked[0].stage_index != len(policy.stages) - 1:
        raise UsageError(f"--policy: the rollout baked after its stage "
                         f"{baked[0].stage_index + 1}, the final one; give a policy with "
                         f"{baked[0].stage_index + 1} stages")
    reached = max((e.stage_index for e in evaluations if not is_bake(e)), default=0)
    if reached >= len(policy.stages) - 1:
        raise UsageError(f"--policy: it has {len(policy.stages)} stages, but the rollout "
                         f"was evaluated at stage {reached + 1}; give a policy with at least "
                         f"{reached + 2} stages")
    recorded = next((s for e in evaluations for s in e.samples), None)
    if recorded is None:
        return
    spec = recorded.candidate.spec
    for field, have, want in (("segment field", spec.segment_fields, policy.segment_fields),
                              ("value", spec.value_names, policy.value_names)):
        missing = sorted(set(want) - set(have))
        if missing:
            kpi = next((k.name for k in policy.kpis
                        if missing[0] in (k.segment_by, k.numerator, k.denominator)), None)
            where = f"kpis.{kpi}" if kpi else "--policy"
            raise UsageError(f"{where}: {field} {missing[0]!r} was not recorded by this "
                             f"rollout (it kept {sorted(have) or 'none'}); replay with KPIs "
                             "on recorded data only")


def _changes(recorded: Decision, replayed: Decision) -> tuple[KpiChange, ...]:
    old = {e.kpi: e for e in recorded.evidence}
    new = {e.kpi: e for e in replayed.evidence}
    out = []
    for kpi in dict.fromkeys([*old, *new]):
        a, b = old.get(kpi), new.get(kpi)
        if a is None or b is None or a.to_dict() != b.to_dict():
            out.append(KpiChange(kpi, a, b))
    return tuple(out)


def gate_output(decision: Decision) -> dict[str, Any]:
    """The decision as the gate returned it: without what the controller adds beside it
    (the time-to-decision forecast in ``meta``, computed from rates over time)."""
    data = decision.to_dict()
    data["meta"] = {k: v for k, v in data["meta"].items() if k != META_KEY}
    return data


def rejudge(evaluation: Evaluation, policy: Policy,
            detectors: Mapping[tuple[str, str], Stream] | None = None) -> Rejudged:
    """Ask the gate again about one recorded evaluation (a bake evaluation: the bake's
    detector, continuing from ``detectors``)."""
    if not evaluation.policy_digest:
        return Rejudged(evaluation, None, Outcome.NOT_REPLAYABLE)
    if evaluation.metrics_unavailable is not None:
        return Rejudged(evaluation, None, Outcome.NO_DATA)
    if is_bake(evaluation):
        if not policy.bake.enabled:
            return Rejudged(evaluation, None, Outcome.NOT_REPLAYABLE)
        replayed = judge_bake(policy, evaluation.stage_index, evaluation.stage_elapsed_s,
                              list(evaluation.samples), detectors)
    else:
        replayed = evaluate(policy, evaluation.stage_index, evaluation.stage_elapsed_s,
                            list(evaluation.samples), evaluation.registry_baseline)
    recorded = evaluation.decision
    if gate_output(replayed) == gate_output(recorded):
        return Rejudged(evaluation, replayed, Outcome.IDENTICAL)
    outcome = Outcome.SAME_ACTION if replayed.action is recorded.action else Outcome.DIFFERENT
    return Rejudged(evaluation, replayed, outcome, _changes(recorded, replayed))


def replay(evaluations: Sequence[Evaluation], policy: Policy) -> Replay:
    """Re-judge every evaluation under ``policy`` (see the module docstring)."""
    check_compatible(evaluations, policy)
    digests = tuple(dict.fromkeys(e.policy_digest for e in evaluations if e.policy_digest))
    results: list[Rejudged] = []
    detectors: Mapping[tuple[str, str], Stream] = {}
    for e in evaluations:
        result = rejudge(e, policy, detectors)
        results.append(result)
        if result.replayed is not None and is_bake(e):
            detectors = bake_streams(result.replayed, e.stage_index)
    return Replay(policy_digest(policy.raw), digests, tuple(results))
