"""Seldon manifests, guarded JSON patches, admission rules and ``kpigate render``.

Every manifest and every patch result is checked twice: against Seldon Core's real CRD
schemas (``tests/crd_schema.py``, unknown fields forbidden where Kubernetes would prune
them) and against Seldon's admission rules (``webhook.py``). Patches are applied with
``apply_json_patch`` to an object as the API server would store it (a resourceVersion set,
and — in the "defaulted" variant — zero values dropped the way Seldon's defaulting webhook
drops them).
"""

from __future__ import annotations

import copy
import filecmp
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from crd_schema import CRD_FILES, REPO_COPY, SHARED_COPY, assert_valid, schema_errors

from mlflow_kpigate.backends.seldon import (
    BASELINE,
    CANDIDATE,
    MANAGED_SPEC_ANNOTATION,
    ManifestError,
    ModelRef,
    PatchConflict,
    SeldonTarget,
    apply_json_patch,
    check_experiment_rules,
    check_webhook_rules,
    managed_spec_matches,
    parse_target_uri,
    predictor,
    remove_predictor_patch,
    role_traffic,
    seldon_deployment,
    v2_experiment,
    v2_experiment_patch,
    v2_models,
    weights_patch,
)
from mlflow_kpigate.backends.seldon.manifests import RoleTraffic, check_model_uri_scheme
from mlflow_kpigate.cli.render import render_command
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.deploy.config import parse_config
from mlflow_kpigate.deploy.seldon_rollout import seldon_target

BASE = ModelRef("1", "s3://models/fraud/1/artifacts", "fraud")
CAND = ModelRef("2", "s3://models/fraud/2/artifacts", "fraud")
MINIMAL = SeldonTarget("models", "fraud")
FULL = SeldonTarget("models", "fraud", env_secret="s3-credentials",
                    collector_url="http://kpigate-collector.models.svc:8080",
                    gateway_url="https://gateway.example.com", replicas=3,
                    service_account="model-reader")
TARGETS = pytest.mark.parametrize("target", [MINIMAL, FULL], ids=["minimal", "full"])

SHADOW = Weights(0.0, shadow=True)
PROMOTED = Weights(100.0)
DETACHED = Weights.baseline_only()
SEQUENCES = {
    "shadow-5-25-50-100": [SHADOW, Weights(5.0), Weights(25.0), Weights(50.0), PROMOTED],
    "5-25-50-100": [Weights(5.0), Weights(25.0), Weights(50.0), PROMOTED],
    "shadow-50-100": [SHADOW, Weights(50.0), PROMOTED],
    "shadow-1-99-100": [SHADOW, Weights(1.0), Weights(99.0), PROMOTED],
}


# --------------------------------------------------------------------------------------
# Helpers: the cluster's view of an object, and the two checks every document passes
# --------------------------------------------------------------------------------------


def _drop_zero_values(value: Any) -> Any:
    """What Seldon's defaulting webhook leaves of a predictor: no traffic 0, no shadow false."""
    doc = copy.deepcopy(value)
    for pred in doc["spec"]["predictors"]:
        if pred.get("traffic") == 0:
            del pred["traffic"]
        if pred.get("shadow") is False:
            del pred["shadow"]
    return doc


def stored(manifest: dict[str, Any], version: int = 1, *, defaulted: bool = False
           ) -> dict[str, Any]:
    """``manifest`` as read back from the API server."""
    doc = _drop_zero_values(manifest) if defaulted else copy.deepcopy(manifest)
    doc["metadata"]["resourceVersion"] = str(version)
    return doc


def apply(doc: dict[str, Any], ops: list[dict[str, Any]], *, defaulted: bool = False
          ) -> dict[str, Any]:
    """Apply ``ops`` as the API server would: atomically, then a new resourceVersion."""
    result = apply_json_patch(doc, ops)
    version = int(doc["metadata"]["resourceVersion"]) + (1 if ops else 0)
    if defaulted and result["kind"] == "SeldonDeployment":
        result = _drop_zero_values(result)
    result["metadata"]["resourceVersion"] = str(version)
    return result


def check_sdep(doc: dict[str, Any]) -> None:
    assert_valid(doc)
    check_webhook_rules(doc)
    assert managed_spec_matches(doc), "the managed-spec annotation does not match the spec"


def check_experiment(doc: dict[str, Any]) -> None:
    assert_valid(doc)
    check_experiment_rules(doc)


def routing(doc: dict[str, Any]) -> dict[str, tuple[int, bool]]:
    """{predictor name: (traffic, shadow)} with Seldon's defaults for absent fields."""
    return {p["name"]: (p.get("traffic", 0), p.get("shadow", False))
            for p in doc["spec"]["predictors"]}


def expected_routing(weights: Weights) -> dict[str, tuple[int, bool]]:
    if not weights.candidate_attached:
        return {BASELINE: (100, False), CANDIDATE: (0, False)}
    if weights.shadow:
        return {BASELINE: (100, False), CANDIDATE: (100, True)}
    p = int(weights.candidate_percent)
    return {BASELINE: (100 - p, False), CANDIDATE: (p, False)}


def v2_routing_of(doc: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any] | None]:
    return ({c["name"]: c["weight"] for c in doc["spec"]["candidates"]},
            doc["spec"].get("mirror"))


