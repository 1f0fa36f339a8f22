"""The MLflow registry layer against real stores: the session's tracking server and a local
SQLite store (tests taking ``registered_model`` or ``tracking_uri`` run against both)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.state import Phase, RolloutState, Weights
from mlflow_kpigate.gate import Action, Decision, Evidence, Verdict
from mlflow_kpigate.policy import Policy, policy_from_dict
from mlflow_kpigate.registry import (
    MAX_TAG_VALUE,
    ROLLOUT_EXPERIMENT,
    ModelRef,
    Registry,
    truncate,
)
from mlflow_kpigate.rollout.effects import Effects
from mlflow_kpigate.rollout.memory import InMemoryStateStore, InMemoryTraffic

POLICY = policy_from_dict({
    "stages": "5,25,100",
    "kpis": [
        {"name": "recall", "kind": "proportion", "metric": "recall", "role": "critical",
         "margin": 0.02},
        {"name": "precision", "kind": "proportion", "metric": "precision", "margin": 0.02,
         "registry_metric": "val_precision"},
        {"name": "latency_p95", "kind": "quantile", "q": 0.95, "margin": "10%"},
    ],
})


def client(model) -> MlflowClient:
    return MlflowClient(model.tracking_uri, registry_uri=model.tracking_uri)


def decision(action: Action, stage: int, recall: tuple[float, float],
             lower: float = -0.01) -> Decision:
    """A decision whose recall evidence has the given (baseline, candidate) values."""
    b, c = recall
    ev = Evidence(kpi="recall", kind="proportion", role="critical", direction="higher",
                  verdict=Verdict.INCONCLUSIVE, reason="recall is inconclusive",
                  baseline_value=b, candidate_value=c, delta=c - b, lower=lower,
                  upper=c - b + 0.02, margin="0.02", samples=100)
    waiting = Evidence(kpi="precision", kind="proportion", role="guardrail",
                       direction="higher", verdict=Verdict.INSUFFICIENT_DATA,
                       reason="precision: not enough data", baseline_value=0.9)
    return Decision(action, f"{action.value}: test", stage, f"canary-{stage}",
                    evidence=(ev, waiting))


def rollout(registry: Registry, candidate: ModelRef, baseline: ModelRef, policy_file: Path,
            recalls: list[tuple[float, float]], outcome: str | None,
            report_dir: Path | None = None) -> str:
    """A whole rollout run: start, one evaluation per (baseline, candidate) recall, finish."""
    run_id = registry.start_rollout_run(deployment="fraud-prod", candidate=candidate,
                                        baseline=baseline, policy_file=policy_file,
                                        params={"stages": "5,25,100", "port": "5055"})
    for step, pair in enumerate(recalls, start=1):
        action = Action.PROMOTE if step == len(recalls) else Action.HOLD
        registry.log_evaluation(run_id, step, decision(action, 0, pair), 5.0 * step,
                                timestamp_ms=1_790_000_000_000 + step * 1000)
    if outcome is not None:
        registry.finish_rollout_run(run_id, outcome=outcome, report_dir=report_dir)
    return run_id


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("stages: 5,25,100\nkpis: []\n")
    return path


# --- resolving model URIs ---------------------------------------------------------------


def test_resolve_version_and_alias(registered_model, tmp_path):
    registry = Registry(registered_model.tracking_uri)
    name = registered_model.name
    ref = registry.resolve(f"models:/{name}/2")
    assert (ref.name, ref.version, ref.uri) == (name, "2", f"models:/{name}/2")
    assert ref.run_id == registered_model.run_ids["2"]
    # MLflow 3 stores the LoggedModel as the source; storage_uri is where the files are
    assert ref.source.startswith("models:/m-")
    logged = client(registered_model).get_logged_model(ref.source.split("/")[-1])
    assert ref.storage_uri == logged.artifact_location
    assert not ref.storage_uri.startswith("models:/")
    mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{ref.storage_uri}/MLmodel",
                                                  dst_path=str(tmp_path))
    assert "sklearn" in Path(mlmodel).read_text()

    champion = registry.resolve(f"models:/{name}@champion")
    assert (champion.version, champion.uri) == ("1", f"models:/{name}/1")
    assert champion.run_id == registered_model.run_ids["1"]
    assert champion.storage_uri != ref.storage_uri


@pytest.mark.parametrize("tracking_uri", ["local"], indirect=True)
def test_resolve_runs_source_to_the_run_artifacts(registered_model, tmp_path):
    c = client(registered_model)
    run_id = registered_model.run_ids["1"]
    files = tmp_path / "extra"
    files.mkdir()
    (files / "MLmodel").write_text("flavors: {}\n")
    c.log_artifacts(run_id, str(files), "packaged")
    version = c.create_model_version(registered_model.name, f"runs:/{run_id}/packaged",
                                     run_id=run_id).version
    ref = Registry(registered_model.tracking_uri).resolve(
        f"models:/{registered_model.name}/{version}")
    assert ref.source == f"runs:/{run_id}/packaged"
    assert ref.storage_uri == c.get_run(run_id).info.artifact_uri + "/packaged"
    assert (Path(ref.storage_uri) / "MLmodel").is_file()


@pytest.mark.parametrize(("uri", "message"), [
    ("models:/fraud", "LoggedModel id"),
    ("models:/m-0123456789abcdef", "LoggedModel id"),
    ("models:/fraud/Production", "stages are deprecated in MLflow; use an alias"),
    ("models:/fraud/staging", "stages are deprecated"),
    ("models:/fraud/latest", "give the version number or an alias"),
    ("models:/fraud/abc", "not a version number"),
    ("models:/fraud/0", "not a version number"),
    ("models:/fraud/1/extra", "no path after the version"),
    ("models:/fraud@", "malformed alias URI"),
    ("models:/", "no model name"),
    ("runs:/0123/model", "not a registered-model URI (runs:)"),
    ("s3://bucket/model", "not a registered-model URI (s3:)"),
    ("fraud/1", "not a registered-model URI (no scheme)"),
])
def test_resolve_rejects_unusable_uris(uri, message):
    # nothing listens on this URI: a malformed model URI is reported without contacting MLflow
    with pytest.raises(UsageError) as err:
        Registry("http://127.0.0.1:9").resolve(uri)
    text = str(err.value)
    assert message in text
    assert text.startswith(uri)
    assert "\n" not in text


def test_resolve_unknown_model_version_and_alias(registered_model):
    registry = Registry(registered_model.tracking_uri)
    name = registered_model.name
    with pytest.raises(UsageError, match=r"has no version 7 \(its latest is 2\)"):
        registry.resolve(f"models:/{name}/7")
    with pytest.raises(UsageError, match=r"has no alias 'gold' \(its aliases: champion\)"):
        registry.resolve(f"models:/{name}@gold")
    with pytest.raises(UsageError, match="no registered model named 'nope-x'") as err:
        registry.resolve("models:/nope-x/1")
    assert registered_model.tracking_uri in str(err.value)


# --- default baseline ---------------------------------------------------------------------


def test_default_baseline_follows_the_alias(registered_model):
    registry = Registry(registered_model.tracking_uri)
    name = registered_model.name
    assert registry.default_baseline(name).uri == f"models:/{name}/1"
    client(registered_model).set_registered_model_alias(name, "stable", "2")
    assert registry.default_baseline(name, "stable").version == "2"
    client(registered_model).delete_registered_model_alias(name, "champion")
    with pytest.raises(UsageError) as err:
        registry.default_baseline(name)
    text = str(err.value)
    assert "no 'champion' alias" in text
    assert "set it with" in text
    assert f"pass -C baseline=models:/{name}/VERSION" in text
    assert "\n" not in text


# --- baseline KPIs ------------------------------------------------------------------------


def test_baseline_kpis_from_run_metrics_and_history(registered_model):
    registry = Registry(registered_model.tracking_uri)
    ref = registry.resolve(f"models:/{registered_model.name}@champion")
    base = registry.baseline_kpis(ref, POLICY)
    logged = registered_model.metrics["1"]
    history = logged["recall"]
    assert len(history) == 5
    recall = base.get("recall")
    assert recall is not None
    assert recall.n == len(history)
    assert recall.mean == pytest.approx(statistics.fmean(history))
    assert recall.std == pytest.approx(statistics.stdev(history))
    precision = base.get("precision")  # read through registry_metric: val_precision
    assert precision is not None
    assert (precision.mean, precision.std, precision.n) == (logged["val_precision"][0], None, 1)
    assert base.get("latency_p95") is None
    assert base.prevalence == pytest.approx(logged["prevalence"][0])
    assert base.source is not None
    assert base.source.startswith(ref.uri)
    assert "recall from run" in base.source


def test_baseline_kpis_prefer_earlier_rollouts(registered_model, policy_file):
    registry = Registry(registered_model.tracking_uri)
    name = registered_model.name
    v1 = registry.resolve(f"models:/{name}/1")
    v2 = registry.resolve(f"models:/{name}/2")
    # two finished rollouts with v1 as the baseline; the final baseline.recall values count
    rollout(registry, v2, v1, policy_file, [(0.5, 0.5), (0.86, 0.9)], "rolled_back")
    rollout(registry, v2, v1, policy_file, [(0.87, 0.91)], "promoted")
    # a rollout still running is not a finished measurement
    rollout(registry, v2, v1, policy_file, [(0.1, 0.1)], None)
    base = registry.baseline_kpis(v1, POLICY)
    recall = base.get("recall")
    assert recall is not None
    assert recall.n == 2
    assert recall.mean == pytest.approx(0.865)
    assert recall.std == pytest.approx(statistics.stdev([0.86, 0.87]))
    precision = base.get("precision")
    assert precision is not None
    assert (precision.mean, precision.n) == (0.9, 2)  # baseline.precision of both rollouts
    assert "recall from 2 earlier rollouts" in (base.source or "")
    # v2 was promoted by the second rollout: its live candidate value is a measurement of
    # v2; one live value beats one offline value, σ unknown
    cand = registry.baseline_kpis(v2, POLICY).get("recall")
    assert cand is not None
    assert (cand.mean, cand.std, cand.n) == (pytest.approx(0.91), None, 1)
    assert cand.mean != registered_model.metrics["2"]["recall"][0]


# --- tags and aliases ---------------------------------------------------------------------


def test_status_tags_are_visible_on_the_model_version(registered_model):
    registry = Registry(registered_model.tracking_uri)
    name = registered_model.name
    candidate = registry.resolve(f"models:/{name}/2")
    baseline = registry.resolve(f"models:/{name}/1")
    long_reason = "rollback: " + "recall is worse; " * 600
    registry.status_tags(candidate, status="rolled_back", stage="canary-25",
                         decision="rollback", reason=long_reason, rollout_run_id="run123")
    registry.mark_superseded(baseline, by=candidate)
    registry.set_tags(candidate, {"kpigate.custom": "x|y"})
    tags = client(registered_model).get_model_version(name, "2").tags
    assert tags["kpigate.status"] == "rolled_back"
    assert tags["kpigate.stage"] == "canary-25"
    assert tags["kpigate.decision"] == "rollback"
    assert tags["kpigate.rollout_run_id"] == "run123"
    assert tags["kpigate.custom"] == "x|y"
    assert len(tags["kpigate.reason"]) == MAX_TAG_VALUE
    assert tags["kpigate.reason"].endswith("…")
    assert tags["kpigate.reason"] == truncate(long_reason)
    assert tags["kpigate.updated_at"].endswith("Z")
    assert tags["kpigate.updated_at"][:2] == "20"
    old = client(registered_model).get_model_version(name, "1").tags
    assert old["kpigate.superseded_by"] == f"{name}/2"
    assert old["kpigate.status"] == "superseded"


def test_a_version_promoted_again_loses_its_stale_superseded_tag(registered_model):
    """v2 replaced v1 (v1 tagged superseded_by v2); a later rollout of v1 against v2 is
    promoted: v1 must not keep saying it is superseded, and v2 is now the superseded one."""
    registry = Registry(registered_model.tracking_uri)
    name = registered_model.name
    v1, v2 = registry.resolve(f"models:/{name}/1"), registry.resolve(f"models:/{name}/2")
    registry.mark_superseded(v1, by=v2)
    registry.set_tags(v1, {"kpigate.custom": "kept"})
    store = InMemoryStateStore("again")
    promoted = store.save(RolloutState(
        name="again", model_name=name, candidate_version="1", baseline_version="2",
        candidate_uri=v1.uri, baseline_uri=v2.uri, policy_file="policy.yaml",
        tracking_uri=registered_model.tracking_uri, port=0,
        stage_index=len(POLICY.stages) - 1, phase=Phase.PROMOTED, weights=Weights(100.0),
        effects_pending=True))
    done = Effects(store, POLICY, InMemoryTraffic(), registry=registry).apply(
        promoted, None, "promote")
    assert not done.effects_pending
    again = client(registered_model).get_model_version(name, "1").tags
    assert "kpigate.superseded_by" not in again
    assert again["kpigate.status"] == "promoted"
    assert again["kpigate.custom"] == "kept"
    assert client(registered_model).get_model_version(name, "2").tags[
        "kpigate.superseded_by"] == f"{name}/1"
    registry.clear_superseded(v1)  # nothing to clear: no error, nothing else touched
    assert client(registered_model).get_model_version(name, "1").tags == again


def test_move_alias_returns_the_previous_version(registered_model):
    registry = Registry(registered_model.tracking_uri)
    name = registered_model.name
    assert registry.move_alias(name, "champion", "2") == "1"
    assert str(client(registered_model).get_model_version_by_alias(name, "champion").version) == "2"
    assert registry.resolve(f"models:/{name}@champion").version == "2"
    assert registry.move_alias(name, "new-alias", "1") is None
    with pytest.raises(UsageError, match="no registered model named"):
        registry.move_alias("nope-y", "champion", "1")


# --- the rollout run ----------------------------------------------------------------------


def test_rollout_run_metrics_and_artifacts(registered_model, policy_file, tmp_path):
    registry = Registry(registered_model.tracking_uri)
    name = registered_model.name
    v1 = registry.resolve(f"models:/{name}/1")
    v2 = registry.resolve(f"models:/{name}/2")
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# report\n")
    (report / "traffic.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    run_id = rollout(registry, v2, v1, policy_file,
                     [(0.88, 0.86), (0.88, 0.87), (0.88, 0.89)], "promoted", report)
    c = client(registered_model)
    run = c.get_run(run_id)
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.name == ROLLOUT_EXPERIMENT
    assert run.info.run_name == f"fraud-prod {name} v2 vs v1"
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["kpigate.deployment"] == "fraud-prod"
    assert tags["kpigate.model"] == name
    assert tags["kpigate.candidate_version"] == "2"
    assert tags["kpigate.baseline_version"] == "1"
    assert tags["kpigate.outcome"] == "promoted"
    assert run.data.params["stages"] == "5,25,100"

    history = c.get_metric_history(run_id, "candidate.recall")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (1, 0.86), (2, 0.87), (3, 0.89)]
    assert [m.timestamp for m in sorted(history, key=lambda m: m.step)] == [
        1_790_000_001_000, 1_790_000_002_000, 1_790_000_003_000]
    delta = sorted(c.get_metric_history(run_id, "delta.recall"), key=lambda m: m.step)
    assert [m.value for m in delta] == pytest.approx([-0.02, -0.01, 0.01])
    codes = sorted(c.get_metric_history(run_id, "decision.code"), key=lambda m: m.step)
    assert [m.value for m in codes] == [0, 0, 1]
    traffic = sorted(c.get_metric_history(run_id, "traffic.candidate_percent"),
                     key=lambda m: m.step)
    assert [m.value for m in traffic] == [5, 10, 15]
    metrics = run.data.metrics
    assert metrics["stage_index"] == 0
    for key in ("baseline.recall", "lower.recall", "upper.recall", "baseline.precision"):
        assert key in metrics
    # NaN evidence (precision has no estimate yet) is skipped, not logged
    for key in ("candidate.precision", "delta.precision", "lower.precision"):
        assert key not in metrics

    top = {a.path for a in c.list_artifacts(run_id)}
    assert top == {"policy", "decisions", "report"}
    assert [a.path for a in c.list_artifacts(run_id, "policy")] == ["policy/policy.yaml"]
    assert [a.path for a in c.list_artifacts(run_id, "decisions")] == [
        "decisions/00001.json", "decisions/00002.json", "decisions/00003.json"]
    assert {a.path for a in c.list_artifacts(run_id, "report")} == {
        "report/report.md", "report/traffic.png"}
    local = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                artifact_path="decisions/00003.json",
                                                dst_path=str(tmp_path / "dl"),
                                                tracking_uri=registered_model.tracking_uri)
    logged = Decision.from_json(Path(local).read_text())
    assert logged.action is Action.PROMOTE
    assert logged.evidence_for("recall").candidate_value == 0.89
    assert json.loads(Path(local).read_text())["evidence"][1]["delta"] is None


@pytest.mark.parametrize("tracking_uri", ["local"], indirect=True)
def test_aborted_rollout_run_is_killed(tracking_uri, registered_model, policy_file):
    registry = Registry(tracking_uri)
    v1 = registry.resolve(f"models:/{registered_model.name}/1")
    v2 = registry.resolve(f"models:/{registered_model.name}/2")
    run_id = rollout(registry, v2, v1, policy_file, [(0.88, 0.87)], "aborted")
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["kpigate.outcome"] == "aborted"


def test_registry_uses_mlflow_tracking_uri_by_default(local_tracking_uri):
    registry = Registry()
    assert registry.tracking_uri == local_tracking_uri
    with pytest.raises(UsageError, match="no registered model named 'absent'"):
        registry.resolve("models:/absent/1")


# --- MLflow unreachable -------------------------------------------------------------------


def test_server_stopped_gives_a_one_line_kpigate_error(mlflow_server_factory, monkeypatch):
    server = mlflow_server_factory()
    registry = Registry(server.uri)
    with pytest.raises(UsageError):  # reachable: a clean "not found"
        registry.resolve("models:/absent/1")
    server.stop()
    # fail fast instead of MLflow's default retries with backoff (minutes)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    for call in (lambda: registry.resolve("models:/absent/1"),
                 lambda: registry.default_baseline("absent"),
                 lambda: registry.set_tags(ModelRef("a", "1", "models:/a/1", None, "", ""),
                                           {"kpigate.status": "x"})):
        with pytest.raises(KpigateError) as err:
            call()
        assert not isinstance(err.value, UsageError)
        text = str(err.value)
        assert text.startswith(f"MLflow at {server.uri}: could not ")
        assert "cannot connect" in text
        assert "\n" not in text


def test_unusable_local_store_gives_a_kpigate_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    uri = f"sqlite:///{blocker}/mlflow.db"
    with pytest.raises(KpigateError) as err:
        Registry(uri).resolve("models:/absent/1")
    assert str(err.value).startswith(f"MLflow at {uri}: could not ")
    assert "\n" not in str(err.value)


def test_truncate():
    assert truncate("abc", 5) == "abc"
    assert truncate("abcdef", 5) == "abcd…"
    assert len(truncate("x" * 10_000)) == MAX_TAG_VALUE
    assert not math.isnan(len(truncate("")))


def test_policy_fixture_is_valid():
    assert isinstance(POLICY, Policy)
