"""The bake on Seldon Core: manifests and patches into and out of the bake, valid against
Seldon's CRD schemas (tests/data/seldon-crds) and its admission rules, and the traffic
backend driving the real kubernetes client against the fake API server.

While baking the candidate is the one live predictor and the baseline the shadow (v1);
in v2 the Experiment routes to the candidate Model, mirrors to the baseline Model and
names the candidate its default.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from crd_schema import assert_valid
from fake_kube import fake_kube  # noqa: F401  (fixture)

from mlflow_kpigate.backends.seldon import (
    BASELINE,
    CANDIDATE,
    ManifestError,
    apply_json_patch,
    check_experiment_rules,
    check_webhook_rules,
    managed_spec_matches,
    remove_predictor_patch,
    role_traffic,
    seldon_deployment,
    v2_experiment,
    v2_experiment_patch,
    weights_patch,
)
from mlflow_kpigate.backends.seldon.cluster import Cluster
from mlflow_kpigate.backends.seldon.kinds import SELDON_DEPLOYMENT, SELDON_EXPERIMENT, SELDON_MODEL
from mlflow_kpigate.backends.seldon.manifests import ModelRef, RoleTraffic, v2_models
from mlflow_kpigate.backends.seldon.target import SeldonTarget
from mlflow_kpigate.backends.seldon.traffic import SeldonTraffic
from mlflow_kpigate.core.state import Phase, RolloutState, Weights

NS = "models"
BASE = ModelRef("1", "s3://models/fraud/1/artifacts", "fraud")
CAND = ModelRef("2", "s3://models/fraud/2/artifacts", "fraud")
TARGET = SeldonTarget(NS, "fraud", env_secret="s3-credentials",
                      collector_url=None, replicas=2)
SHADOW = Weights(0.0, shadow=True)
BAKING = Weights.baking()
PROMOTED = Weights(100.0)
DETACHED = Weights.baseline_only()
INTO_BAKE = [SHADOW, Weights(5.0), Weights(25.0), Weights(50.0), BAKING]


def _defaulted(doc: dict[str, Any]) -> dict[str, Any]:
    """What Seldon's defaulting webhook leaves of a predictor: no traffic 0, no shadow false."""
    out = copy.deepcopy(doc)
    for pred in out["spec"].get("predictors", []):
        if pred.get("traffic") == 0:
            del pred["traffic"]
        if pred.get("shadow") is False:
            del pred["shadow"]
    return out


def _apply(doc: dict[str, Any], ops: list[dict[str, Any]], defaulted: bool) -> dict[str, Any]:
    result = apply_json_patch(doc, ops)
    if defaulted and result["kind"] == "SeldonDeployment":
        result = _defaulted(result)
    result["metadata"]["resourceVersion"] = str(int(doc["metadata"]["resourceVersion"]) + 1)
    return result


def _check_sdep(doc: dict[str, Any]) -> None:
    assert_valid(doc)
    check_webhook_rules(doc)
    assert managed_spec_matches(doc)


def _check_experiment(doc: dict[str, Any]) -> None:
    assert_valid(doc)
    check_experiment_rules(doc)


def _routing(doc: dict[str, Any]) -> dict[str, tuple[int, bool]]:
    return {p["name"]: (p.get("traffic", 0), p.get("shadow", False))
            for p in doc["spec"]["predictors"]}


def test_bake_weights_make_the_baseline_the_shadow():
    assert role_traffic(BAKING) == {BASELINE: RoleTraffic(100, shadow=True),
                                    CANDIDATE: RoleTraffic(100)}
    sdep = seldon_deployment(TARGET, BASE, CAND, BAKING)
    _check_sdep(sdep)
    assert _routing(sdep) == {BASELINE: (100, True), CANDIDATE: (100, False)}


@pytest.mark.parametrize("defaulted", [False, True], ids=["as-sent", "defaulted"])
def test_v1_into_the_bake_then_promoted_or_rolled_back_after_promotion(defaulted):
    live = seldon_deployment(TARGET, BASE, CAND, INTO_BAKE[0])
    live["metadata"]["resourceVersion"] = "1"
    live = _defaulted(live) if defaulted else live
    for weights in INTO_BAKE[1:]:
        live = _apply(live, weights_patch(live, weights), defaulted)
        _check_sdep(live)
    assert _routing(live) == {BASELINE: (100, True), CANDIDATE: (100, False)}
    baked = live
    # the bake ends: the baseline's shadow stops, then its predictor goes
    promoted = _apply(baked, weights_patch(baked, PROMOTED), defaulted)
    _check_sdep(promoted)
    assert _routing(promoted)[CANDIDATE] == (100, False)
    assert _routing(promoted)[BASELINE][0] == 0
    promoted = _apply(promoted, remove_predictor_patch(promoted, BASELINE), defaulted)
    _check_sdep(promoted)
    assert _routing(promoted) == {CANDIDATE: (100, False)}
    # a regression while baking: everything back to the previous version, candidate removed
    back = _apply(baked, weights_patch(baked, DETACHED), defaulted)
    _check_sdep(back)
    assert _routing(back) == {BASELINE: (100, False), CANDIDATE: (0, False)}
    back = _apply(back, remove_predictor_patch(back, CANDIDATE), defaulted)
    _check_sdep(back)
    assert _routing(back) == {BASELINE: (100, False)}
    assert back["spec"]["predictors"][0]["graph"]["modelUri"] == BASE.storage_uri
    # repeating the bake's patch changes nothing (the controller repeats it after a crash)
    assert {op["op"] for op in weights_patch(baked, BAKING)} == {"test"}