# --------------------------------------------------------------------------------------
# The CRD copies and the schema helper itself
# --------------------------------------------------------------------------------------


def test_crd_copies_in_the_repo_match_the_shared_originals():
    if not SHARED_COPY.is_dir():
        pytest.skip(f"{SHARED_COPY} not present (a fresh clone): nothing to compare")
    for name in CRD_FILES.values():
        assert filecmp.cmp(REPO_COPY / name, SHARED_COPY / name, shallow=False), name
    assert (REPO_COPY / "README.md").is_file()


def test_crd_directory_can_be_overridden(monkeypatch, tmp_path):
    import crd_schema

    monkeypatch.setenv(crd_schema.ENV_OVERRIDE, str(tmp_path))
    assert crd_schema.crd_dir() == tmp_path
    with pytest.raises(FileNotFoundError):
        crd_schema.crd_schema("Model")


# --------------------------------------------------------------------------------------
# v1 SeldonDeployment manifests
# --------------------------------------------------------------------------------------


@TARGETS
@pytest.mark.parametrize("weights", [SHADOW, Weights(5.0), Weights(25.0), Weights(50.0),
                                     PROMOTED], ids=["shadow", "5", "25", "50", "100"])
def test_manifest_for_every_stage_is_valid_and_routes_as_the_contract_says(target, weights):
    sdep = seldon_deployment(target, BASE, CAND, weights)
    check_sdep(sdep)
    assert routing(sdep) == expected_routing(weights)
    assert [p["name"] for p in sdep["spec"]["predictors"]] == [BASELINE, CANDIDATE]


@TARGETS
def test_manifest_carries_names_labels_and_model_settings(target):
    sdep = seldon_deployment(target, BASE, CAND, Weights(25.0))
    meta = sdep["metadata"]
    assert (meta["name"], meta["namespace"]) == ("fraud", "models")
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "kpigate",
                              "kpigate.io/rollout": "fraud"}
    assert len(meta["annotations"][MANAGED_SPEC_ANNOTATION]) == 16
    for pred, model in zip(sdep["spec"]["predictors"], (BASE, CAND), strict=True):
        role = pred["name"]
        assert pred["labels"]["kpigate.io/role"] == role
        assert pred["labels"]["app.kubernetes.io/managed-by"] == "kpigate"
        assert pred["labels"]["kpigate.io/rollout"] == "fraud"
        assert pred["labels"]["kpigate.io/model-version"] == model.version
        assert pred["replicas"] == target.replicas
        graph = pred["graph"]
        assert graph["implementation"] == "MLFLOW_SERVER"
        assert graph["modelUri"] == model.storage_uri
        if target is FULL:
            assert graph["envSecretRefName"] == "s3-credentials"
            assert graph["serviceAccountName"] == "model-reader"
            assert graph["logger"] == {
                "mode": "all", "url": "http://kpigate-collector.models.svc:8080/cloudevents"}
        else:
            assert not {"envSecretRefName", "serviceAccountName", "logger"} & graph.keys()


def test_manifest_without_candidate_or_detached_has_only_the_baseline():
    for sdep in (seldon_deployment(FULL, BASE, None, Weights(25.0)),
                 seldon_deployment(FULL, BASE, CAND, DETACHED)):
        check_sdep(sdep)
        assert routing(sdep) == {BASELINE: (100, False)}


@pytest.mark.parametrize("percent", [2.5, 0.1, 99.9])
def test_non_integer_stage_percent_is_a_usage_error(percent):
    with pytest.raises(UsageError, match=rf"stages: {percent:g}% is not a whole percent"):
        seldon_deployment(MINIMAL, BASE, CAND, Weights(percent))
    with pytest.raises(UsageError, match=rf"{percent:g}%"):
        v2_experiment(MINIMAL, Weights(percent))


def test_role_traffic_table():
    assert role_traffic(SHADOW) == {BASELINE: RoleTraffic(100), CANDIDATE: RoleTraffic(100, True)}
    assert role_traffic(Weights(5.0)) == {BASELINE: RoleTraffic(95), CANDIDATE: RoleTraffic(5)}
    assert role_traffic(PROMOTED) == {BASELINE: RoleTraffic(0), CANDIDATE: RoleTraffic(100)}
    assert role_traffic(DETACHED) == {BASELINE: RoleTraffic(100), CANDIDATE: RoleTraffic(0)}


def test_managed_spec_annotation_detects_a_change_made_outside_kpigate():
    sdep = stored(seldon_deployment(MINIMAL, BASE, CAND, Weights(25.0)))
    assert managed_spec_matches(sdep)
    # Seldon's defaulting drops zero values and adds defaults: not a change of routing
    defaulted = _drop_zero_values(sdep)
    defaulted["spec"]["predictors"][0]["graph"]["endpoint"] = {"type": "REST"}
    assert managed_spec_matches(defaulted)
    edited = copy.deepcopy(sdep)
    edited["spec"]["predictors"][0]["traffic"] = 70
    edited["spec"]["predictors"][1]["traffic"] = 30
    assert not managed_spec_matches(edited)


