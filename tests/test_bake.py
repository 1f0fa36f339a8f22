"""The bake (watching after promotion) on the real controller, its SQLite store and collector.

The other ports are the package's in-memory implementations (rollout/memory.py). A rollout
is promoted through its canary stages into ``baking``: the candidate serves everything, the
baseline scores shadow copies, and the change detector either lets the bake end
(``promoted``) or rolls back after promotion (alias moved back, tags, alert).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from _controller_fixtures import POLICY, controller, feed, make_deployment
from click.testing import CliRunner

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.cli import main
from mlflow_kpigate.core.decision import Action, Verdict
from mlflow_kpigate.core.events import AliasMoved, AliasRestored, OperatorAction, decode
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.records import Label, Prediction
from mlflow_kpigate.core.state import ROLLED_BACK_AFTER_PROMOTION, Phase, RolloutState, Weights
from mlflow_kpigate.gate import bake_streams
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.collector import Collector
from mlflow_kpigate.policy import Bake
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.memory import (
    InMemoryRegistry,
    InMemorySampleSource,
    InMemoryTraffic,
    RecordingNotifier,
)
from mlflow_kpigate.rollout.replay import Outcome, replay

BAKE_POLICY = POLICY + "bake: {duration: 60s, arl: 1d}\n"
BAKE = 2  # the final stage's index: the bake's stratum


def feed_bake(directory: Path, policy, *, n=2000, cand_acc=0.9, ts=1_000_000.0, seed=0):
    """n requests served by the candidate, each with a baseline shadow copy, labelled."""
    rng = np.random.default_rng(seed + 7919)
    coll = Collector(directory / "predictions.db", AggregateSpec.from_policy(policy))
    preds, labels = [], []
    for i in range(n):
        rid = f"bake-{seed}-{i}"
        y = int(rng.random() < 0.3)
        for role, acc in (("candidate", cand_acc), ("baseline", 0.9)):
            correct = rng.random() < acc
            preds.append(Prediction(rid, ts, role, "2" if role == "candidate" else "1", BAKE,
                                    role == "baseline", 0.01 + rng.random() * 0.01, False,
                                    None, y if correct else 1 - y))
        labels.append(Label(rid, y))
    coll.log(preds)
    coll.flush()
    coll.add_labels(labels)
    coll.close()


def registry_with_versions() -> InMemoryRegistry:
    registry = InMemoryRegistry()
    registry.register("m", "1", alias="champion")
    registry.register("m", "2")
    return registry


def to_bake(directory, store, policy, clock, **parts):
    """Promote through the canary stages; the controller and ports used."""
    parts.setdefault("registry", registry_with_versions())
    parts.setdefault("notifier", RecordingNotifier())
    parts.setdefault("traffic", InMemoryTraffic())
    ctl = controller(directory, clock, **parts)
    feed(directory, policy, 0, n=6000)
    clock.now += 5
    assert ctl.step().action is Action.PROMOTE
    feed(directory, policy, 1, n=4000, ts=clock.now)
    clock.now += 5
    assert ctl.step().action is Action.PROMOTE
    return ctl, parts


@pytest.fixture
def baking(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path, BAKE_POLICY)
    ctl, parts = to_bake(directory, store, policy, clock)
    return directory, store, policy, clock, ctl, parts


def test_approving_the_final_stage_starts_the_bake_and_moves_the_alias(baking):
    _directory, store, _policy, clock, _ctl, parts = baking
    state = store.require()
    assert state.phase is Phase.BAKING
    assert (state.stage_index, state.approved_stage_index) == (BAKE, BAKE)
    assert state.weights == Weights.baking()
    assert state.weights.describe() == "candidate 100%, baseline shadow"
    assert state.bake_started_at == clock.now
    assert not state.effects_pending
    registry = parts["registry"]
    assert registry.aliases[("m", "champion")] == "2"
    assert registry.tags[("m", "2")]["kpigate.status"] == "baking"
    # the old champion is only superseded once the bake has passed
    assert "kpigate.superseded_by" not in registry.tags.get(("m", "1"), {})
    assert parts["traffic"].applied[-1].weights == Weights.baking()
    moved = [e.event for e in store.events() if isinstance(e.event, AliasMoved)]
    assert moved == [AliasMoved("champion", "2", "1")]


def test_a_bake_without_regression_ends_promoted(baking):
    directory, store, policy, clock, ctl, parts = baking
    decisions = []
    for i in range(4):
        feed_bake(directory, policy, ts=clock.now, seed=i)
        clock.now += 10
        decisions.append(ctl.step())
    assert [d.action for d in decisions] == [Action.HOLD] * 4
    first = decisions[0].evidence_for("accuracy")
    assert first.verdict is Verdict.INSUFFICIENT_DATA  # the first look anchors the detector
    assert decisions[-1].evidence_for("accuracy").verdict is Verdict.NO_REGRESSION
    assert "baking: 40s of the 1m bake, 20s left" in decisions[-1].reason
    streams = bake_streams(decisions[-1], BAKE)
    assert streams[("accuracy", "accuracy")].steps == 3
    assert store.require().phase is Phase.BAKING
    clock.now += 30
    feed_bake(directory, policy, ts=clock.now, seed=9)
    done = ctl.step()
    assert done.action is Action.PROMOTE
    assert done.reason.startswith("promoted: baked 1m10s with no regression detected in 2 KPIs")
    state = store.require()
    assert state.phase is Phase.PROMOTED
    assert state.weights == Weights(100.0, False, True)
    registry = parts["registry"]
    assert registry.aliases[("m", "champion")] == "2"
    assert registry.tags[("m", "2")]["kpigate.status"] == "promoted"
    assert registry.tags[("m", "1")]["kpigate.superseded_by"] == "m/2"
    assert [type(e.event) for e in store.events()].count(AliasMoved) == 1  # moved once
    assert ctl.step() is None
    # bake evaluations keep only the bake's stratum, and say they were bake evaluations
    last = History.of(store.events()).evaluations()[-1].evaluation
    assert [s.stage_index for s in last.samples] == [BAKE]
    assert last.decision.stage_name == "bake"


def test_a_regression_after_promotion_rolls_back_and_restores_the_alias(baking):
    directory, store, policy, clock, ctl, parts = baking
    feed_bake(directory, policy, ts=clock.now, seed=0)
    clock.now += 5
    assert ctl.step().action is Action.HOLD
    decision = None
    for i in range(1, 6):  # the candidate now answers worse than the baseline it replaced
        feed_bake(directory, policy, ts=clock.now, seed=i, cand_acc=0.75)
        clock.now += 5
        decision = ctl.step()
        if decision.action is not Action.HOLD:
            break
    assert decision is not None
    assert decision.action is Action.ROLLBACK, decision.reason
    assert i <= 3  # a 15-point drop on 2,000 labels a look is caught at once
    assert decision.reason.startswith("rollback after promotion: accuracy regressed during "
                                      "the bake")
    assert decision.evidence_for("accuracy").verdict is Verdict.WORSE
    state = store.require()
    assert state.phase is Phase.ROLLED_BACK
    assert state.status == ROLLED_BACK_AFTER_PROMOTION
    assert state.weights == Weights.baseline_only()
    assert parts["traffic"].applied[-1].weights == Weights.baseline_only()
    registry = parts["registry"]
    assert registry.aliases[("m", "champion")] == "1"
    tags = registry.tags[("m", "2")]
    assert tags["kpigate.status"] == "rolled_back_after_promotion"
    assert tags["kpigate.decision"] == "rollback"
    assert "kpigate.superseded_by" not in registry.tags.get(("m", "1"), {})
    restored = [e.event for e in store.events() if isinstance(e.event, AliasRestored)]
    assert restored == [AliasRestored("champion", "1", "2")]
    alert = parts["notifier"].alerts[-1]
    assert alert.severity == "critical"
    assert "bake rollback" in alert.summary
    assert alert.dedup_key.endswith("/bake_rollback/2")


def test_operators_can_end_the_bake_early_or_roll_it_back(tmp_path):
    for action, phase in (("promote", Phase.PROMOTED), ("rollback", Phase.ROLLED_BACK)):
        (tmp_path / action).mkdir()
        directory, store, policy, clock = make_deployment(tmp_path / action, BAKE_POLICY)
        _ctl, parts = to_bake(directory, store, policy, clock)
        state = transitions.operator_action(store.require(), policy, action, clock())
        saved = store.save(state.evolve(effects_pending=True), OperatorAction(action=action))
        controller(directory, clock, **parts).resume()
        assert saved.phase is phase
        alias = parts["registry"].aliases[("m", "champion")]
        if action == "promote":
            assert saved.reason == "operator ended the bake early: promoted"
            assert saved.weights == Weights(100.0, False, True)
            assert alias == "2"
        else:
            assert saved.reason == "operator rolled the rollout back after promotion " \
                                   "(during the bake)"
            assert saved.status == ROLLED_BACK_AFTER_PROMOTION
            assert alias == "1"


def test_paused_bake_evaluates_nothing_and_missing_metrics_keep_the_detector(baking):
    directory, store, policy, clock, _ctl, parts = baking
    feed_bake(directory, policy, ts=clock.now, seed=0)
    clock.now += 5
    collected = Collector(directory / "predictions.db", AggregateSpec.from_policy(policy))
    source = InMemorySampleSource(collected.stage_samples(clock.now, 0.0))
    ctl = controller(directory, clock, source=source, **parts)
    ctl.step()
    feed_bake(directory, policy, ts=clock.now, seed=1)
    source.samples = collected.stage_samples(clock.now, 0.0)
    clock.now += 5
    held = ctl.step()
    before = bake_streams(held, BAKE)
    assert before[("accuracy", "accuracy")].steps == 1
    source.unavailable = "prometheus: connection refused"
    clock.now += 100  # past the bake's end, but no data: never promoted
    blind = ctl.step()
    assert blind.action is Action.HOLD
    assert "metrics unavailable" in blind.reason
    assert bake_streams(blind, BAKE) == before
    paused = transitions.operator_action(store.require(), policy, "pause", clock())
    store.save(paused, OperatorAction(action="pause"))
    assert ctl.step() is None
    resumed = transitions.operator_action(store.require(), policy, "resume", clock())
    store.save(resumed, OperatorAction(action="resume"))
    source.unavailable = None
    feed_bake(directory, policy, ts=clock.now, seed=2)
    source.samples = collected.stage_samples(clock.now, 0.0)
    clock.now += 5
    done = ctl.step()
    assert done.action is Action.PROMOTE, done.reason
    assert bake_streams(done, BAKE)[("accuracy", "accuracy")].steps == 2
    collected.close()


def test_a_restarted_controller_continues_the_detector_where_the_state_left_it(tmp_path):
    """Two rollouts on the same evidence, one with a new controller at every evaluation
    (as after a SIGKILL): the same decisions, to the last digit of the detector."""
    runs = []
    for name in ("steady", "restarted"):
        (tmp_path / name).mkdir()
        directory, store, policy, clock = make_deployment(tmp_path / name, BAKE_POLICY)
        ctl, parts = to_bake(directory, store, policy, clock)
        out = []
        for i in range(5):
            feed_bake(directory, policy, ts=clock.now, seed=i, cand_acc=0.9 - 0.02 * i)
            clock.now += 5
            if name == "restarted":
                ctl = controller(directory, clock, **parts)
                ctl.resume()
            out.append(ctl.step().to_dict())
        runs.append(out)
    assert runs[0] == runs[1]


CRASH_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mlflow_kpigate.backends.local.state_store import RolloutStore
    from mlflow_kpigate.kpis import AggregateSpec
    from mlflow_kpigate.metrics.collector import Collector
    from mlflow_kpigate.policy import load_policy
    from mlflow_kpigate.rollout.controller import Controller
    from mlflow_kpigate.rollout.memory import InMemoryTraffic
    d = Path(sys.argv[1])
    policy = load_policy(d / "policy.yaml")
    ctl = Controller(store=RolloutStore(d), policy=policy, traffic=InMemoryTraffic(),
                     source=Collector(d / "predictions.db", AggregateSpec.from_policy(policy)))
    print("ready", flush=True)
    while True:
        ctl.step()
        time.sleep(0.01)
""")


