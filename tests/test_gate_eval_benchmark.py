"""benchmarks/gate_eval.py runs end to end on a small input and prints what it promises."""

import json
import subprocess
import sys


def test_gate_eval_json_shape_and_identical_decisions():
    r = subprocess.run([sys.executable, "benchmarks/gate_eval.py", "--calls", "2", "--rounds",
                        "2", "--requests", "40000", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data["solvers"]) == {"brentq", "newton"}
    for figures in data["solvers"].values():
        assert set(figures) == {"median_ms", "p90_ms", "cpu_median_ms", "cold_ms", "calls"}
        assert figures["calls"] == 4
        assert 0 < figures["median_ms"] <= figures["p90_ms"]
    assert data["ratio_median"] > 0
    assert data["decisions"]["identical"] is True
    assert data["decisions"]["max_relative_deviation"] <= 1e-9
    settings = data["settings"]
    assert (settings["kpis"], settings["segments"]) == (20, 10)
    assert settings["radius_calls"] > 100


def test_gate_eval_prints_a_table():
    r = subprocess.run([sys.executable, "benchmarks/gate_eval.py", "--calls", "1", "--rounds",
                        "1", "--requests", "20000"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("gate.evaluate, 20 KPIs × 10 segments")
    assert [line.split()[0] for line in lines[2:4]] == ["brentq", "newton"]
    assert "decisions identical" in lines[4]
