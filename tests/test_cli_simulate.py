"""`kpigate simulate` and `kpigate plan` through a subprocess, as users run them."""

import json
import subprocess
import sys

import pytest

FRAUD = "examples/policies/fraud.yaml"
BENCH = "benchmarks/policies/fraud_benchmark.yaml"
BASELINE = "examples/baselines/fraud.yaml"


def kpigate(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mlflow_kpigate.cli", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_simulate_rollback_shows_progress_and_summary():
    r = kpigate("simulate", BENCH, "--scenario", "recall-minus-10",
                "--requests-per-interval", "200000", "--horizon", "60")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "scenario recall-minus-10" in out
    assert "verdicts:" in out
    assert "[>...] 5%" in out  # the progress line of the 5% stage
    assert "outcome: ROLLED BACK" in out
    assert "recall" in out.split("evidence at the last evaluation")[1]
    assert "worse" in out


def test_simulate_promotes_the_better_candidate_in_the_main_job():
    r = kpigate("simulate", FRAUD, "--scenario", "recall-plus-3.2", "-q")
    assert r.returncode == 0, r.stderr
    assert "outcome: PROMOTED to 100%" in r.stdout


def test_simulate_json_is_machine_readable():
    r = kpigate("simulate", BENCH, "--scenario", "recall-minus-10", "--horizon", "30",
                "--requests-per-interval", "200000", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["outcome"] == "rolled_back"
    last = data["decisions"][-1]
    assert last["action"] == "rollback"
    assert {e["kpi"] for e in last["decision"]["evidence"]} == {
        "recall", "precision", "latency_p95", "fpr_fairness"}


def test_simulate_scenario_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nstream: {requests_per_interval: 200000, horizon: 40}\n"
                 "candidate: {recall_delta: -0.15}\n")
    r = kpigate("simulate", BENCH, "--scenario-file", str(f), "-q")
    assert r.returncode == 0, r.stderr
    assert "scenario mine" in r.stdout
    assert "ROLLED BACK" in r.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", BENCH, "--scenario", "nope"], "is neither a built-in scenario"),
        (["simulate", "missing.yaml"], "missing.yaml: file not found"),
        (["simulate", BENCH, "--horizon", "0"], "Invalid value for '--horizon'"),
        (["plan", FRAUD, "--baseline-file", "nowhere.yaml"], "cannot read the baseline file"),
        (["plan", FRAUD], "give the baseline's figures: --model NAME"),
        (["plan", FRAUD, "--baseline-file", BASELINE, "--traffic", "0"], "--traffic 0: must be"),
        (["plan", FRAUD, "--baseline-file", BASELINE, "--traffic", "2", "--label-delay", "soon"],
         "--label-delay: 'soon' is not a duration"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args, needle):
    r = kpigate(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_scenario_and_baseline_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("candidate: {recall_delta: -0.1, typo: 1}\n")
    r = kpigate("simulate", BENCH, "--scenario-file", str(bad))
    assert r.returncode == 2
    assert "candidate.typo: unknown field" in r.stderr
    assert "Traceback" not in r.stderr
    base = tmp_path / "base.yaml"
    base.write_text("kpis: {recall: {mean: 0.9, sd: 0.1}}\n")
    r = kpigate("plan", FRAUD, "--baseline-file", str(base))
    assert r.returncode == 2
    assert "kpis.recall.sd: unknown field" in r.stderr


def test_simulate_rejects_a_policy_segment_the_stream_lacks(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "stages: 5,100\nkpis:\n"
        "  - {name: fair, kind: fairness, metric: recall, segment_by: device, margin: 20%}\n")
    r = kpigate("simulate", str(policy))
    assert r.returncode == 2
    assert "segment_by 'device'" in r.stderr


def test_plan_prints_a_row_per_stage_and_kpi():
    r = kpigate("plan", FRAUD, "--baseline-file", BASELINE)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("  canary-5 ")]
    kpis = {ln.split()[1] for ln in lines}
    assert kpis == {"precision", "recall", "latency_p95", "fpr_fairness", "error_rate"}
    recall = next(ln for ln in lines if ln.split()[1] == "recall")
    numbers = [int(tok.replace(",", "")) for tok in recall.split() if tok[0].isdigit()]
    _promote, detect, wald = numbers[:3]
    assert wald < detect  # Wald's SPRT with a known baseline is the lower bound


def test_simulate_scenario_in_time_units(tmp_path):
    # requests_per_second and a duration horizon count in the policy's 2-minute intervals.
    f = tmp_path / "slow.yaml"
    f.write_text("name: slow\nstream: {requests_per_second: 1000, horizon: 1h}\n"
                 "candidate: {recall_delta: -0.2}\n")
    r = kpigate("simulate", BENCH, "--scenario-file", str(f), "-q")
    assert r.returncode == 0, r.stderr
    assert "120,000 requests per 2m (~1,000/s)" in r.stdout
    assert "horizon 30 intervals (1h)" in r.stdout
    assert "ROLLED BACK" in r.stdout
