"""The outcome of a rollout where MLflow users look, through the session's real ``mlflow
server``: the rollout experiment's kind, the version description section (user text kept,
one section however often the effects run), the run link in it, the summary tag, the
decision-timeline image on the run and the final KPIs on the candidate's LoggedModel.

Rollouts here are driven through the controller's own ``Effects`` with a real
``RolloutStore`` and the real MLflow ``Registry`` (decisions made by hand, no router or
gate): every evaluation's effects and the ``finish_rollout`` end are the production code.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.decision import Action, Decision, Evidence, Verdict
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.events import Created, Evaluated, OutcomePublished
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.deploy.finish import finish_rollout
from mlflow_kpigate.deploy.outcome import TIMELINE_KEY, publish_outcome
from mlflow_kpigate.policy import load_policy
from mlflow_kpigate.registry import ROLLOUT_EXPERIMENT, SUMMARY_TAG, Registry
from mlflow_kpigate.registry.descriptions import BEGIN, END, section_of, with_section
from mlflow_kpigate.registry.runs import EXPERIMENT_KIND_TAG, ML_EXPERIMENT_KIND
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.effects import Effects
from mlflow_kpigate.rollout.memory import InMemoryTraffic

POLICY = {"name": "ui-test", "stages": "5,25,100",
          "kpis": [{"name": "recall", "kind": "proportion", "metric": "recall",
                    "role": "critical", "margin": 0.05},
                   {"name": "precision", "kind": "proportion", "metric": "precision",
                    "margin": 0.05}]}
PROMOTED = [(Action.HOLD, 0.90), (Action.PROMOTE, 0.91), (Action.PROMOTE, 0.92)]
ROLLED_BACK = [(Action.PROMOTE, 0.90), (Action.ROLLBACK, 0.70)]


@pytest.fixture(scope="module")
def model(mlflow_server, tmp_path_factory) -> str:
    """A registered model on the session server: v1 (champion), v2, both LoggedModels."""
    import mlflow.sklearn
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    name = f"ui-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    experiment = client.create_experiment(f"train-{name}")
    x = np.random.default_rng(0).normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int)
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        for _ in (1, 2):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model",
                                         registered_model_name=name,
                                         pip_requirements=["scikit-learn"])
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    client.set_registered_model_alias(name, "champion", "1")
    return name


def decision(action: Action, stage: int, recall: float) -> Decision:
    verdict = Verdict.WORSE if action is Action.ROLLBACK else Verdict.NON_INFERIOR
    delta = recall - 0.9
    ev = Evidence(kpi="recall", kind="proportion", role="critical", direction="higher",
                  verdict=verdict, reason=f"recall is {verdict.value}", baseline_value=0.9,
                  candidate_value=recall, delta=delta, lower=delta - 0.02, upper=delta + 0.02,
                  rollback_threshold=-0.05, promote_threshold=-0.05, margin="0.05",
                  samples=1000)
    other = Evidence(kpi="precision", kind="proportion", role="guardrail", direction="higher",
                     verdict=Verdict.INCONCLUSIVE, reason="precision is inconclusive",
                     baseline_value=0.8, candidate_value=0.81, delta=0.01, lower=-0.06,
                     upper=0.08, rollback_threshold=-0.05, promote_threshold=-0.05,
                     margin="0.05", samples=1000)
    return Decision(action, f"{action.value}: recall {recall}", stage, f"{(5, 25, 100)[stage]}%",
                    evidence=(ev, other))


def rollout(root: Path, uri: str, model: str, plan: list[tuple[Action, float]]
            ) -> tuple[Path, RolloutStore, RolloutState, Effects]:
    """A rollout of v2 against v1 whose evaluations decide ``plan``, through ``Effects``."""
    directory = root / f"d-{uuid.uuid4().hex[:6]}"
    directory.mkdir(parents=True)
    policy_file = directory / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(POLICY))
    policy = load_policy(policy_file)
    registry = Registry(uri)
    candidate, baseline = (registry.resolve(f"models:/{model}/{v}") for v in ("2", "1"))
    run_id = registry.start_rollout_run(deployment=directory.name, candidate=candidate,
                                        baseline=baseline, policy_file=policy_file,
                                        params={"stages": "5,25,100"})
    store = RolloutStore(directory)
    now = time.time() - 3600
    state = RolloutState(name=directory.name, model_name=model, candidate_version="2",
                         baseline_version="1", candidate_uri=candidate.uri,
                         baseline_uri=baseline.uri, policy_file=str(policy_file),
                         tracking_uri=uri, port=0, rollout_run_id=run_id)
    state = store.save(transitions.initial(state, policy, now),
                       Created("5%", "candidate 5%", 5.0))
    effects = Effects(store, policy, InMemoryTraffic(), registry=registry,
                      on_terminal=lambda s: finish_rollout(directory, s, registry,
                                                           store=store, policy=policy))
    for number, (action, recall) in enumerate(plan, start=1):
        now += 600
        made = decision(action, state.stage_index, recall)
        new, kind = transitions.after_decision(state, policy, made, now)
        evaluation = Evaluation(number, now, state.stage_index, 600.0, made,
                                policy_digest="sha256:test")  # kept with its inputs
        saved = store.save(new.evolve(effects_pending=True), Evaluated.after(
            evaluation, policy.stages[state.stage_index].describe(), new))
        state = effects.apply(saved, made, kind, evaluation)
        assert not state.effects_pending, store.events()[-1]
    return directory, store, state, effects


def test_with_section_keeps_user_text_and_replaces_in_place():
    once = with_section("mine before", "first")
    assert once == f"mine before\n\n{BEGIN}\nfirst\n{END}"
    twice = with_section(once + "\n\nmine after", "second")
    assert twice == f"mine before\n\n{BEGIN}\nsecond\n{END}\n\nmine after"
    assert with_section(twice, "second") == twice
    assert with_section(None, "x") == f"{BEGIN}\nx\n{END}"
    assert section_of(twice) == "second"
    assert section_of("none") is None


def test_rollout_experiment_is_a_machine_learning_experiment(mlflow_server, model, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    rollout(tmp_path, mlflow_server.uri, model, ROLLED_BACK[:1])
    experiment = client.get_experiment_by_name(ROLLOUT_EXPERIMENT)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == ML_EXPERIMENT_KIND
    # An experiment an older kpigate made (no kind) gets it; a user's own choice stands.
    client.delete_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG)
    registry = Registry(mlflow_server.uri)
    assert registry._rollout_experiment_id() == experiment.experiment_id
    assert client.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] \
        == ML_EXPERIMENT_KIND
    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "finetuning")
    try:
        registry._rollout_experiment_id()
        assert client.get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] \
            == "finetuning"
    finally:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                  ML_EXPERIMENT_KIND)


def test_outcome_in_descriptions_tags_image_and_logged_model(mlflow_server, model, tmp_path):
    uri = mlflow_server.uri
    client = MlflowClient(uri, registry_uri=uri)
    client.update_model_version(model, "2", description="Trained on March data.")

    _, _, first, _ = rollout(tmp_path, uri, model, ROLLED_BACK)
    assert first.phase is Phase.ROLLED_BACK
    text = client.get_model_version(model, "2").description
    assert text.startswith("Trained on March data.\n\n" + BEGIN)
    assert "rolled back" in section_of(text)
    client.update_model_version(model, "2", description=text + "\n\nKnown issue: none.")

    directory, store, state, effects = rollout(tmp_path, uri, model, PROMOTED)
    assert state.phase is Phase.PROMOTED
    run = client.get_run(state.rollout_run_id)
    text = client.get_model_version(model, "2").description
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
    assert text.startswith("Trained on March data.\n\n" + BEGIN)
    assert text.endswith(END + "\n\nKnown issue: none.")
    section = section_of(text)
    assert "#### kpigate rollout: promoted" in section
    assert "rolled back" not in section
    link = f"(#/experiments/{run.info.experiment_id}/runs/{state.rollout_run_id}" \
           "?workflowType=machine_learning)"
    assert f"[rollout run]{link}" in section
    assert f"/runs/{state.rollout_run_id}/artifacts/report/report.md?" in section
    assert "| recall | critical | 0.9 | 0.92 |" in section
    assert "| 5% |" in section
    assert "| 25% |" in section
    replaced = section_of(client.get_model_version(model, "1").description)
    assert replaced is not None
    assert "replaced by v2" in replaced
    tags = client.get_model_version(model, "2").tags
    assert tags[SUMMARY_TAG].startswith("promoted · 100% · ")
    assert tags[SUMMARY_TAG].endswith(tags["kpigate.updated_at"])

    # The timeline: in the report and as the run's image, once per key and step.
    assert (directory / "report" / "timeline.png").stat().st_size > 10_000
    images = [f.path for f in client.list_artifacts(state.rollout_run_id, "images")]
    assert [p for p in images if p.endswith(".png")]
    assert all(
        Path(p).name.startswith(f"{TIMELINE_KEY}+step+3+") for p in images)
    assert "report/timeline.png" in [f.path for f in client.list_artifacts(
        state.rollout_run_id, "report")]

    # The final KPIs on the candidate's LoggedModel, linked to the run; the run's own
    # history gets no extra point.
    model_id = Registry(uri).logged_model_id(Registry(uri).resolve(f"models:/{model}/2"))
    assert model_id
    assert model_id.startswith("m-")
    logged = client.get_logged_model(model_id)
    values = {m.key: (m.value, m.run_id) for m in logged.metrics}
    assert values["candidate.recall"] == (0.92, state.rollout_run_id)
    assert values["delta.recall"][0] == pytest.approx(0.02)
    assert logged.tags["kpigate.outcome"] == "promoted"
    assert logged.tags["kpigate.rollout_run_id"] == state.rollout_run_id
    history = client.get_metric_history(state.rollout_run_id, "candidate.recall")
    assert [m.step for m in history] == [1, 2, 3]

    # Effects applied again (a killed controller resumed): nothing is duplicated.
    before = client.get_model_version(model, "2").description
    publish_outcome(Registry(uri), state, directory / "report", store=store,
                    policy=effects.policy)
    assert client.get_model_version(model, "2").description == before
    assert len(client.list_artifacts(state.rollout_run_id, "images")) == len(images)
    assert len(client.get_logged_model(model_id).metrics) == len(logged.metrics)
    assert len(client.get_metric_history(state.rollout_run_id, "candidate.recall")) == 3
    published = [r.event for r in store.events() if isinstance(r.event, OutcomePublished)]
    assert published[-1].described == f"{model}/2,{model}/1"
    assert published[-1].model_metrics.startswith(f"LoggedModel {model_id} of {model}/2: 4 ")


def test_a_version_without_logged_model_is_recorded_not_failed(mlflow_server, model):
    client = MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    source = client.get_model_version(model, "1")
    bare = client.create_model_version(model, f"runs:/{source.run_id}/model",
                                       run_id=source.run_id)
    registry = Registry(mlflow_server.uri)
    ref = registry.resolve(f"models:/{model}/{bare.version}")
    said = registry.log_model_kpis(ref, source.run_id, {"candidate.recall": 0.9}, step=1,
                                   timestamp_ms=1, tags={})
    assert said == f"{model}/{bare.version} has no LoggedModel (registered without one); " \
                   "no model metrics"