# --------------------------------------------------------------------------------------
# v1 patches: every stage sequence, promotion, rollback from each stage
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("defaulted", [False, True], ids=["as-sent", "defaulted"])
@pytest.mark.parametrize("sequence", list(SEQUENCES), ids=list(SEQUENCES))
@TARGETS
def test_stage_sequence_promotion_and_rollback_from_each_stage(target, sequence, defaulted):
    stages = SEQUENCES[sequence]
    live = stored(seldon_deployment(target, BASE, CAND, stages[0]), defaulted=defaulted)
    check_sdep(live)
    at_stage = [live]
    for weights in stages[1:]:
        ops = weights_patch(live, weights)
        assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion",
                          "value": live["metadata"]["resourceVersion"]}
        assert ops[1:3] == [
            {"op": "test", "path": "/spec/predictors/0/name", "value": BASELINE},
            {"op": "test", "path": "/spec/predictors/1/name", "value": CANDIDATE}]
        live = apply(live, ops, defaulted=defaulted)
        check_sdep(live)
        assert routing(live) == expected_routing(weights)
        at_stage.append(live)
    # promotion: all traffic is on the candidate; now the baseline goes
    assert routing(live) == {BASELINE: (0, False), CANDIDATE: (100, False)}
    ops = remove_predictor_patch(live, BASELINE)
    promoted = apply(live, ops, defaulted=defaulted)
    check_sdep(promoted)
    assert routing(promoted) == {CANDIDATE: (100, False)}
    assert promoted["spec"]["predictors"][0]["graph"]["modelUri"] == CAND.storage_uri
    assert remove_predictor_patch(promoted, BASELINE) == []
    # rollback from every stage that is evaluated (all but the final 100 %)
    for state in at_stage[:-1]:
        first = apply(state, weights_patch(state, DETACHED), defaulted=defaulted)
        check_sdep(first)
        assert routing(first) == {BASELINE: (100, False), CANDIDATE: (0, False)}
        rolled_back = apply(first, remove_predictor_patch(first, CANDIDATE), defaulted=defaulted)
        check_sdep(rolled_back)
        assert routing(rolled_back) == {BASELINE: (100, False)}
        assert rolled_back["spec"]["predictors"][0]["graph"]["modelUri"] == BASE.storage_uri
        assert weights_patch(rolled_back, DETACHED)[-1]["op"] == "test"  # nothing left to do


def test_patches_use_add_for_fields_seldon_dropped():
    live = stored(seldon_deployment(MINIMAL, BASE, CAND, PROMOTED), defaulted=True)
    assert "traffic" not in live["spec"]["predictors"][0]
    ops = weights_patch(live, Weights(50.0))
    assert {"op": "add", "path": "/spec/predictors/0/traffic", "value": 50} in ops
    assert {"op": "replace", "path": "/spec/predictors/1/traffic", "value": 50} in ops
    check_sdep(apply(live, ops))


def test_repeating_a_patch_for_the_current_weights_changes_nothing():
    live = stored(seldon_deployment(FULL, BASE, CAND, Weights(25.0)))
    ops = weights_patch(live, Weights(25.0))
    assert {op["op"] for op in ops} == {"test"}
    assert apply_json_patch(live, ops) == live


def test_stale_resource_version_fails_the_patch():
    live = stored(seldon_deployment(MINIMAL, BASE, CAND, SHADOW), version=7)
    ops = weights_patch(live, Weights(5.0))
    changed = copy.deepcopy(live)
    changed["metadata"]["resourceVersion"] = "8"  # someone else wrote in between
    with pytest.raises(PatchConflict, match="resourceVersion expected '7', found '8'"):
        apply_json_patch(changed, ops)
    detached = apply(live, weights_patch(live, DETACHED))
    removal = remove_predictor_patch(detached, CANDIDATE)
    newer = copy.deepcopy(detached)
    newer["metadata"]["resourceVersion"] = "9"
    with pytest.raises(PatchConflict, match="expected '8', found '9'"):
        apply_json_patch(newer, removal)


def test_reordered_predictors_fail_the_patch_even_at_the_same_resource_version():
    live = stored(seldon_deployment(MINIMAL, BASE, CAND, Weights(5.0)))
    ops = weights_patch(live, Weights(25.0))
    swapped = copy.deepcopy(live)
    swapped["spec"]["predictors"].reverse()
    with pytest.raises(PatchConflict, match="predictors/0/name expected 'baseline'"):
        apply_json_patch(swapped, ops)
    removal = remove_predictor_patch(apply(live, weights_patch(live, DETACHED)), CANDIDATE)
    with pytest.raises(PatchConflict):
        apply_json_patch(swapped | {"metadata": {**swapped["metadata"],
                                                 "resourceVersion": "2"}}, removal)


def test_a_missing_candidate_predictor_is_added_when_given():
    live = stored(seldon_deployment(FULL, BASE, None, Weights(5.0)))
    with pytest.raises(ManifestError, match="pass candidate_predictor"):
        weights_patch(live, Weights(5.0))
    new = predictor(FULL, CANDIDATE, CAND, RoleTraffic(0))
    for weights in (SHADOW, Weights(5.0)):
        ops = weights_patch(live, weights, candidate_predictor=new)
        assert any(op["op"] == "add" and op["path"] == "/spec/predictors/-" for op in ops)
        result = apply(live, ops)
        check_sdep(result)
        assert routing(result) == expected_routing(weights)
    # nothing to add for a detached candidate: the patch leaves the deployment alone
    assert {op["op"] for op in weights_patch(live, DETACHED)} == {"test"}