def test_sigkill_while_baking_keeps_state_detector_and_audit_log_in_step(tmp_path):
    policy_text = POLICY + "bake: {duration: 30d, arl: 365d}\n"  # bakes through the test
    directory, store, policy, clock = make_deployment(tmp_path, policy_text)
    to_bake(directory, store, policy, clock)
    state = store.require()
    # The subprocess uses the wall clock; the bake started "now".
    store.save(state.evolve(stage_started_at=time.time(), bake_started_at=time.time()))
    feed_bake(directory, policy, n=3000, ts=time.time() - 10)
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    rng = np.random.default_rng(11)
    before = len(store.events())
    for k in range(6):
        feed_bake(directory, policy, n=500, ts=time.time() - 5, seed=k + 1)
        proc = subprocess.Popen([sys.executable, str(script), str(directory)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5 + rng.random() * 0.6)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = RolloutStore(directory).require()
        assert state.phase is Phase.BAKING
        assert state.weights == Weights.baking()
        events = store.events()
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        evaluated = History.of(events).evaluations()
        # the committed detector is the one of the last committed evaluation
        assert state.last_decision == evaluated[-1].evaluation.decision.to_dict()
        mirrored = [json.loads(line)["seq"] for line in
                    store.audit_path.read_text().splitlines() if line.strip()]
        assert mirrored == [e.seq for e in events]
    assert len(store.events()) > before
    steps = bake_streams(store.require().last_decision, BAKE)[("accuracy", "accuracy")].steps
    assert steps >= 1


def test_replay_of_a_baked_rollout_reproduces_every_decision(baking, tmp_path):
    directory, store, policy, clock, ctl, _parts = baking
    for i in range(4):
        feed_bake(directory, policy, ts=clock.now, seed=i, cand_acc=0.9 if i < 2 else 0.78)
        clock.now += 5
        if ctl.step().action is not Action.HOLD:
            break
    assert store.require().phase is Phase.ROLLED_BACK
    evaluations = [e.evaluation for e in History.of(store.events()).evaluations()]
    assert sum(1 for e in evaluations if e.stage_index == BAKE) >= 2
    again = replay(evaluations, policy)
    assert again.reproduced
    assert again.count(Outcome.IDENTICAL) == len(evaluations)
    result = CliRunner().invoke(main, ["replay", "dep", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"identical: {len(evaluations)}, same action with other evidence: 0" in result.output
    # a policy that watches with a shorter ARL reads the same evidence differently
    eager = dataclasses.replace(policy, bake=Bake(60.0, 60.0, ()))
    other = replay(evaluations, eager)
    assert other.count(Outcome.IDENTICAL) < len(evaluations)


def test_state_and_events_of_a_bake_round_trip_through_json():
    state = RolloutState(name="d", model_name="m", candidate_version="2",
                         baseline_version="1", candidate_uri="u2", baseline_uri="u1",
                         policy_file="p", tracking_uri="t", port=1, phase=Phase.ROLLED_BACK,
                         weights=Weights.baking(), bake_started_at=123.0)
    data = json.loads(json.dumps(state.to_dict()))
    assert data["weights"] == {"candidate_percent": 100.0, "shadow": False,
                               "candidate_attached": True, "baseline_shadow": True}
    again = RolloutState.from_dict(data)
    assert again == state
    assert again.status == "rolled_back_after_promotion"
    plain = RolloutState.from_dict({**data, "weights": {"candidate_percent": 5.0},
                                    "bake_started_at": None})
    assert "baseline_shadow" not in plain.to_dict()["weights"]  # the old form, unchanged
    assert "bake_started_at" not in plain.to_dict()
    assert plain.status == "rolled_back"
    event = AliasRestored("champion", "1", "2")
    assert decode(event.kind, json.loads(json.dumps(event.body()))) == event
    assert Weights.from_dict({"candidate_percent": 5, "future_field": 1}) == Weights(5.0)


def test_status_report_comment_and_metrics_say_what_the_bake_did(baking, tmp_path):
    from mlflow_kpigate.deploy.finish import write_report
    from mlflow_kpigate.github.comment import headline
    from mlflow_kpigate.github.record import record_of
    from mlflow_kpigate.rollout.exposition import DecisionMetrics

    directory, store, policy, clock, ctl, _parts = baking
    metrics = DecisionMetrics("dep")
    ctl.observer = metrics.observe
    for i in range(2):
        feed_bake(directory, policy, ts=clock.now, seed=i)
        clock.now += 5
        ctl.step()
    status = CliRunner().invoke(main, ["status", "dep", "--state-dir", str(tmp_path)])
    assert status.exit_code == 0, status.output
    assert "dep: baking at 100% — candidate 100%, baseline shadow" in status.output
    assert "bake: 10s of the 1m bake, 50s left; closest to an alarm: accuracy" in status.output
    assert "no_regression" in status.output
    values = {(m.name, tuple(sorted(s.labels.items()))): s.value
              for m in metrics.registry.collect() for s in m.samples}
    dep = (("deployment", "dep"),)
    assert values[("kpigate_rollout_phase", (*dep, ("phase", "baking")))] == 1
    assert values[("kpigate_bake_remaining_seconds", dep)] == 50
    log_threshold = values[("kpigate_bake_detector_log_threshold", (*dep, ("kpi", "accuracy")))]
    assert log_threshold > values[("kpigate_bake_detector_log_statistic",
                                   (*dep, ("kpi", "accuracy")))]
    for i in range(2, 8):
        feed_bake(directory, policy, ts=clock.now, seed=i, cand_acc=0.7)
        clock.now += 5
        if ctl.step().action is Action.ROLLBACK:
            break
    state = store.require()
    assert state.status == ROLLED_BACK_AFTER_PROMOTION
    report = (write_report(directory, state, store, policy) / "report.md").read_text()
    assert "Outcome: ROLLED BACK AFTER PROMOTION." in report
    assert "## Bake (after promotion)" in report
    assert "rolled back after promotion: rollback after promotion: accuracy regressed" in report
    record = record_of(state, History.of(store.events()), policy)
    assert "version 2 rolled back after promotion** at 100%" in headline(record, "m")
    watch = CliRunner().invoke(main, ["watch", "dep", "--state-dir", str(tmp_path)])
    assert "dep: rolled_back_after_promotion — rollback after promotion" in watch.output
    assert watch.exit_code == 3  # exit_codes.ROLLED_BACK, after promotion as well
