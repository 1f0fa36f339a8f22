"""`kpigate plan` with the baseline's figures from a real MLflow registry, as users run it.

The registered model (tests/conftest.py) has version 1 (alias ``champion``) whose training
run logged recall over five steps and the prevalence, and version 2 with recall only. The
policy decides on recall, an error rate and p95 latency; its AUC is ``info`` (it decides
nothing, so the plan asks nothing for it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

POLICY = """
evaluation: {interval: 5m, maturity: 30m}
stage_defaults: {min_dwell: 1h, max_duration: 1d}
stages: [{traffic: 5, promote_margin_scale: 3}, 50, 100]
kpis:
  - {name: recall, kind: proportion, metric: recall, role: critical, margin: 0.02}
  - {name: error_rate, kind: proportion, metric: error_rate, role: critical, margin: 0.005}
  - {name: latency_p95, kind: quantile, source: latency, q: 0.95, role: guardrail,
     margin: 10%}
  - {name: auc, kind: auc, role: info}
"""


def kpigate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlflow_kpigate.cli", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def policy(tmp_path: Path) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return str(path)


@pytest.mark.parametrize("tracking_uri", ["server"], indirect=True)
def test_plan_reads_the_baseline_from_the_registry(registered_model, policy, tmp_path):
    name = registered_model.name
    # The registry has recall and the prevalence; each missing figure is one line naming
    # it and where to put it, and the exit code is 2.
    r = kpigate("plan", policy, "--model", name)
    assert r.returncode == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"kpigate plan: error_rate needs 'kpis.error_rate.mean' (the baseline's value of "
        f"error_rate); log run metric 'error_rate' on the run of {name} @champion, or give "
        "it in --baseline-file",
        f"kpigate plan: latency_p95 needs 'kpis.latency_p95.mean' (the baseline's value of "
        f"latency_p95); log run metric 'latency_p95' on the run of {name} @champion, or "
        "give it in --baseline-file",
        "kpigate plan: latency_p95 needs 'kpis.latency_p95.unit_sd' (the σ of log-latency, "
        f"to turn the margin into exceedance points); log run metric 'latency_p95.unit_sd' "
        f"on the run of {name} @champion, or give it in --baseline-file"]
    # Version 2's run has no prevalence: the same question about another version asks for it.
    r = kpigate("plan", policy, "--model", name, "--baseline", "2")
    assert r.returncode == 2
    assert "recall needs 'prevalence'" in r.stderr
    assert "Traceback" not in r.stderr

    # Log what was missing on version 1's run: a zero error rate (no window ever saw an
    # error) is a figure like any other.
    client = MlflowClient(registered_model.tracking_uri)
    run_id = registered_model.run_ids["1"]
    for key, value in (("error_rate", 0.0), ("latency_p95", 0.14),
                       ("latency_p95.unit_sd", 0.35)):
        client.log_metric(run_id, key, value)
    r = kpigate("plan", policy, "--model", name, "--traffic", "2", "--label-delay", "1h")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    # @champion resolved to version 1; where each figure came from.
    assert f"baseline models:/{name}/1: recall from run {run_id} history (5 values)" in out
    requests_table = out.split("hours per stage at", 1)[0]
    rows = {tuple(ln.split()[:2]): ln for ln in requests_table.splitlines()
            if ln.startswith("  canary-")}
    assert set(rows) == {(s, k) for s in ("canary-5", "canary-50")
                         for k in ("recall", "error_rate", "latency_p95")}
    assert "Agresti–Caffo" in rows[("canary-5", "error_rate")]
    hours = _hours_table(out)
    # Labels after 1 h, 2 requests/s: requests to promote ÷ 2 + 1 h for the labelled
    # recall, which binds at both stages.
    for stage, (requests, h, binds) in hours.items():
        assert binds == "recall", stage
        promote = int(rows[(stage, "recall")].split()[4].replace(",", ""))
        assert requests == promote
        assert h == pytest.approx(promote / 2 / 3600 + 1, abs=0.05)
    assert "forecast (an equal candidate's expected path" in out
    assert re.search(r"^  5% +now +in ~[\d.]+ h", out, re.M)
    assert "warning: 5% cannot decide within its max_duration 1d at 2 requests/s" in out

    # A baseline file on top: its fields win over the registry's.
    base = tmp_path / "base.yaml"
    base.write_text("kpis: {error_rate: {mean: 0.01}}\n")
    r = kpigate("plan", policy, "--model", name, "--baseline-file", str(base))
    assert r.returncode == 0, r.stderr
    assert "Agresti–Caffo" not in r.stdout


def _hours_table(out: str) -> dict[str, tuple[int, float, str]]:
    """The "hours per stage" rows: stage → (promote requests, hours, binds)."""
    section = out.split("hours per stage at", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for ln in section.splitlines()[2:]:
        stage, requests, hours, binds = ln.split()[:4]
        rows[stage] = (int(requests.replace(",", "")), float(hours), binds)
    return rows


def test_a_baseline_file_alone_with_a_zero_error_rate(policy, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("prevalence: 0.015\nkpis:\n  recall: {mean: 0.876}\n"
                    "  error_rate: {mean: 0}\n  latency_p95: {mean: 0.14, unit_sd: 0.35}\n")
    r = kpigate("plan", policy, "--baseline-file", str(base), "--traffic", "50")
    assert r.returncode == 0, r.stderr
    assert "labels after 30m" in r.stdout  # no --label-delay: the policy's maturity
    assert "warning:" not in r.stdout  # 50 requests/s decide within a day
    # Missing figures name the file as the place to add them.
    base.write_text("kpis: {recall: {mean: 0.876}}\n")
    r = kpigate("plan", policy, "--baseline-file", str(base))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "kpigate plan: recall needs 'prevalence' (the share of labelled positives among "
        "requests); add it to --baseline-file",
        "kpigate plan: error_rate needs 'kpis.error_rate.mean' (the baseline's value of "
        "error_rate); add it to --baseline-file",
        "kpigate plan: latency_p95 needs 'kpis.latency_p95.mean' (the baseline's value of "
        "latency_p95); add it to --baseline-file",
        "kpigate plan: latency_p95 needs 'kpis.latency_p95.unit_sd' (the σ of log-latency, "
        "to turn the margin into exceedance points); add it to --baseline-file"]
    r = kpigate("plan", policy, "--baseline-file", str(base), "--label-delay", "1h")
    assert r.returncode == 2
    assert r.stderr.strip() == "Error: --label-delay needs --traffic (hours follow from both)"