def test_removing_a_predictor_that_still_serves_traffic_is_refused():
    live = stored(seldon_deployment(MINIMAL, BASE, CAND, Weights(25.0)))
    with pytest.raises(ManifestError, match="move its traffic to the other predictor first"):
        remove_predictor_patch(live, CANDIDATE)
    with pytest.raises(ManifestError, match="move its traffic"):
        remove_predictor_patch(live, BASELINE)
    with pytest.raises(ValueError, match="role 'shadow'"):
        remove_predictor_patch(live, "shadow")


def test_patches_need_the_object_as_read_from_the_cluster():
    sdep = seldon_deployment(MINIMAL, BASE, CAND, SHADOW)  # never applied: no resourceVersion
    with pytest.raises(ManifestError, match=r"metadata\.resourceVersion missing"):
        weights_patch(sdep, Weights(5.0))
    stranger = stored(sdep)
    stranger["spec"]["predictors"].append({**stranger["spec"]["predictors"][0],
                                          "name": "manual", "traffic": 0})
    with pytest.raises(ManifestError, match=r"unexpected predictor\(s\) \['manual'\]"):
        weights_patch(stranger, Weights(5.0))


# --------------------------------------------------------------------------------------
# The validators really reject bad manifests
# --------------------------------------------------------------------------------------


def _sdep(*predictors: dict[str, Any]) -> dict[str, Any]:
    base = seldon_deployment(MINIMAL, BASE, CAND, Weights(25.0))
    base["spec"]["predictors"] = [copy.deepcopy(p) for p in predictors]
    return base


def _pred(name: str, traffic: Any = None, shadow: bool | None = None) -> dict[str, Any]:
    pred: dict[str, Any] = {"name": name, "graph": {"name": "model", "implementation":
                                                     "MLFLOW_SERVER", "modelUri": "s3://m"}}
    if traffic is not None:
        pred["traffic"] = traffic
    if shadow is not None:
        pred["shadow"] = shadow
    return pred


@pytest.mark.parametrize(("predictors", "message"), [
    ((_pred("a", 60), _pred("b", 30)), r"traffic sums to 90 \(60 \+ 30\); it must sum to 100"),
    ((_pred("a", 100), _pred("b", 100, True), _pred("c", 100, True)),
     r"predictors\[2\]\.shadow: a second shadow predictor"),
    ((_pred("a", 100, True),), r"a shadow cannot be the only predictor"),
    ((_pred("a", 50), _pred("a", 50)), r"predictors\[1\]\.name: 'a' is already the name"),
    ((_pred("Baseline", 100),), r"predictors\[0\]\.name: 'Baseline' is not a Kubernetes name"),
    ((_pred("a", 101), _pred("b", -1)), r"predictors\[0\]\.traffic: 101 is not a whole percent"),
    ((_pred("a", 97.5), _pred("b", 2.5)), r"traffic: 97\.5 is not a whole percent"),
    ((_pred("a", True),), r"traffic: True is not a whole percent"),
    ((_pred("a", 50), _pred("b", 100, True)), r"predictors\[0\]\.traffic: 50 on the only live"),
    ((_pred("a", 40),), r"40 on the only live predictor"),
])
def test_webhook_rules_reject(predictors, message):
    with pytest.raises(ManifestError, match=message) as caught:
        check_webhook_rules(_sdep(*predictors))
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("SeldonDeployment fraud: ")


def test_webhook_rules_check_graph_nodes_and_spec_fields():
    pred = _pred("a", 100)
    pred["graph"].pop("modelUri")
    pred["graph"]["logger"] = {"url": "http://x"}
    sdep = _sdep(pred)
    sdep["spec"]["transport"] = "udp"
    with pytest.raises(ManifestError) as caught:
        check_webhook_rules(sdep)
    text = str(caught.value)
    assert "graph.modelUri: missing" in text
    assert "graph.logger.mode: missing" in text
    assert "spec.transport: 'udp'" in text
    empty = _sdep()
    with pytest.raises(ManifestError, match=r"spec\.predictors: empty"):
        check_webhook_rules(empty)


def test_webhook_rules_accept_what_seldon_accepts():
    check_webhook_rules(_sdep(_pred("a", 100), _pred("b", 100, True)))
    check_webhook_rules(_sdep(_pred("a")))  # a single predictor may leave traffic unset
    check_webhook_rules(_sdep(_pred("a", 0), _pred("b", 100)))


