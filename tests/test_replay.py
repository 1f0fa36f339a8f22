"""kpigate replay: recorded evaluations re-judged from the state store and from the MLflow run.

A rollout is driven by the real controller (SQLite store, prediction log) through a hold,
a promotion and a rollback; replaying it with its own policy must reproduce every
decision exactly, and a stricter policy must show where it would have decided otherwise.
"""

import json
from pathlib import Path

import pytest
import yaml
from _controller_fixtures import POLICY, controller, feed, make_deployment
from click.testing import CliRunner

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.cli import main
from mlflow_kpigate.core.decision import Action
from mlflow_kpigate.core.events import Evaluated
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import load_policy
from mlflow_kpigate.rollout.memory import InMemorySampleSource
from mlflow_kpigate.rollout.replay import Outcome, replay

STRICT = POLICY.replace("margin: 0.1}", "margin: 0.001}")


def run_rollout(directory: Path, policy, clock, **parts) -> list:
    """hold (too little data) -> promote to 50% -> rollback (candidate errors at 50%)."""
    ctl = controller(directory, clock, **parts)
    feed(directory, policy, 0, n=150, seed=1)
    clock.now += 5
    decisions = [ctl.step()]
    feed(directory, policy, 0, n=6000, seed=2)
    clock.now += 5
    decisions.append(ctl.step())
    feed(directory, policy, 1, n=8000, cand_error=0.3, ts=clock.now)
    clock.now += 5
    decisions.append(ctl.step())
    return decisions


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def rolled_back(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    actions = [d.action for d in run_rollout(directory, policy, clock)]
    assert actions == [Action.HOLD, Action.PROMOTE, Action.ROLLBACK]
    return directory, store


def test_recorded_evaluations_keep_the_gates_inputs(rolled_back):
    _directory, store = rolled_back
    evaluations = [e.evaluation for e in History.of(store.events()).evaluations()]
    assert [e.number for e in evaluations] == [1, 2, 3]
    assert [e.stage_index for e in evaluations] == [0, 0, 1]
    assert all(e.replayable for e in evaluations)
    assert len({e.policy_digest for e in evaluations}) == 1
    # the last evaluation saw both strata, with the candidate's errors in the second
    last = evaluations[-1].samples
    assert [s.stage_index for s in last] == [0, 1]
    assert last[1].candidate.errors > 0
    # and the audit log's JSON lines hold the same record (one writer, one reader)
    lines = [json.loads(x) for x in (store.dir / "audit.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines if "evaluation" in x] == ["hold", "promote", "rollback"]


def test_replay_with_the_rollouts_own_policy_reproduces_every_decision(rolled_back, tmp_path):
    code, out, err = cli("replay", "dep", "--state-dir", str(tmp_path))
    assert code == 0, err
    assert "identical: 3, same action with other evidence: 0, different action: 0" in out
    assert "no divergence" in out
    code, out, _ = cli("replay", "dep", "--state-dir", str(tmp_path), "--json")
    data = json.loads(out)
    assert data["reproduced"] is True
    assert [e["outcome"] for e in data["evaluations"]] == ["identical"] * 3


def test_a_stricter_policy_shows_the_first_divergence_with_per_kpi_reasons(rolled_back,
                                                                           tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text(STRICT)
    code, out, err = cli("replay", "dep", "--state-dir", str(tmp_path), "--policy",
                         str(strict))
    assert code == 0, err  # differences are the point of another policy, not a failure
    assert "first divergence: evaluation 2 (canary-5, 10s into the stage)" in out
    assert "recorded promote, replay hold" in out
    assert "    accuracy: non_inferior" in out
    assert "-> inconclusive" in out
    assert "#2    canary-5  promote -> hold     different (accuracy)" in out
    data = json.loads(cli("replay", "dep", "--state-dir", str(tmp_path), "--policy",
                          str(strict), "--json")[1])
    assert data["first_divergence"] == 2
    changed = data["evaluations"][1]["changes"]
    assert [c["kpi"] for c in changed] == ["accuracy"]
    assert changed[0]["replayed"]["verdict"] == "inconclusive"


def test_a_changed_record_is_not_reproduced_and_fails(rolled_back, tmp_path):
    directory, _store = rolled_back
    # Someone edits the frozen policy copy after the fact: the replay with "the rollout's
    # own policy" no longer reproduces the record, and says so with exit code 1.
    (directory / "policy.yaml").write_text(STRICT)
    code, out, err = cli("replay", "dep", "--state-dir", str(tmp_path))
    assert code == 1
    assert "first divergence: evaluation 2" in out
    assert err.strip() == ("Error: 3 recorded decision(s) were not reproduced by the rollout's "
                           "own policy; the record or the gate changed")


def test_policies_that_cannot_judge_the_record_are_usage_errors(rolled_back, tmp_path):
    short = tmp_path / "short.yaml"
    short.write_text(POLICY.replace("  - {traffic: 50}\n", ""))
    code, _out, err = cli("replay", "dep", "--state-dir", str(tmp_path), "--policy",
                          str(short))
    assert code == 2
    assert err.strip() == ("Error: --policy: it has 2 stages, but the rollout was evaluated "
                           "at stage 2; give a policy with at least 3 stages")
    fair = tmp_path / "fair.yaml"
    doc = yaml.safe_load(POLICY)
    doc["kpis"].append({"name": "fpr_fair", "kind": "fairness", "metric": "false_positive_rate",
                        "segment_by": "region", "role": "info"})
    fair.write_text(yaml.safe_dump(doc))
    code, _out, err = cli("replay", "dep", "--state-dir", str(tmp_path), "--policy",
                          str(fair))
    assert code == 2
    assert err.startswith("Error: kpis.fpr_fair: segment field 'region' was not recorded")
    code, _out, err = cli("replay", "--state-dir", str(tmp_path))
    assert code == 2
    assert "give a rollout NAME or --run-id RUN_ID" in err
    code, _out, err = cli("replay", "nope", "--state-dir", str(tmp_path))
    assert code == 2
    assert "no deployment named 'nope'" in err


def test_holds_for_missing_metrics_are_reported_not_rejudged(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    source = InMemorySampleSource()
    source.unavailable = "Prometheus is unreachable"
    ctl = controller(directory, clock, source=source)
    clock.now += 5
    assert ctl.step().action is Action.HOLD
    evaluations = [e.evaluation for e in History.of(store.events()).evaluations()]
    result = replay(evaluations, policy)
    assert [r.outcome for r in result.results] == [Outcome.NO_DATA]
    assert result.reproduced
    assert evaluations[0].metrics_unavailable == "Prometheus is unreachable"


def test_replay_from_the_rollout_runs_artifacts(tmp_path, registered_model):
    """The evaluations and the policy attached to the MLflow run suffice for a replay."""
    from mlflow_kpigate.registry import Registry

    directory, store, policy, clock = make_deployment(tmp_path)
    registry = Registry(registered_model.tracking_uri)
    candidate = registry.resolve(f"models:/{registered_model.name}/2")
    baseline = registry.resolve(f"models:/{registered_model.name}/1")
    run_id = registry.start_rollout_run(deployment="dep", candidate=candidate,
                                        baseline=baseline,
                                        policy_file=directory / "policy.yaml", params={})
    state: RolloutState = store.require()
    store.save(state.evolve(model_name=candidate.name, candidate_uri=candidate.uri,
                            baseline_uri=baseline.uri, rollout_run_id=run_id))
    run_rollout(directory, policy, clock, registry=registry)
    assert not store.require().effects_pending  # every record reached the run
    code, out, err = cli("replay", "--run-id", run_id, "--tracking-uri",
                         registered_model.tracking_uri)
    assert code == 0, err
    assert out.startswith(f"run {run_id}: 3 recorded evaluations")
    assert "identical: 3" in out
    # the run's records equal the store's, input for input
    from_run = registry.evaluation_records(run_id)
    from_store = [e.evaluation for e in History.of(store.events()).evaluations()]
    assert [e.to_dict() for e in from_run] == [e.to_dict() for e in from_store]
    assert [e.decision for e in from_run] == [e.decision for e in from_store]


def test_stage_samples_survive_the_record_exactly(rolled_back):
    """Encoding keeps every aggregate bit for bit (what an exact replay relies on)."""
    _directory, store = rolled_back
    stored = [r for r in RolloutStore(store.dir).events() if isinstance(r.event, Evaluated)]
    samples = stored[-1].event.evaluation.samples
    again = [StageSample.from_dict(s.to_dict()) for s in samples]
    assert [s.to_dict() for s in again] == [s.to_dict() for s in samples]
    assert samples[1].candidate.latency.quantile(0.95) == again[1].candidate.latency.quantile(0.95)


def test_the_replay_knows_whether_it_used_the_recorded_policy(rolled_back, tmp_path):
    _directory, store = rolled_back
    evaluations = [e.evaluation for e in History.of(store.events()).evaluations()]
    own = replay(evaluations, load_policy(tmp_path / "dep" / "policy.yaml"))
    assert own.same_policy
    assert own.reproduced
    strict = tmp_path / "strict.yaml"
    strict.write_text(STRICT)
    other = replay(evaluations, load_policy(strict))
    assert not other.same_policy
    assert not other.reproduced
    assert other.first_divergence is not None
    assert other.first_divergence.evaluation.number == 2


SHADOW_POLICY = POLICY.replace("stages:\n", "stages:\n  - {shadow: true}\n")


def feed_shadow(directory: Path, policy, *, n: int, seed: int, ts: float = 1_000_000.0,
                cand_acc: float = 0.9) -> None:
    """A shadow stage's log: the baseline answers each request, the candidate scores a copy
    under the same id (right about the same requests more often than chance), one label."""
    import numpy as np

    from mlflow_kpigate.core.records import Label, Prediction
    from mlflow_kpigate.kpis import AggregateSpec
    from mlflow_kpigate.metrics.collector import Collector

    rng = np.random.default_rng(seed)
    coll = Collector(directory / "predictions.db", AggregateSpec.from_policy(policy))
    preds, labels = [], []
    for i in range(n):
        rid, y, easy = f"sh-{seed}-{i}", int(rng.random() < 0.3), rng.random()
        for role, acc, shadow in (("baseline", 0.9, False), ("candidate", cand_acc, True)):
            # A shared difficulty: both models get the easiest requests right.
            right = easy < acc - 0.05 or rng.random() < 0.5
            preds.append(Prediction(rid, ts, role, "2" if shadow else "1", 0, shadow,
                                    0.01 + rng.random() * 0.01, False, None,
                                    y if right else 1 - y))
        labels.append(Label(rid, y))
    coll.log(preds)
    coll.flush()
    coll.add_labels(labels)
    coll.close()


def test_replay_of_a_shadow_rollout_reproduces_its_paired_decisions(tmp_path):
    """Shadow (paired) → 5% → rollback: the shadow evaluations carry their paired part, and
    replaying them with the rollout's own policy reproduces every decision exactly."""
    directory, store, policy, clock = make_deployment(tmp_path, SHADOW_POLICY)
    ctl = controller(directory, clock)
    feed_shadow(directory, policy, n=100, seed=1)
    clock.now += 5
    actions = [ctl.step().action]
    feed_shadow(directory, policy, n=3000, seed=2)
    clock.now += 5
    actions.append(ctl.step().action)
    feed(directory, policy, 1, n=8000, cand_error=0.3, ts=clock.now)
    clock.now += 5
    actions.append(ctl.step().action)
    assert actions == [Action.HOLD, Action.PROMOTE, Action.ROLLBACK]
    evaluations = [e.evaluation for e in History.of(store.events()).evaluations()]
    shadow = [s for e in evaluations for s in e.samples if s.stage_index == 0]
    assert shadow
    assert all(s.paired is not None and s.paired.labelled > 0 for s in shadow)
    assert all(s.paired is None for e in evaluations for s in e.samples if s.stage_index)
    result = replay(evaluations, policy)
    assert result.reproduced
    assert [r.outcome for r in result.results] == [Outcome.IDENTICAL] * 3
    code, out, err = cli("replay", "dep", "--state-dir", str(tmp_path))
    assert code == 0, err
    assert "identical: 3" in out
