"""The rollout report: files, valid PNG charts, markdown tables, escaping, missing values."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from mlflow_kpigate.core.state import Phase, RolloutState, Weights
from mlflow_kpigate.gate import (
    Action,
    BaselineKpi,
    Decision,
    Evidence,
    RegistryBaseline,
    StageSample,
    Verdict,
    evaluate,
)
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.policy import Policy, policy_from_dict
from mlflow_kpigate.report import (
    ReportFiles,
    build_report,
    fmt_delta,
    fmt_difference,
    fmt_interval,
    fmt_value,
    md_escape,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T0 = 1_790_000_000.0
EVIL = "| <script>alert(1)</script> `code` [link](javascript:x) **bold**"

POLICY_DOC = {
    "name": "fraud-report-test",
    "stages": [
        {"traffic": 5, "min_samples": {"requests": 500, "labelled": 500}},
        {"traffic": 25, "min_samples": {"requests": 500, "labelled": 500}},
        {"traffic": 100},
    ],
    "kpis": [
        {"name": "recall", "kind": "proportion", "metric": "recall", "role": "critical",
         "margin": 0.05},
        {"name": "precision", "kind": "proportion", "metric": "precision", "margin": 0.05},
        {"name": "latency_p95", "kind": "quantile", "q": 0.95, "margin": "10%"},
        {"name": "auc", "kind": "auc", "role": "success"},
    ],
    "control_limits": {"k": 2},
}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return policy_from_dict(POLICY_DOC)


def aggregate(policy: Policy, seed: int, n: int, recall: float) -> RoleAggregate:
    """``n`` labelled requests of a classifier with the given recall (FPR 5%)."""
    rng = np.random.default_rng(seed)
    agg = RoleAggregate(AggregateSpec.from_policy(policy))
    agg.add_requests(np.exp(rng.normal(math.log(0.08), 0.2, n)), np.zeros(n, dtype=bool))
    y = rng.random(n) < 0.4
    pred = np.where(y, rng.random(n) < recall, rng.random(n) < 0.05)
    score = 1 / (1 + np.exp(-rng.normal(-1.0 + 2.5 * y, 1.0)))
    agg.add_labelled(y, pred, score)
    return agg


@pytest.fixture(scope="module")
def rollout(policy: Policy) -> dict:
    """Three evaluations at 5% and two at 25%, decided by the real gate."""
    decisions: list[Decision] = []
    plan = [(0, 400), (0, 800), (0, 2000), (1, 1000), (1, 3000)]
    for i, (stage, n) in enumerate(plan):
        samples = []
        for s in range(stage + 1):
            m = n if s == stage else 2000
            samples.append(StageSample(s, aggregate(policy, 10 * i + s, m, 0.88),
                                       aggregate(policy, 100 + 10 * i + s, m, 0.89)))
        decisions.append(evaluate(policy, stage, 3600.0, samples))
    timestamps = [T0 + 300 * i for i in range(len(decisions))]
    weights = [(T0 - 60, 5.0), (T0 + 850, 25.0)]
    registry = RegistryBaseline({"recall": BaselineKpi(0.88, 0.01, 5),
                                 "precision": BaselineKpi(0.9, None, 1)}, source="models:/m/1")
    return {"decisions": decisions, "timestamps": timestamps, "weights": weights,
            "registry": registry}


def state(**changes) -> RolloutState:
    base = RolloutState(name="fraud-rollout", model_name="fraud", candidate_version="2",
                        baseline_version="1", candidate_uri="models:/fraud/2",
                        baseline_uri="models:/fraud/1", policy_file="policy.yaml",
                        tracking_uri="sqlite:///mlflow.db", port=0, stage_index=1,
                        phase=Phase.CANARY, weights=Weights(25.0), created_at=T0 - 60,
                        rollout_run_id="abc123")
    return base.evolve(**changes)


def check_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[0] > 100
    assert image.shape[1] > 100


def build(tmp_path: Path, policy: Policy, rollout: dict, **kwargs) -> ReportFiles:
    args = {"state": state(), "decisions": rollout["decisions"],
            "timestamps": rollout["timestamps"], "weights_history": rollout["weights"],
            "policy": policy, "registry_baseline": rollout["registry"], "control_k": None}
    args.update(kwargs)
    return build_report(tmp_path / "report", **args)


def table_rows(markdown: str) -> list[list[str]]:
    """Cells of every markdown table row, split on unescaped pipes."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line)
            rows.append([c.strip() for c in cells[1:-1]])
    return rows