def test_schema_rejects_wrong_types_missing_fields_and_pruned_fields():
    sdep = seldon_deployment(FULL, BASE, CAND, Weights(25.0))
    typo = copy.deepcopy(sdep)
    typo["spec"]["predictors"][1]["trafic"] = 25
    # Kubernetes would silently prune the typo (no x-kubernetes-preserve-unknown-fields):
    # the raw schema accepts it, the strict view used by the tests reports it
    assert schema_errors(typo, strict=False) == []
    assert schema_errors(typo) == [
        "spec.predictors.1: Additional properties are not allowed ('trafic' was unexpected)"]
    text = copy.deepcopy(sdep)
    text["spec"]["predictors"][0]["traffic"] = "75"
    assert schema_errors(text, strict=False) == ["spec.predictors.0.traffic: '75' is not of "
                                                 "type 'integer'"]
    no_graph = copy.deepcopy(sdep)
    del no_graph["spec"]["predictors"][0]["graph"]
    assert schema_errors(no_graph) == ["spec.predictors.0: 'graph' is a required property"]
    wrong_api = {**sdep, "apiVersion": "machinelearning.seldon.io/v1alpha2"}
    assert schema_errors(wrong_api)[0].startswith("apiVersion:")
    model = v2_models(FULL, BASE, None)[0]
    del model["spec"]["storageUri"]
    assert schema_errors(model) == ["spec: 'storageUri' is a required property"]
    experiment = v2_experiment(FULL, Weights(5.0))
    del experiment["spec"]["candidates"][0]["weight"]
    assert schema_errors(experiment) == ["spec.candidates.0: 'weight' is a required property"]
    nulls = copy.deepcopy(sdep)
    nulls["spec"]["predictors"][0]["graph"]["envSecretRefName"] = None
    assert schema_errors(nulls) == []  # None means absent, as for the Kubernetes client


# --------------------------------------------------------------------------------------
# Seldon v2: Models and Experiment
# --------------------------------------------------------------------------------------


@TARGETS
def test_v2_models_are_valid(target):
    models = v2_models(target, BASE, CAND)
    assert [m["metadata"]["name"] for m in models] == ["fraud-baseline", "fraud-candidate"]
    for model, ref, role in zip(models, (BASE, CAND), (BASELINE, CANDIDATE), strict=True):
        assert_valid(model)
        assert model["spec"]["storageUri"] == ref.storage_uri
        assert model["spec"]["requirements"] == ["mlflow"]
        assert model["spec"]["replicas"] == target.replicas
        assert model["metadata"]["labels"]["kpigate.io/role"] == role
        assert model["spec"].get("secretName") == target.env_secret


def test_v2_experiment_per_state():
    shadow = v2_experiment(FULL, SHADOW)
    check_experiment(shadow)
    assert shadow["spec"]["default"] == "fraud-baseline"
    assert v2_routing_of(shadow) == ({"fraud-baseline": 100},
                                     {"name": "fraud-candidate", "percent": 100})
    canary = v2_experiment(FULL, Weights(25.0))
    check_experiment(canary)
    assert v2_routing_of(canary) == ({"fraud-baseline": 75, "fraud-candidate": 25}, None)
    promoted = v2_experiment(FULL, PROMOTED)
    check_experiment(promoted)
    assert v2_routing_of(promoted) == ({"fraud-baseline": 0, "fraud-candidate": 100}, None)
    detached = v2_experiment(FULL, DETACHED)
    check_experiment(detached)
    assert v2_routing_of(detached) == ({"fraud-baseline": 100}, None)


@pytest.mark.parametrize("sequence", list(SEQUENCES), ids=list(SEQUENCES))
def test_v2_stage_sequence_and_rollback_from_each_stage(sequence):
    stages = SEQUENCES[sequence]
    live = copy.deepcopy(v2_experiment(FULL, stages[0]))
    live["metadata"]["resourceVersion"] = "1"
    check_experiment(live)
    at_stage = [live]
    for weights in stages[1:]:
        ops = v2_experiment_patch(live, weights)
        assert ops[0]["path"] == "/metadata/resourceVersion"
        live = apply(live, ops)
        check_experiment(live)
        assert v2_routing_of(live) == v2_routing_of(v2_experiment(FULL, weights))
        at_stage.append(live)
    for state in at_stage[:-1]:
        rolled_back = apply(state, v2_experiment_patch(state, DETACHED))
        check_experiment(rolled_back)
        assert v2_routing_of(rolled_back) == ({"fraud-baseline": 100}, None)


def test_v2_patch_guards_and_strangers():
    live = v2_experiment(FULL, Weights(5.0))
    with pytest.raises(ManifestError, match="resourceVersion missing"):
        v2_experiment_patch(live, Weights(25.0))
    live["metadata"]["resourceVersion"] = "3"
    ops = v2_experiment_patch(live, Weights(25.0))
    swapped = copy.deepcopy(live)
    swapped["spec"]["candidates"].reverse()
    with pytest.raises(PatchConflict, match="candidates/0/name"):
        apply_json_patch(swapped, ops)
    stale = {**live, "metadata": {**live["metadata"], "resourceVersion": "4"}}
    with pytest.raises(PatchConflict, match="resourceVersion"):
        apply_json_patch(stale, ops)
    stranger = copy.deepcopy(live)
    stranger["spec"]["candidates"].append({"name": "other-model", "weight": 0})
    with pytest.raises(ManifestError, match="unexpected candidate"):
        v2_experiment_patch(stranger, Weights(25.0))


@pytest.mark.parametrize(("spec", "message"), [
    ({"candidates": []}, "spec.candidates: empty"),
    ({"candidates": [{"name": "a", "weight": 0}]}, "all weights are 0"),
    ({"default": "x", "candidates": [{"name": "a", "weight": 1}]}, "'x' is not one of"),
    ({"candidates": [{"name": "a", "weight": 1}], "mirror": {"name": "a", "percent": 100}},
     "is also a candidate"),
    ({"candidates": [{"name": "a", "weight": 1}], "mirror": {"name": "b", "percent": 101}},
     "mirror.percent: 101"),
    ({"candidates": [{"name": "a", "weight": 1.5}]}, r"weight: 1\.5 is not a whole number"),
])
def test_experiment_rules_reject(spec, message):
    with pytest.raises(ManifestError, match=message):
        check_experiment_rules({"metadata": {"name": "e"}, "spec": spec})


