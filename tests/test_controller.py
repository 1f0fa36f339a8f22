"""The rollback controller on a real collector and SQLite store: decisions, effects, crashes.

The other ports are the package's in-memory implementations (rollout/memory.py)."""

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

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.events import OperatorAction
from mlflow_kpigate.core.state import Phase, Readiness, Weights
from mlflow_kpigate.gate import Action
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.collector import Collector
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.memory import (
    InMemoryRegistry,
    InMemorySampleSource,
    InMemoryTraffic,
    RecordingNotifier,
)


def test_equal_candidate_is_promoted_stage_by_stage(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    ctl = controller(directory, clock)
    feed(directory, policy, 0, n=6000)
    clock.now += 5
    decision = ctl.step()
    assert decision.action is Action.PROMOTE, decision.reason
    state = store.require()
    assert (state.stage_index, state.weights) == (1, Weights(50.0, False, True))
    feed(directory, policy, 1, n=4000, ts=clock.now)
    clock.now += 5
    assert ctl.step().action is Action.PROMOTE
    state = store.require()
    assert state.phase is Phase.PROMOTED
    assert state.weights.candidate_percent == 100
    assert ctl.step() is None  # nothing more to evaluate
    kinds = [e.kind for e in store.events()]
    assert kinds == ["created", "promote", "promote"]
    assert not state.effects_pending


def test_erroring_candidate_is_rolled_back_and_detached(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    ctl = controller(directory, clock)
    feed(directory, policy, 0, n=20_000, cand_error=0.3)
    clock.now += 5
    decision = ctl.step()
    assert decision.action is Action.ROLLBACK
    assert "error_rate" in decision.reason
    state = store.require()
    assert state.phase is Phase.ROLLED_BACK
    assert state.weights == Weights.baseline_only()
    event = store.events()[-1]
    assert event.kind == "rollback"
    assert event.event.decision.action is Action.ROLLBACK
    evaluation = event.event.evaluation
    assert evaluation.samples
    assert evaluation.samples[0].candidate.requests > 0
    assert evaluation.replayable


def test_missing_labels_hold_and_never_promote(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    ctl = controller(directory, clock)
    feed(directory, policy, 0, n=6000, labels=False)
    for _ in range(3):
        clock.now += 5
        decision = ctl.step()
        assert decision.action is Action.HOLD
        assert decision.evidence_for("accuracy").verdict.value == "insufficient_data"
    clock.now += 120  # past max_duration: hold and alert
    decision = ctl.step()
    assert decision.action is Action.HOLD
    assert decision.timed_out
    assert store.require().phase is Phase.HOLDING
    assert store.require().stage_index == 0


def test_operator_actions_and_pause(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    ctl = controller(directory, clock)
    state = store.require()
    paused = store.save(transitions.operator_action(state, policy, "pause", clock()),
                        OperatorAction(action="pause"))
    feed(directory, policy, 0, n=6000)
    assert ctl.step() is None  # paused: no evaluation
    store.save(transitions.operator_action(paused, policy, "resume", clock()),
               OperatorAction(action="resume"))
    state = store.require()
    promoted = transitions.operator_action(state, policy, "promote", clock())
    assert promoted.stage_index == 1
    assert promoted.approved_stage_index == 1
    rolled = transitions.operator_action(promoted, policy, "rollback", clock())
    assert rolled.weights == Weights.baseline_only()
    with pytest.raises(ValueError, match="already rolled_back"):
        transitions.operator_action(rolled, policy, "promote", clock())
    with pytest.raises(ValueError, match="not paused"):
        transitions.operator_action(state, policy, "resume", clock())


def test_concurrent_operator_change_wins_over_a_stale_evaluation(tmp_path):
    _directory, store, policy, clock = make_deployment(tmp_path)
    stale = store.require()
    store.save(transitions.operator_action(stale, policy, "rollback", clock()),
               OperatorAction(action="rollback"))
    from mlflow_kpigate.core.errors import StateConflict

    with pytest.raises(StateConflict):
        store.save(stale.evolve(stage_index=1), OperatorAction(action="promote"))
    assert store.require().phase is Phase.ROLLED_BACK


def registry_with_versions() -> InMemoryRegistry:
    registry = InMemoryRegistry()
    registry.register("m", "1", alias="champion")
    registry.register("m", "2")
    return registry


def test_failed_side_effects_stay_pending_and_are_redone(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    registry = registry_with_versions()
    registry.fail = ConnectionError("tracking server unreachable")
    ctl = controller(directory, clock, registry=registry)
    feed(directory, policy, 0, n=1000, labels=False)
    clock.now += 1
    ctl.step()
    state = store.require()
    assert state.effects_pending
    assert store.events()[-1].kind == "effect_error"
    assert "tracking server unreachable" in store.events()[-1].event.errors[0]
    # A restarted controller first finishes what the last one left pending, including
    # the evaluation's record in the rollout run.
    registry.fail = None
    controller(directory, clock, registry=registry).resume()
    state = store.require()
    assert not state.effects_pending
    assert registry.tags[("m", "2")]["kpigate.status"] == "canary"


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
    print("ready", flush=True)  # imports done: the kill below lands among evaluations
    while True:
        ctl.step()
        time.sleep(0.01)
""")


def _check_invariants(store, policy):
    state = store.require()
    events = store.events()
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "audit log has a gap"
    assert state.stage_index <= state.approved_stage_index
    expected = (Weights.baseline_only() if state.phase in (Phase.ROLLED_BACK, Phase.ABORTED)
                else transitions.stage_weights(policy.stages[state.stage_index]))
    assert state.weights == expected, "weights disagree with the saved stage"
    revisions = [e.revision for e in events if e.revision is not None]
    assert revisions == sorted(revisions)
    mirrored = [json.loads(line)["seq"] for line in
                store.audit_path.read_text().splitlines() if line.strip()]
    assert mirrored == seqs, "audit.jsonl differs from the committed events"


def test_sigkill_at_random_points_never_loses_state_or_events(tmp_path):
    policy_text = POLICY.replace(
        "min_samples: {requests: 300, labelled: 300}",
        "min_samples: {requests: 100000000, labelled: 100000000}")  # hold forever
    directory, store, policy, _clock = make_deployment(tmp_path, policy_text)
    feed(directory, policy, 0, n=3000, ts=time.time())
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    rng = np.random.default_rng(7)
    before = len(store.events())
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, str(script), str(directory)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.6 + rng.random() * 0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        RolloutStore(directory)  # what a restarted controller opens first
        _check_invariants(store, policy)
    assert len(store.events()) > before  # evaluations happened between the kills
    assert store.require().stage_index == 0  # never raised past the approved stage


def test_a_terminal_state_revealed_while_resuming_is_not_overwritten(tmp_path):
    """An operator's rollback that lands while the controller finishes pending effects
    must stand: the controller may not evaluate (and so revive) a finished rollout."""
    directory, store, policy, clock = make_deployment(tmp_path)
    feed(directory, policy, 0, n=1000, labels=False)

    class RollbackDuringEffects:
        """A registry port whose first call coincides with an operator's rollback."""

        def __init__(self):
            self.done = False

        def resolve(self, uri):
            if not self.done:
                self.done = True
                current = store.require()
                store.save(transitions.operator_action(current, policy, "rollback",
                                                       clock()),
                           OperatorAction(action="rollback"))
            return registry.resolve(uri)

        def __getattr__(self, name):
            return getattr(registry, name)

    registry = registry_with_versions()
    state = store.require()
    store.save(state.evolve(effects_pending=True))
    ctl = controller(directory, clock, registry=RollbackDuringEffects())
    clock.now += 1
    assert ctl.step() is None
    assert store.require().phase is Phase.ROLLED_BACK
    with pytest.raises(ValueError, match="takes no further decisions"):
        transitions.after_decision(store.require(), policy, None, clock())  # type: ignore[arg-type]


READY_POLICY = POLICY + "readiness: {timeout: 30s, on_timeout: %s}\n"


def test_samples_count_only_once_the_stage_is_ready(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path, READY_POLICY % "hold")
    traffic = InMemoryTraffic(needs_readiness=True, ready=Readiness(False, "test router"))
    ctl = controller(directory, clock, traffic=traffic)
    feed(directory, policy, 0, n=6000)
    clock.now += 5
    assert ctl.step() is None  # not ready: no evaluation at all
    assert store.require().stage_ready_at is None
    traffic.ready = Readiness(True, "test router")
    clock.now += 5
    assert ctl.step().action is Action.PROMOTE
    kinds = [e.kind for e in store.events()]
    assert kinds == ["created", "stage_ready", "promote"]
    state = store.require()
    assert state.stage_ready_at is None  # a new stage waits for its own readiness
    assert traffic.applied[-1].weights == Weights(50.0, False, True)


@pytest.mark.parametrize("on_timeout", ["hold", "abort"])
def test_readiness_timeout_holds_with_an_alert_or_aborts(tmp_path, on_timeout):
    directory, store, _policy, clock = make_deployment(tmp_path, READY_POLICY % on_timeout)

    traffic = InMemoryTraffic(needs_readiness=True, ready=Readiness(False, "test router"))
    alerts = RecordingNotifier()
    ctl = controller(directory, clock, traffic=traffic, notifier=alerts)
    clock.now += 31
    assert ctl.step() is None
    state = store.require()
    if on_timeout == "hold":
        assert state.phase is Phase.HOLDING
        assert "not ready after 31 s" in state.reason
        assert alerts.alerts[0].severity == "warning"
        clock.now += 10
        ctl.step()  # still not ready: no second alert, no new event
        assert len(alerts.alerts) == 1
        assert [e.kind for e in store.events()] == ["created", "readiness_timeout",
                                                       "alert_sent"]
    else:
        assert state.phase is Phase.ABORTED
        assert state.weights == Weights.baseline_only()
        assert traffic.applied[-1].weights == Weights.baseline_only()
        assert alerts.alerts[0].severity == "critical"


def test_failed_traffic_change_stays_pending_and_nothing_else_moves(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    traffic = InMemoryTraffic(needs_readiness=True, ready=Readiness(False, "test router"))
    traffic.ready = Readiness(True, "test router")
    ctl = controller(directory, clock, traffic=traffic)
    feed(directory, policy, 0, n=6000)
    clock.now += 5
    traffic.fail = ConnectionError("cluster unreachable")
    ctl.step()  # stage_ready is saved; the evaluation promotes; applying it fails
    state = store.require()
    assert state.stage_index == 1
    assert state.effects_pending
    assert store.events()[-1].kind == "effect_error"
    assert "cluster unreachable" in store.events()[-1].event.errors[0]
    traffic.fail = None
    ctl.resume()
    assert not store.require().effects_pending
    assert traffic.applied[-1].weights == Weights(50.0, False, True)


def test_missing_metrics_hold_and_say_why(tmp_path):
    directory, store, policy, clock = make_deployment(tmp_path)
    collected = Collector(directory / "predictions.db", AggregateSpec.from_policy(policy))
    source = InMemorySampleSource()
    source.unavailable = "query 'kpigate_stage_requests_total': connection refused"
    ctl = controller(directory, clock, source=source)
    feed(directory, policy, 0, n=6000)
    for _ in range(3):
        clock.now += 5
        decision = ctl.step()
        assert decision.action is Action.HOLD
        assert "metrics unavailable" in decision.reason
        assert "connection refused" in decision.reason
    assert store.require().stage_index == 0
    source.unavailable = None  # back: the same data as the collector holds
    source.samples = collected.stage_samples(clock.now, policy.evaluation.maturity)
    clock.now += 5
    assert ctl.step().action is Action.PROMOTE


def test_decision_metrics_are_served_for_prometheus(tmp_path):
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from mlflow_kpigate.rollout.exposition import DecisionMetrics

    directory, _store, policy, clock = make_deployment(tmp_path)
    metrics = DecisionMetrics("dep")
    ctl = controller(directory, clock, observer=metrics.observe)
    feed(directory, policy, 0, n=6000)
    clock.now += 5
    ctl.step()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = metrics.serve("127.0.0.1", port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        stop()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}
    dep = (("deployment", "dep"),)
    assert samples[("kpigate_rollout_stage", dep)] == 1
    assert samples[("kpigate_decisions_total", (("action", "promote"), *dep))] == 1
    assert samples[("kpigate_decisions_total", (("action", "rollback"), *dep))] == 0
    assert samples[("kpigate_traffic_weight", (*dep, ("role", "candidate")))] == 0.5
    assert samples[("kpigate_rollout_phase", (*dep, ("phase", "canary")))] == 1
    assert samples[("kpigate_kpi_samples", (*dep, ("kpi", "error_rate")))] > 0
    lower = samples[("kpigate_kpi_interval_lower", (*dep, ("kpi", "error_rate")))]
    upper = samples[("kpigate_kpi_interval_upper", (*dep, ("kpi", "error_rate")))]
    assert lower < upper