def test_v1_the_candidate_cannot_go_while_the_baseline_only_shadows():
    baked = seldon_deployment(TARGET, BASE, CAND, BAKING)
    baked["metadata"]["resourceVersion"] = "1"
    with pytest.raises(ManifestError, match="shadow cannot be the only predictor"):
        remove_predictor_patch(baked, CANDIDATE)


def test_v2_experiment_while_baking_mirrors_to_the_baseline():
    exp = v2_experiment(TARGET, BAKING)
    _check_experiment(exp)
    assert exp["spec"]["candidates"] == [{"name": "fraud-candidate", "weight": 100}]
    assert exp["spec"]["mirror"] == {"name": "fraud-baseline", "percent": 100}
    assert exp["spec"]["default"] == "fraud-candidate"


def test_v2_into_the_bake_and_out_of_it():
    live = v2_experiment(TARGET, INTO_BAKE[0])
    live["metadata"]["resourceVersion"] = "1"
    for weights in INTO_BAKE[1:]:
        live = _apply(live, v2_experiment_patch(live, weights), False)
        _check_experiment(live)
        expected = v2_experiment(TARGET, weights)["spec"]
        assert live["spec"] == expected
    baked = live
    for after, spec in ((PROMOTED, {"default": "fraud-baseline", "candidates": [
            {"name": "fraud-candidate", "weight": 100}, {"name": "fraud-baseline", "weight": 0}]}),
                        (DETACHED, {"default": "fraud-baseline", "candidates": [
                            {"name": "fraud-baseline", "weight": 100}]})):
        out = _apply(baked, v2_experiment_patch(baked, after), False)
        _check_experiment(out)
        assert out["spec"] == spec
        assert {op["op"] for op in v2_experiment_patch(out, after)} == {"test"}


def _state(weights: Weights, phase: Phase) -> RolloutState:
    return RolloutState(name="fraud", model_name="fraud", candidate_version="2",
                        baseline_version="1", candidate_uri="models:/fraud/2",
                        baseline_uri="models:/fraud/1", policy_file="-", tracking_uri="-",
                        port=0, weights=weights, phase=phase, stage_index=4)


@pytest.mark.parametrize("ending", ["promoted", "rolled_back"])
def test_seldon_traffic_bakes_a_seldon_deployment(fake_kube, ending):  # noqa: F811
    cluster = Cluster.connect(NS, fake_kube.kubeconfig)
    cluster.objects(SELDON_DEPLOYMENT).create(seldon_deployment(TARGET, BASE, CAND,
                                                                Weights(50.0)))
    traffic = SeldonTraffic(cluster, TARGET, BASE, CAND)
    baking = _state(BAKING, Phase.BAKING)
    assert not traffic.readiness(baking).ready
    traffic.apply(baking)
    sdep = fake_kube.get_object("seldondeployments", NS, "fraud")
    assert _routing(sdep) == {BASELINE: (100, True), CANDIDATE: (100, False)}
    fake_kube.set_seldon_state(NS, "fraud", "Available")
    assert traffic.readiness(baking).ready
    traffic.apply(baking)  # repeated after a crash: the baseline stays as the shadow
    assert BASELINE in _routing(fake_kube.get_object("seldondeployments", NS, "fraud"))
    if ending == "promoted":
        done = _state(PROMOTED, Phase.PROMOTED)
        traffic.apply(done)
        assert _routing(fake_kube.get_object("seldondeployments", NS, "fraud")) == {
            CANDIDATE: (100, False)}
    else:
        done = _state(DETACHED, Phase.ROLLED_BACK)
        traffic.apply(done)
        assert _routing(fake_kube.get_object("seldondeployments", NS, "fraud")) == {
            BASELINE: (100, False)}
    fake_kube.set_seldon_state(NS, "fraud", "Available")
    assert traffic.readiness(done).ready


def test_seldon_traffic_bakes_a_v2_experiment(fake_kube):  # noqa: F811
    cluster = Cluster.connect(NS, fake_kube.kubeconfig)
    target = SeldonTarget(namespace=NS, name="fraud", seldon_version=2)
    for model in v2_models(target, BASE, CAND):
        cluster.objects(SELDON_MODEL).create(model)
    cluster.objects(SELDON_EXPERIMENT).create(v2_experiment(target, Weights(50.0)))
    traffic = SeldonTraffic(cluster, target, BASE, CAND)
    baking = _state(BAKING, Phase.BAKING)
    traffic.apply(baking)
    exp = fake_kube.get_object("experiments", NS, "fraud")
    assert exp["spec"]["default"] == "fraud-candidate"
    assert exp["spec"]["mirror"] == {"name": "fraud-baseline", "percent": 100}
    for plural, name in (("experiments", "fraud"), ("models", "fraud-baseline"),
                         ("models", "fraud-candidate")):
        fake_kube.set_ready_v2(plural, NS, name, True)
    assert traffic.readiness(baking).ready
    rolled = _state(DETACHED, Phase.ROLLED_BACK)
    assert not traffic.readiness(rolled).ready  # the Experiment still routes the bake
    traffic.apply(rolled)
    exp = fake_kube.get_object("experiments", NS, "fraud")
    assert exp["spec"] == {"default": "fraud-baseline",
                           "candidates": [{"name": "fraud-baseline", "weight": 100}]}
    assert fake_kube.get_object("models", NS, "fraud-candidate") is None