# --------------------------------------------------------------------------------------
# apply_json_patch
# --------------------------------------------------------------------------------------


def test_apply_json_patch_operations_and_purity():
    doc = {"a": {"b~c": 1, "d/e": [1, 2]}, "f": True}
    ops = [
        {"op": "test", "path": "/a/b~0c", "value": 1},
        {"op": "add", "path": "/a/d~1e/1", "value": 9},
        {"op": "add", "path": "/a/d~1e/-", "value": 3},
        {"op": "replace", "path": "/f", "value": False},
        {"op": "remove", "path": "/a/b~0c"},
        {"op": "add", "path": "/g", "value": {"h": [1]}},
    ]
    assert apply_json_patch(doc, ops) == {"a": {"d/e": [1, 9, 2, 3]}, "f": False,
                                          "g": {"h": [1]}}
    assert doc == {"a": {"b~c": 1, "d/e": [1, 2]}, "f": True}


@pytest.mark.parametrize(("ops", "error", "message"), [
    ([{"op": "test", "path": "/f", "value": 1}], PatchConflict, "expected 1, found True"),
    ([{"op": "test", "path": "/n", "value": 1.0}], ManifestError, "found 2"),
    ([{"op": "test", "path": "/missing", "value": 1}], PatchConflict, "/missing does not exist"),
    ([{"op": "replace", "path": "/missing", "value": 1}], ManifestError, "it does not exist"),
    ([{"op": "remove", "path": "/l/5"}], ManifestError, "index 5 is out of range"),
    ([{"op": "add", "path": "/l/01", "value": 0}], ManifestError, "'01' is not an array index"),
    ([{"op": "move", "from": "/f", "path": "/g"}], ManifestError, "'move' is not supported"),
    ([{"op": "add", "path": "f", "value": 1}], ManifestError, "is not a JSON pointer"),
    ([{"op": "replace", "path": "/f"}], ManifestError, "needs a value"),
])
def test_apply_json_patch_rejects(ops, error, message):
    with pytest.raises(error, match=message):
        apply_json_patch({"f": True, "n": 2, "l": [0]}, ops)


def test_json_patch_test_compares_numbers_by_value():
    apply_json_patch({"n": 2}, [{"op": "test", "path": "/n", "value": 2.0}])


# --------------------------------------------------------------------------------------
# SeldonTarget and ModelRef validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"namespace": "Models"}, r"^namespace: 'Models' is not a Kubernetes name"),
    ({"name": "fraud_model"}, r"^name: 'fraud_model' is not a Kubernetes name"),
    ({"name": "f" * 54}, r"^name: '.*' is 54 characters long; use at most 53"),
    ({"name": ""}, r"^name: must not be empty"),
    ({"seldon_version": 3}, r"^seldon_version: 3 is not a Seldon Core major version"),
    ({"env_secret": "S3 creds"}, r"^env_secret: 'S3 creds' is not a Kubernetes object name"),
    ({"collector_url": "kpigate-collector:8080"}, r"^collector_url: .* is not an http"),
    ({"gateway_url": "ftp://gw"}, r"^gateway_url: 'ftp://gw' is not an http"),
    ({"replicas": 0}, r"^replicas: 0 is not a whole number from 1 to 100"),
    ({"service_account": "-sa"}, r"^service_account: '-sa' is not"),
    ({"collector_url": "http://c:8080/cloudevents/" + "a" * 64},
     r"^collector_url: give the collector's base URL"),
    ({"ingest_token": "<paste the token here>" * 2}, r"^ingest_token: the token has characters"),
    ({"ingest_token": "abc"}, r"^ingest_token: the token is 3 characters long"),
])
def test_target_validation(kwargs, message):
    values = {"namespace": "models", "name": "fraud", **kwargs}
    with pytest.raises(UsageError, match=message) as caught:
        SeldonTarget(**values)
    assert "\n" not in str(caught.value)


def test_target_uri_and_config():
    assert parse_target_uri("kpigate:/seldon/models") == "models"
    assert parse_target_uri("kpigate:/seldon/models/") == "models"
    for bad, message in (("kpigate:/seldon", "no namespace"), ("kpigate:/local", "not a Seldon"),
                         ("kpigate:/seldonx/a", "not a Seldon"),
                         ("kpigate:/seldon/My_NS", "is not a Kubernetes name")):
        with pytest.raises(UsageError, match=message):
            parse_target_uri(bad)
    cfg = parse_config({"seldon_version": "2", "env_secret": "creds", "replicas": "2",
                        "collector_url": "http://c.models.svc:8080/cloudevents",
                        "gateway_url": "http://gw"})
    target = seldon_target("models", "fraud", cfg)
    assert (target.namespace, target.name, target.seldon_version, target.replicas,
            target.env_secret) == ("models", "fraud", 2, 2, "creds")
    assert target.collector_base_url == "http://c.models.svc:8080"
    assert target.logger_url == "http://c.models.svc:8080/cloudevents"
    assert target.state_configmap == "fraud-kpigate-state"
    assert SeldonTarget("a", "b", collector_url="http://c:8080/").logger_url == \
        "http://c:8080/cloudevents"
    # The collector's ingest token rides in the logger URL's path (Seldon's executor
    # cannot send a header), and nowhere a repr or the saved settings would show it.
    token = "0123456789abcdef" * 4
    with_token = seldon_target("models", "fraud", cfg, ingest_token=token)
    assert with_token.logger_url == f"http://c.models.svc:8080/cloudevents/{token}"
    assert with_token.collector_base_url == "http://c.models.svc:8080"
    assert token not in repr(with_token)
    assert with_token == target  # not compared: the same rollout, whoever holds the token


