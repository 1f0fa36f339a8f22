"""The forecast where users see it, from a rollout driven by the real controller.

The controller (SQLite store, prediction log; tests/_controller_fixtures.py) keeps the
forecast in each decision's ``meta["forecast"]`` and warns once, in the audit log, when a
stage cannot decide within its ``max_duration`` at the measured traffic. ``kpigate
replay`` reproduces the decisions without it; the Prometheus exposition, ``kpigate
status``/``watch`` (as lines, and in the live view on a terminal: tests/_terminal.py),
the report and the pull-request comment show it.

The rollout: 40 requests per second (the 5% stage's candidate gets 2 of them) for a stage
with a 1-minute ``max_duration`` whose ``min_samples`` asks for 300 candidate requests:
about 150 s, so the forecast warns.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from _controller_fixtures import controller, feed, make_deployment
from _terminal import Terminal
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from mlflow_kpigate.cli import main
from mlflow_kpigate.console import rollout_view
from mlflow_kpigate.core.decision import Action
from mlflow_kpigate.core.events import ForecastWarning
from mlflow_kpigate.core.forecast import META_KEY, MIN_SAMPLES, forecast_view
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.state import Phase
from mlflow_kpigate.deploy.finish import write_report
from mlflow_kpigate.github.comment import render
from mlflow_kpigate.github.record import Links, record_of
from mlflow_kpigate.rollout.exposition import DecisionMetrics
from mlflow_kpigate.rollout.replay import gate_output, replay

ROOT = Path(__file__).resolve().parent.parent
LOOK_S = 5.0
PER_LOOK = 200  # requests per look: 40 per second


@pytest.fixture
def holding(tmp_path: Path):
    """Four looks at the 5% stage (the controller restarted before the last one)."""
    directory, store, policy, clock = make_deployment(tmp_path)
    metrics = DecisionMetrics("dep")
    decisions = []
    ctl = controller(directory, clock, observer=metrics.observe)
    for look in range(4):
        if look == 3:
            # A new controller for the last look: it reads the warning back from the log.
            ctl = controller(directory, clock, observer=metrics.observe)
        feed(directory, policy, 0, n=PER_LOOK, seed=look, ts=clock.now)
        clock.now += LOOK_S
        decisions.append(ctl.step())
    assert [d.action for d in decisions] == [Action.HOLD] * 4
    return tmp_path, directory, store, policy, decisions, metrics


def test_each_decision_carries_the_forecast_and_the_warning_comes_once(holding):
    _root, _directory, store, _policy, decisions, _metrics = holding
    views = [forecast_view(d) for d in decisions]
    assert all(v is not None for v in views)
    last = views[-1]
    assert last is not None
    assert last.basis.startswith("measured over")
    assert last.request_rate == pytest.approx(PER_LOOK / LOOK_S, rel=0.05)
    now = last.current
    assert now is not None
    assert now.stage == "5%"
    assert now.binds == MIN_SAMPLES
    # 300 candidate requests at 5% of 40 per second: 150 s from the stage's start.
    assert now.duration_s == pytest.approx(150, abs=10)
    assert now.exceeds_max_duration
    warnings = [r.event for r in store.events() if isinstance(r.event, ForecastWarning)]
    assert len(warnings) == 1  # once, though three later looks say the same (one restarted)
    (warning,) = warnings
    assert warning.stage == "5%"
    assert warning.reason.startswith("forecast: 5% cannot decide within its max_duration "
                                     "1m at 40 requests/s: an equal candidate needs")
    assert "it will hold and alert then" in warning.reason
    # Not before two looks of the stage: the first look's rate rests on one count.
    kinds = [r.kind for r in store.events()]
    assert kinds.index("forecast_warning") == kinds.index("hold") + 2


def test_replay_reproduces_the_decisions_without_the_forecast(holding):
    _root, _directory, store, policy, _decisions, _metrics = holding
    evaluations = [e.evaluation for e in History.of(store.events()).evaluations()]
    assert all(META_KEY in e.decision.meta for e in evaluations)
    result = replay(evaluations, policy)
    assert result.reproduced
    for r in result.results:
        assert r.replayed is not None
        assert META_KEY not in r.replayed.meta
        assert gate_output(r.evaluation.decision) == gate_output(r.replayed)


def test_prometheus_exports_the_forecast_per_stage_and_case(holding):
    _root, _directory, _store, _policy, decisions, metrics = holding
    text = generate_latest(metrics.registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    fc = forecast_view(decisions[-1])
    assert fc is not None
    for stage in fc.stages:
        labels = (("deployment", "dep"), ("stage", stage.stage))
        for case, value in (("equal", stage.equal_s), ("at_margin", stage.at_margin_s)):
            key = ("kpigate_stage_decision_eta_seconds", (("case", case), *labels))
            assert samples[key] == value
        assert samples[("kpigate_stage_forecast_duration_seconds", labels)] == \
            stage.duration_s
        assert samples[("kpigate_stage_max_duration_seconds", labels)] == 60.0
    assert {dict(k[1])["stage"] for k in samples
            if k[0] == "kpigate_stage_decision_eta_seconds"} == {"5%", "50%"}


def test_status_and_watch_show_the_forecast(holding):
    root = holding[0]
    result = CliRunner().invoke(main, ["status", "dep", "--state-dir", str(root)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    forecast = next(ln for ln in lines if ln.startswith("  forecast: "))
    assert " to decide at 5% (min samples bind)" in forecast
    assert "; full rollout ~" in forecast
    assert any(ln.startswith("    stages: 5% ~") and "→ 50% ~" in ln for ln in lines)
    assert any(ln.startswith("    at 40 requests/s, 100% labelled at once (measured over ")
               for ln in lines), lines
    assert any(ln.startswith("  warning: 5% cannot decide within its max_duration 1m")
               for ln in lines)
    watched = CliRunner().invoke(main, ["watch", "dep", "--state-dir", str(root),
                                        "--timeout", "0"])
    assert watched.exit_code == 5, watched.output  # the rollout goes on (exit_codes.NOT_ENDED)
    assert "forecast_warning" in watched.output
    assert watched.output.count("forecast: ") >= 4  # under every evaluation, and the warning


def test_report_and_pull_request_comment_show_the_forecast(holding):
    _root, directory, store, policy, _decisions, _metrics = holding
    report = (write_report(directory, store.require(), store, policy) / "report.md").read_text()
    section = report.split("## Time to decision (forecast)", 1)[1]
    # The stage's early and last forecast (markdown escapes the "~").
    assert "| 5% | \\~" in section
    assert "| running | min\\_samples |" in section
    assert "Now:" in section
    assert "Warning:" in section
    assert "5% cannot decide within its max\\_duration" in section
    comment = render(record_of(store.require(), History.of(store.events()), policy), Links())
    part = comment.split("#### Time to decision (forecast)", 1)[1]
    assert "| forecast early in the stage | forecast at its last evaluation |" in part
    assert "**Now:**" in part
    assert "**Warning:** 5% cannot decide within its max\\_duration" in part


def _view_text(state, policy, now, width=100):
    console = Console(record=True, width=width, force_terminal=True, color_system=None)
    console.print(rollout_view(state, policy, now))
    return console.export_text()


def test_live_view_of_the_holding_rollout(holding):
    _root, _directory, store, policy, decisions, _metrics = holding
    state = store.require()
    text = _view_text(state, policy, state.stage_started_at + 42)
    lines = text.splitlines()
    assert any(ln.startswith("│ stages    ▶ 5%  → 50% → 100%") for ln in lines), text
    assert any("traffic  baseline 95%, candidate 5%" in ln for ln in lines), text
    checks = {c.name: c for c in decisions[-1].checks}
    requests = checks["candidate requests in stage"]
    assert any(ln.startswith(f"│ candidate requests {requests.seen:,.0f} / 300")
               for ln in (" ".join(ln.split()) for ln in lines)), text
    assert any(" ".join(ln.split()).startswith("│ dwell 42s / 0s (max 1m)") for ln in lines)
    # One row per KPI, its values as kpigate status shows them, and its verdict.
    ev = decisions[-1].evidence_for("error_rate")
    row = next(ln for ln in lines if ln.startswith("│ error_rate "))
    assert f"[{ev.lower:+.4f}, {ev.upper:+.4f}]" in row
    assert ev.verdict.value.replace("_", " ") in row
    assert any(ln.startswith("│ accuracy ") for ln in lines)
    assert any(ln.startswith("│ forecast ~") and "to decide at 5%" in ln for ln in lines)
    assert any(ln.startswith("│ warning  5% cannot decide within its max_duration 1m")
               for ln in lines)
    # A narrow terminal leaves columns out rather than wrapping the numbers.
    narrow = _view_text(state, policy, state.stage_started_at + 42, width=72)
    row = next(ln for ln in narrow.splitlines() if ln.startswith("│ error_rate "))
    assert f"[{ev.lower:+.4f}, {ev.upper:+.4f}]" in row
    # Ended: the stage it ended at is crossed out, no forecast any more.
    ended = _view_text(state.evolve(phase=Phase.ROLLED_BACK), policy, state.updated_at)
    assert "│ stages    ✗ 5%  → 50% → 100%" in ended
    assert "forecast" not in ended
    promoted = _view_text(state.evolve(phase=Phase.PROMOTED, stage_index=2), policy,
                          state.updated_at)
    assert "│ stages   ✓ 5% → ✓ 50% → ✓ 100%" in promoted


def test_status_and_list_print_one_document_as_json_or_yaml(holding):
    root, _directory, _store, _policy, decisions, _metrics = holding
    args = ["dep", "--state-dir", str(root)]
    as_json = CliRunner().invoke(main, ["status", *args, "-o", "json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert (doc["name"], doc["phase"], doc["stage"], doc["stage_index"]) == \
        ("dep", "canary", "5%", 0)
    assert doc["traffic"] == {"candidate_percent": 5.0, "shadow": False,
                              "candidate_attached": True, "baseline_shadow": False}
    assert doc["last_decision"] == decisions[-1].to_dict()
    assert CliRunner().invoke(main, ["status", *args, "--json"]).output == as_json.output
    as_yaml = CliRunner().invoke(main, ["status", *args, "-o", "yaml"])
    assert yaml.safe_load(as_yaml.output) == doc
    listed = CliRunner().invoke(main, ["list", "--state-dir", str(root), "-o", "json"])
    assert json.loads(listed.output) == [doc]
    both = CliRunner().invoke(main, ["status", *args, "--json", "-o", "yaml"])
    assert both.exit_code == 2
    assert "Error: --json and -o yaml: give one of them" in both.output


def _on_terminal(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return Terminal(tmp_path, [sys.executable, "-m", "mlflow_kpigate.cli", *args], env)


def test_watch_and_status_watch_draw_the_live_view_on_a_terminal(holding, tmp_path):
    root = str(holding[0])
    with _on_terminal(tmp_path, "watch", "dep", "--state-dir", root, "--timeout", "0") as term:
        code = term.exit_code()
        lines = term.screen().splitlines()
    assert code == 5  # the rollout goes on (exit_codes.NOT_ENDED)
    top = next(i for i, ln in enumerate(lines) if ln.startswith("╭─ kpigate · dep"))
    bottom = next(i for i, ln in enumerate(lines) if ln.startswith("╰"))
    # The event lines above the view, the closing line below it.
    assert any(" forecast_warning " in ln for ln in lines[:top])
    assert lines[bottom + 1] == "dep: still canary (stopped watching)"
    view = lines[top:bottom]
    assert any(ln.startswith("│ stages    ▶ 5%") for ln in view), view
    assert any("baseline 95%, candidate 5%" in ln for ln in view), view
    assert any(ln.startswith("│ error_rate ") and "critical" in ln for ln in view), view
    # status --watch: the view alone, until Ctrl-C, which stops watching (exit 5).
    with _on_terminal(tmp_path, "status", "dep", "--state-dir", root, "--watch") as term:
        term.wait_for("╰")
        term.interrupt()
        code = term.exit_code()
        screen = term.screen()
    assert code == 5, screen
    assert screen.count("╭─ kpigate · dep") == 1  # redrawn in place, not repeated
    assert "forecast_warning" not in screen
    after = screen.split("╰", 1)[1].splitlines()[1:]
    assert after[:2] == ["stopped watching; the rollout goes on", "EXIT=5"], screen
    assert "Traceback" not in screen