def test_report_writes_markdown_html_and_valid_charts(tmp_path, policy, rollout):
    files = build(tmp_path, policy, rollout)
    assert files.markdown.name == "report.md"
    assert files.html.name == "report.html"
    assert set(files.kpi_charts) == {"recall", "precision", "latency_p95", "auc"}
    assert files.kpi_charts["recall"].name == "kpi_recall.png"
    # a control chart needs μ and σ: recall has both, precision only μ
    assert set(files.control_charts) == {"recall"}
    assert files.control_charts["recall"].name == "control_recall.png"
    assert files.traffic_chart is not None
    assert files.traffic_chart.name == "traffic.png"
    for path in files.paths:
        assert path.is_file()
        assert path.parent == tmp_path / "report"
    for path in files.charts:
        check_png(path)


def test_markdown_starts_with_the_decision_and_has_per_stage_tables(tmp_path, policy, rollout):
    files = build(tmp_path, policy, rollout, state=state(reason="all KPIs look fine so far"))
    md = files.markdown.read_text()
    lines = [line for line in md.splitlines() if line.strip()]
    assert lines[0] == "# kpigate rollout report: fraud-rollout"
    assert lines[1] == "**Outcome: IN PROGRESS.** all KPIs look fine so far"
    decisions = rollout["decisions"]
    assert "### Stage 0: canary-5 (evaluations 1–3" in md
    assert "### Stage 1: canary-25 (evaluations 4–5" in md
    header = ["KPI", "role", "baseline", "candidate", "Δ (candidate − baseline)",
              "bounds \\[lower, upper\\], + = better", "margin", "samples seen / needed",
              "verdict"]
    rows = table_rows(md)
    assert rows.count(header) == 2
    # each stage's table shows the stage's *last* evaluation
    for index in (2, 4):
        ev = decisions[index].evidence_for("recall")
        expected = ["recall", "critical", fmt_value(ev.baseline_value),
                    fmt_value(ev.candidate_value),
                    fmt_difference(ev.candidate_value, ev.baseline_value),
                    md_escape(fmt_interval(ev.lower, ev.upper)), "0.05",
                    f"{ev.samples:,} / " + (f"{ev.samples_needed:,}" if ev.samples_needed
                                            else "—"),
                    ev.verdict.value.replace("_", " ")]
        assert expected in rows
    first = decisions[0].evidence_for("recall")
    assert fmt_delta(first.delta) != fmt_delta(decisions[2].evidence_for("recall").delta)
    latency = decisions[4].evidence_for("latency_p95")
    assert f"{latency.candidate_value * 1000:.1f} ms" in md
    # latency in ms everywhere: the difference, the margin, and the bounds explained
    diff = (latency.candidate_value - latency.baseline_value) * 1000
    assert f"{diff:+.1f} ms" in md
    assert f"10% ({0.10 * latency.baseline_value * 1000:.1f} ms)" in md
    assert "latency\\_p95's bounds are on exceedance" in md  # markdown-escaped
    # traffic timeline, summary (with the registry's μ ± σ), decision log, charts
    assert ["2026-09-21 14:12:20 UTC", "0s", "5%"] in rows
    assert ["2026-09-21 14:27:30 UTC", "15m10s", "25%"] in rows
    summary = next(r for r in rows if r[:3] == ["recall", "proportion", "critical"])
    assert summary[6] == "0.88 ± 0.01 (n=5)"
    assert next(r for r in rows if r[:2] == ["precision", "proportion"])[6] == "0.9 (n=1)"
    assert next(r for r in rows if r[:2] == ["auc", "auc"])[6] == "—"
    assert len([r for r in rows if r and r[0].isdigit()]) == 5
    assert "![recall per evaluation](kpi_recall.png)" in md
    assert "![recall control chart](control_recall.png)" in md
    assert "![candidate traffic over time](traffic.png)" in md


def test_html_is_self_contained(tmp_path, policy, rollout):
    files = build(tmp_path, policy, rollout)
    page = files.html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('src="data:image/png;base64,') == len(files.charts)
    assert ".png" not in page
    assert "<th>bounds [lower, upper], + = better</th>" in page
    assert "<td>recall</td>" in page