def test_model_ref_needs_a_storage_location():
    for uri in ("models:/fraud/2", "runs:/abc/model", "  "):
        with pytest.raises(UsageError, match=r"^storage_uri: "):
            ModelRef("2", uri)
    with pytest.raises(UsageError, match=r"^version: 'v 2' cannot be a Kubernetes label value"):
        ModelRef("v 2", "s3://b/m")
    assert check_model_uri_scheme("s3://bucket/m") is None
    assert check_model_uri_scheme("gs://bucket/m") is None
    assert "local path" in check_model_uri_scheme("/tmp/mlruns/1/m")
    assert "local path" in check_model_uri_scheme("file:///tmp/m")
    assert "read through MLflow" in check_model_uri_scheme("mlflow-artifacts:/1/m")


# --------------------------------------------------------------------------------------
# kpigate render
# --------------------------------------------------------------------------------------


def render(*args: str) -> Any:
    return CliRunner().invoke(render_command, list(args))


def documents(output: str) -> list[tuple[str, Any]]:
    """(comment, content) per YAML document of render's output (the header skipped)."""
    chunks = output.split("\n---\n")[1:]
    out = []
    for chunk in chunks:
        comment, _, body = chunk.partition("\n")
        assert comment.startswith("# ")
        out.append((comment[2:], yaml.safe_load(body)))
    # the whole output is one valid YAML stream: the header, then these documents
    assert list(yaml.safe_load_all(output)) == [body for _, body in out]
    return out


def test_render_v1_with_storage_uris():
    result = render("-t", "kpigate:/seldon/models", "--name", "fraud",
                    "-m", CAND.storage_uri, "--baseline-uri", BASE.storage_uri,
                    "-C", "collector_url=http://kpigate-collector.models.svc:8080",
                    "-C", "env_secret=s3-credentials", "-C", "replicas=2")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith("# kpigate render: rollout fraud in namespace models")
    docs = documents(result.stdout)
    # default policy: shadow, 5, 25, 50, 100 and a bake -> create, 3 transitions, the
    # promotion into the bake, the bake's end in 2 steps, a rollback after promotion in 2
    # steps, and 2 rollback steps from each of the 4 evaluated stages
    assert "# stages: shadow -> 5% -> 25% -> 50% -> 100%, then a 1h bake" in result.stdout
    assert len(docs) == 1 + 3 + 1 + 2 + 2 + 2 * 4
    manifest = docs[0][1]
    assert manifest["spec"]["predictors"][0]["replicas"] == 2
    assert manifest["spec"]["predictors"][1]["graph"]["logger"]["url"].endswith("/cloudevents")
    assert ("# request logger: http://kpigate-collector.models.svc:8080/cloudevents/"
            "<ingest token> when applied with $KPIGATE_COLLECTOR_INGEST_TOKEN_FILE") \
        in result.stdout
    live = stored(manifest)
    states = [live]
    for comment, ops in docs[1:4]:
        assert comment.startswith("stage ")
        live = apply(live, ops)
        check_sdep(live)
        states.append(live)
    assert [routing(s)[CANDIDATE] for s in states] == [(100, True), (5, False), (25, False),
                                                     (50, False)]
    assert "the baseline is its shadow during the bake" in docs[4][0]
    baked = apply(live, docs[4][1])
    check_sdep(baked)
    assert routing(baked) == {BASELINE: (100, True), CANDIDATE: (100, False)}
    live = baked
    for _, ops in docs[5:7]:
        live = apply(live, ops)
        check_sdep(live)
    assert routing(live) == {CANDIDATE: (100, False)}
    live = baked
    for comment, ops in docs[7:9]:
        assert comment.startswith("rollback after promotion")
        live = apply(live, ops)
        check_sdep(live)
    assert routing(live) == {BASELINE: (100, False)}
    for i, state in enumerate(states):
        (c1, ops1), (c2, ops2) = docs[9 + 2 * i], docs[10 + 2 * i]
        assert c1.startswith(f"rollback from stage {i + 1}")
        assert "step 1 of 2" in c1
        assert "step 2 of 2" in c2
        first = apply(state, ops1)
        check_sdep(first)
        final = apply(first, ops2)
        check_sdep(final)
        assert routing(final) == {BASELINE: (100, False)}


