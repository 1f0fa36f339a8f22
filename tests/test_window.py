"""The recent-window check (gate/window.py): the current stage judged on its own, with its
own share of alpha_rollback, so a candidate that turns worse mid-rollout is rolled back
instead of promoted on the good average of its earlier stages."""

from __future__ import annotations

import pytest

from mlflow_kpigate.core.decision import Action, Verdict
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate import engine, evaluate
from mlflow_kpigate.kpis import AggregateSpec, Confusion, RoleAggregate
from mlflow_kpigate.policy import policy_from_dict

DOC = {
    "evaluation": {"interval": "1m", "alpha_rollback": 0.05, "window_share": 0.2},
    "stage_defaults": {"min_samples": {"requests": 100, "labelled": 100}},
    "stages": ["shadow", 25, 50, 100],
    "kpis": [
        {"name": "accuracy", "kind": "proportion", "metric": "accuracy", "role": "guardrail",
         "margin": 0.03},
        {"name": "error_rate", "kind": "proportion", "metric": "error_rate",
         "role": "critical", "margin": 0.01},
    ],
}
POLICY = policy_from_dict(DOC)
OFF = policy_from_dict({**DOC, "evaluation": {**DOC["evaluation"], "window_share": 0.0}})


def role(n: int, accuracy: float) -> RoleAggregate:
    agg = RoleAggregate(AggregateSpec())
    right = round(n * accuracy)
    agg.confusion.merge(Confusion(tp=right // 2, tn=right - right // 2, fp=(n - right) // 2,
                                  fn=n - right - (n - right) // 2))
    agg.requests = n
    return agg


def stage(index: int, n_b: int, n_c: int, acc_c: float, acc_b: float = 0.9) -> StageSample:
    return StageSample(index, role(n_b, acc_b), role(n_c, acc_c))


# Shadow: 20,000 paired predictions, the candidate as good as the baseline. At 25% the
# candidate is 8 points worse on 1,500 of its predictions: the pooled estimate still
# averages the good shadow stage, the stage on its own does not.
TURNED_WORSE = [stage(0, 20_000, 20_000, 0.9), stage(1, 4_500, 1_500, 0.82)]


def test_without_a_share_the_gate_is_the_engine():
    samples = [stage(0, 5000, 5000, 0.9), stage(1, 3000, 1000, 0.85)]
    assert evaluate(OFF, 1, 600.0, samples) == engine.evaluate(OFF, 1, 600.0, samples)


def test_a_stage_that_turned_worse_is_rolled_back_on_its_own_evidence():
    pooled = engine.evaluate(OFF, 1, 600.0, TURNED_WORSE)
    assert pooled.action is not Action.ROLLBACK  # the early average hides it
    decision = evaluate(POLICY, 1, 600.0, TURNED_WORSE)
    assert decision.action is Action.ROLLBACK, decision.reason
    assert decision.reason.startswith("rollback: accuracy is confidently worse in the current "
                                      "stage (25%) alone")
    assert "recent-window check" in decision.reason
    assert decision.evidence_for("accuracy").verdict is Verdict.WORSE
    assert decision.next_stage_index is None
    assert decision.alert
    (finding, *_) = [f for f in decision.meta["window"]["findings"] if f["kpi"] == "accuracy"]
    assert finding["worse"]
    assert finding["threshold"] == pytest.approx(-0.03)


def test_the_share_comes_out_of_alpha_rollback():
    decision = evaluate(POLICY, 1, 600.0, TURNED_WORSE)
    plain = engine.evaluate(OFF, 1, 600.0, TURNED_WORSE)
    assert decision.alpha_rollback_per_test == pytest.approx(
        plain.alpha_rollback_per_test * 0.8)
    window = decision.meta["window"]
    assert window["alpha"] == pytest.approx(0.05 * 0.2)
    # two decisive KPIs, two stages that can be checked (shadow is always alone)
    alphas = [f["alpha"] for f in window["findings"]]
    assert alphas == pytest.approx([0.01 / (2 * 2)] * 2)


def test_the_first_stage_alone_is_never_double_checked():
    decision = evaluate(POLICY, 0, 600.0, [stage(0, 5000, 5000, 0.9)])
    assert decision.meta["window"]["findings"] == []


def test_an_equal_candidate_is_promoted_with_the_check_on():
    samples = [stage(0, 20_000, 20_000, 0.9), stage(1, 30_000, 10_000, 0.9)]
    decision = evaluate(POLICY, 1, 600.0, samples)
    assert decision.action is Action.PROMOTE, decision.reason
    assert not any(f["worse"] for f in decision.meta["window"]["findings"])


def test_a_pooled_rollback_is_left_as_it_is():
    samples = [stage(0, 20_000, 20_000, 0.7)]
    decision = evaluate(POLICY, 0, 600.0, samples)
    assert decision.action is Action.ROLLBACK
    assert "recent-window" not in decision.reason