def test_untrusted_text_is_escaped(tmp_path, policy, rollout):
    decisions = [Decision(d.action, EVIL, d.stage_index, d.stage_name,
                          evidence=d.evidence, checks=d.checks)
                 for d in rollout["decisions"]]
    files = build(tmp_path, policy, rollout, decisions=decisions,
                  state=state(reason=EVIL, name="evil<b>", model_name="`m`|x"))
    md = files.markdown.read_text()
    assert "<script>" not in md
    assert "<b>" not in md
    assert "\\| &lt;script&gt;alert(1)&lt;/script&gt; \\`code\\` \\[link\\](javascript:x) " \
           "\\*\\*bold\\*\\*" in md
    # pipes in the text do not add table columns
    for row in table_rows(md):
        assert len(row) in (2, 3, 4, 5, 9, 12), row
    model_row = next(r for r in table_rows(md) if r[0] == "model")
    assert model_row == ["model", "\\`m\\`\\|x"]
    page = files.html.read_text()
    assert "<script>" not in page
    assert "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>kpigate rollout report: evil&lt;b&gt;</title>" in page


def test_missing_values_render_as_dash(tmp_path, policy):
    nan = math.nan
    waiting = Evidence(kpi="recall", kind="proportion", role="critical", direction="higher",
                       verdict=Verdict.INSUFFICIENT_DATA,
                       reason="recall: not enough labelled positives yet", margin="0.05")
    partial = Evidence(kpi="recall", kind="proportion", role="critical", direction="higher",
                       verdict=Verdict.INCONCLUSIVE, reason="recall is inconclusive",
                       baseline_value=0.88, candidate_value=0.87, delta=-0.01, lower=nan,
                       upper=0.02, margin="0.05", samples=120, samples_needed=None)
    decisions = [Decision(Action.HOLD, "hold: waiting for labels", 0, "canary-5",
                          evidence=(waiting,)),
                 Decision(Action.HOLD, "hold: recall inconclusive", 0, "canary-5",
                          evidence=(partial,))]
    registry = RegistryBaseline({"recall": BaselineKpi(0.88, 0.01, 3)})
    files = build_report(tmp_path / "r", state=state(phase=Phase.HOLDING), decisions=decisions,
                         timestamps=[T0, T0 + 60], weights_history=[],
                         policy=policy, registry_baseline=registry, control_k=3.0)
    md = files.markdown.read_text()
    rows = table_rows(md)
    assert ["recall", "critical", "0.88", "0.87", "-0.01", "\\[—, +0.02\\]", "0.05",
            "120 / —", "inconclusive"] in rows
    assert "nan" not in md.lower()
    assert "No traffic change was recorded." in md
    assert "**Outcome: HOLDING.** hold: recall inconclusive" in md
    assert set(files.kpi_charts) == {"recall"}
    assert set(files.control_charts) == {"recall"}
    for path in files.charts:
        check_png(path)
    text = re.sub(r"base64,[A-Za-z0-9+/=]+", "", files.html.read_text())
    assert "nan" not in text.lower()


def test_formatting_helpers():
    assert fmt_value(math.nan) == "—"
    assert fmt_value(None) == "—"
    assert fmt_value(math.inf) == "—"
    assert fmt_value(0.87654321) == "0.8765"
    assert fmt_delta(0.0123) == "+0.0123"
    assert fmt_delta(math.nan) == "—"
    assert fmt_interval(math.nan, math.nan) == "—"
    assert fmt_interval(-0.02, 0.01) == "[-0.02, +0.01]"
    assert md_escape("a\nb | c") == "a b \\| c"


def test_one_timestamp_per_decision(tmp_path, policy, rollout):
    with pytest.raises(ValueError, match="one time per decision"):
        build(tmp_path, policy, rollout, timestamps=rollout["timestamps"][:-1])


def test_a_rollback_is_worded_once(tmp_path, policy, rollout):
    """The gate's reasons start with their action ("rollback: …"); the report names the
    action beside them, so it drops that prefix instead of saying "rollback: rollback:"."""
    from dataclasses import replace

    why = "rollback: recall is confidently worse than the baseline by more than 0.05"
    decisions = [*rollout["decisions"][:-1],
                 replace(rollout["decisions"][-1], action=Action.ROLLBACK, reason=why)]
    files = build(tmp_path, policy, rollout, decisions=decisions,
                  state=state(phase=Phase.ROLLED_BACK, reason=why, weights=Weights(0.0)))
    md = files.markdown.read_text()
    assert "rollback: rollback" not in md
    lines = [line for line in md.splitlines() if line.strip()]
    bare = why.removeprefix("rollback: ")
    assert lines[1] == f"**Outcome: ROLLED BACK.** {why}"
    assert f"**Last decision:** rollback: {bare}" in md
    assert ["canary-25", "rollback", bare] in [row[2:] for row in table_rows(md)]