def test_render_v2_with_stage_override():
    result = render("--target", "kpigate:/seldon/ml", "--name", "churn", "-m", "gs://b/c",
                    "--baseline-uri", "gs://b/b", "-C", "seldon_version=2",
                    "--stage", "shadow,10", "--stage", "100")
    assert result.exit_code == 0, result.output
    assert "# stages: shadow -> 10% -> 100%" in result.stdout
    docs = documents(result.stdout)
    models = [body for _, body in docs[:2]]
    assert [m["metadata"]["name"] for m in models] == ["churn-baseline", "churn-candidate"]
    for model in models:
        assert_valid(model)
    comment, experiment = docs[2]
    assert comment.startswith("create at stage 1 (shadow)")
    check_experiment(experiment)
    live = {**experiment, "metadata": {**experiment["metadata"], "resourceVersion": "1"}}
    states = [live]
    for _, ops in docs[3:5]:
        live = apply(live, ops)
        check_experiment(live)
        states.append(live)
    # the default policy bakes: the candidate serves, the baseline gets the mirror
    assert v2_routing_of(live) == ({"churn-candidate": 100},
                                   {"name": "churn-baseline", "percent": 100})
    ended = apply(live, docs[5][1])
    check_experiment(ended)
    assert v2_routing_of(ended) == ({"churn-baseline": 0, "churn-candidate": 100}, None)
    assert docs[6][0].startswith("rollback after promotion")
    back = apply(live, docs[6][1])
    check_experiment(back)
    assert v2_routing_of(back) == ({"churn-baseline": 100}, None)
    rollbacks = docs[7:]
    assert len(rollbacks) == 2
    for (comment, ops), state in zip(rollbacks, states[:2], strict=True):
        assert "kubectl delete model churn-candidate -n ml" in comment
        rolled_back = apply(state, ops)
        check_experiment(rolled_back)
        assert v2_routing_of(rolled_back) == ({"churn-baseline": 100}, None)


@pytest.mark.parametrize(("args", "message"), [
    (["--stage", "shadow,2.5,100"], "Error: stages[1].traffic: 2.5% is not a whole percent"),
    (["-t", "kpigate:/local"], "Error: target 'kpigate:/local': not a Seldon target"),
    (["--name", "Fraud"], "Error: name: 'Fraud' is not a Kubernetes name"),
    (["-C", "seldon_version=3"], "Error: -C seldon_version=3: must be 1 or 2"),
    (["-C", "replicas"], "Error: -C replicas: write KEY=VALUE"),
    (["-m", "runs:/abc/model"], "Error: --model-uri runs:/abc/model: a runs:/ URI is not"),
    (["--stage", "5", "-C", "stages=5,100"], "Error: --stage and -C stages: give the stages"),
    (["--policy", "/nonexistent/policy.yaml"], "/nonexistent/policy.yaml: file not found"),
    (["--baseline-uri", "s3://b/b", "-C", "baseline=models:/m/1"],
     "Error: --baseline-uri and -C baseline differ"),
])
def test_render_bad_input_exits_2_with_one_line(args, message):
    base = {"-t": "kpigate:/seldon/models", "--name": "fraud", "-m": "s3://b/c",
            "--baseline-uri": "s3://b/b"}
    for flag in ("-t", "--name", "-m"):
        if flag in args:
            base.pop(flag)
    argv = [x for kv in base.items() for x in kv] + args
    result = render(*argv)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(message)


def test_render_without_baseline_is_a_usage_error():
    result = render("-t", "kpigate:/seldon/models", "--name", "fraud", "-m", "s3://b/c")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --baseline-uri: missing")


@pytest.mark.parametrize("tracking_uri", ["local"], indirect=True)
def test_render_resolves_registered_models_to_their_storage(registered_model):
    from mlflow import MlflowClient

    client = MlflowClient(registered_model.tracking_uri)
    expected = {}
    for version in ("1", "2"):
        source = client.get_model_version(registered_model.name, version).source
        # MLflow 3 registers a LoggedModel: the version's source is models:/m-<id>
        assert source.startswith("models:/m-"), source
        model_id = source.removeprefix("models:/")
        expected[version] = client.get_logged_model(model_id).artifact_location
        assert not expected[version].startswith("models:/")
    result = render("-t", "kpigate:/seldon/models", "--name", "fraud",
                    "-m", f"models:/{registered_model.name}/2",
                    "--baseline-uri", f"models:/{registered_model.name}@champion",
                    "--tracking-uri", registered_model.tracking_uri, "--stage", "10,100")
    assert result.exit_code == 0, result.output
    manifest = documents(result.stdout)[0][1]
    check_sdep(manifest)
    uris = {p["name"]: p["graph"]["modelUri"] for p in manifest["spec"]["predictors"]}
    assert uris == {BASELINE: expected["1"], CANDIDATE: expected["2"]}
    versions = {p["name"]: p["labels"]["kpigate.io/model-version"]
                for p in manifest["spec"]["predictors"]}
    assert versions == {BASELINE: "1", CANDIDATE: "2"}
    # a local store's artifacts are not reachable from a cluster: render says so
    assert "warning: candidate" in result.stderr
    assert "local path" in result.stderr
    missing = render("-t", "kpigate:/seldon/models", "--name", "fraud",
                     "-m", f"models:/{registered_model.name}/9", "--baseline-uri", "s3://b/b",
                     "--tracking-uri", registered_model.tracking_uri)
    assert missing.exit_code == 2
    assert "has no version 9" in missing.stderr
