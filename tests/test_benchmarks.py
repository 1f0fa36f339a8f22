"""The benchmark scripts run end to end on small inputs and print what they promise."""

import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)


def test_decision_efficiency_json_shape(tmp_path):
    scen = tmp_path / "s.yaml"
    scen.write_text(
        "stream: {requests_per_interval: 200000, horizon: 12}\n"
        "scenarios:\n"
        "  - {name: same}\n"
        "  - {name: much-worse, candidate: {recall_delta: -0.2}}\n")
    r = run("benchmarks/decision_efficiency.py", "--reps", "2", "--workers", "1", "--json",
            "--scenario-file", str(scen))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data["scenarios"]) == {"same", "much-worse"}
    keys = {"false_rollback_rate", "power", "exposure_mean", "exposure_median", "exposure_p90",
            "promote_rate", "requests_to_promote_mean", "hold_rate"}
    for scenario in data["scenarios"].values():
        assert set(scenario) == {"paper", "ztest", "kpigate"}
        for figures in scenario.values():
            assert keys <= set(figures)
    assert data["scenarios"]["same"]["kpigate"]["false_rollback_rate"] == 0.0
    assert data["scenarios"]["much-worse"]["kpigate"]["power"] == 1.0
    assert 12_000 < data["bounds"]["wald_asn_requests"] < 12_500


def test_decision_efficiency_bad_policy_exits_2(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("stages: 5,100\nkpis: []\n")
    r = run("benchmarks/decision_efficiency.py", "--policy", str(bad), "--reps", "1")
    assert r.returncode == 2
    assert "kpis: must be a non-empty list" in r.stderr
    assert "Traceback" not in r.stderr


def test_kpi_throughput_small_run_agrees_with_sklearn():
    r = run("benchmarks/kpi_throughput.py", "--n", "200000", "--chunk", "50000", "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("{")
    data = json.loads(r.stdout)
    agreement = data["agreement"]
    for kpi in ("precision", "recall", "f1", "accuracy", "false_positive_rate", "error_rate",
                "mean_log_latency", "fpr[eu]"):
        assert agreement[kpi]["abs_diff"] <= 1e-12, kpi
    assert agreement["auc"]["abs_diff"] <= data["kpigate"]["auc_error_bound"]
    for q in ("p50_latency", "p95_latency", "p99_latency"):
        assert agreement[q]["rel_diff"] <= data["kpigate"]["latency_growth"] - 1
    # The streaming state has the same size at 50k and 200k predictions.
    assert data["kpigate_small"]["state_array_bytes"] == data["kpigate"]["state_array_bytes"]
