"""The ModelRollout CRD (deploy/kubernetes/base/crd) and its Python model.

The CRD must be structural (what the API server demands of apiextensions.k8s.io/v1), its
enums and patterns must agree with kpigate's Python values, sample objects must validate
and bad ones fail naming the field, both in the schema and in ``from_object``; the status
mapping gives the documented conditions for every phase; and a ModelRollout goes through
the fake API server with the kubernetes client, status subresource included.
"""

# The fixtures imported from fake_kube are test parameters, which ruff reads as redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import copy
import dataclasses
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from crd_schema import strict_schema
from fake_kube import fake_kube  # noqa: F401  (fixture)
from kubernetes import client, config

from mlflow_kpigate.backends.modelrollout import (
    API_VERSION,
    GROUP,
    PLURAL,
    VERSION,
    ModelRollout,
    ModelRolloutSpec,
    ModelRolloutStatus,
    status_from_state,
)
from mlflow_kpigate.backends.modelrollout import spec as spec_module
from mlflow_kpigate.backends.modelrollout.status import ActionRecord
from mlflow_kpigate.core.decision import Action, Decision, Evidence, Verdict
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.state import Phase, RolloutState, Weights

ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "deploy" / "kubernetes" / "base" / "crd" / "kpigate.io_modelrollouts.yaml"
EXAMPLE = ROOT / "examples" / "k8s" / "modelrollout.yaml"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)

# -- the CRD -------------------------------------------------------------------------------------
# Keywords apiextensions.k8s.io/v1 refuses anywhere in a schema, and the ones a structural
# schema may not use inside allOf/anyOf/oneOf/not (the "value validation" branches).
FORBIDDEN = {"$ref", "definitions", "dependencies", "additionalItems", "patternProperties",
             "id", "$schema"}
FORBIDDEN_IN_BRANCHES = {"type", "description", "default", "additionalProperties",
                         "nullable", "x-kubernetes-preserve-unknown-fields"}


def structural_problems(node: dict[str, Any], path: str = "", *, branch: bool = False,
                        parent_props: frozenset[str] = frozenset()) -> list[str]:
    """Why ``node`` is not a structural schema with a description on every field."""
    problems = [f"{path}: {k} is not allowed" for k in FORBIDDEN & set(node)]
    if node.get("uniqueItems") is True:
        problems.append(f"{path}: uniqueItems true is not allowed")
    if branch:
        problems += [f"{path}: {k} inside a logical junctor" for k in
                     FORBIDDEN_IN_BRANCHES & set(node)]
        problems += [f"{path}: {p} is not declared outside the junctor"
                     for p in node.get("properties", {}) if p not in parent_props]
    else:
        if not node.get("type") and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: no type")
        if not node.get("description"):
            problems.append(f"{path}: no description")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: an array without items")
        if node.get("x-kubernetes-list-type") == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            if not keys or not set(keys) <= set(node["items"].get("required", [])):
                problems.append(f"{path}: list-map keys must be required in items")
    props = frozenset(node.get("properties", {}))
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}" if path else name,
                                        branch=branch)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += structural_problems(node[key], f"{path}[{key}]", branch=branch)
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(key, [])):
            problems += structural_problems(sub, f"{path}.{key}[{i}]", branch=True,
                                            parent_props=props)
    if isinstance(node.get("not"), dict):
        problems += structural_problems(node["not"], f"{path}.not", branch=True,
                                        parent_props=props)
    return problems


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))


def version() -> dict[str, Any]:
    (only,) = crd()["spec"]["versions"]
    return only


def schema() -> dict[str, Any]:
    return version()["schema"]["openAPIV3Schema"]


def validator() -> jsonschema.Draft7Validator:
    strict = strict_schema(schema())  # unknown fields fail, as Kubernetes would prune them
    jsonschema.Draft7Validator.check_schema(strict)
    return jsonschema.Draft7Validator(strict)


def schema_errors(obj: dict[str, Any]) -> list[str]:
    return [".".join(str(p) for p in e.absolute_path) + ": " + e.message
            for e in validator().iter_errors(obj)]


def node(*path: str) -> dict[str, Any]:
    out = schema()
    for name in path:
        out = out["items"] if name == "[]" else out["properties"][name]
    return out


def test_crd_identity_versions_and_subresources():
    doc = crd()
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert doc["spec"]["group"] == GROUP
    assert doc["spec"]["scope"] == "Namespaced"
    assert doc["spec"]["names"]["kind"] == "ModelRollout"
    assert {"mr", "mrollout"} <= set(doc["spec"]["names"]["shortNames"])
    ver = version()
    assert (ver["name"], ver["served"], ver["storage"]) == (VERSION, True, True)
    assert ver["subresources"] == {"status": {}}
    assert f"{GROUP}/{VERSION}" == API_VERSION


def test_crd_schema_is_structural_with_descriptions_everywhere():
    assert structural_problems(schema()) == []


@pytest.mark.parametrize(("mutate", "problem"), [
    (lambda s: s["properties"]["spec"]["properties"]["paused"].pop("type"), "spec.paused: no type"),
    (lambda s: s["properties"]["spec"]["properties"]["paused"].pop("description"),
     "spec.paused: no description"),
    (lambda s: s["properties"]["spec"]["properties"]["model"]["properties"]["candidate"]
     ["oneOf"][0].update(type="object"), "inside a logical junctor"),
    (lambda s: s["properties"]["spec"]["properties"]["model"]["properties"]["candidate"]
     ["oneOf"][0].update(properties={"tag": {}}), "not declared outside"),
    (lambda s: s["properties"]["spec"].update(patternProperties={}), "patternProperties"),
])
def test_the_structural_check_catches_what_the_api_server_refuses(mutate, problem):
    broken = copy.deepcopy(schema())
    mutate(broken)
    assert any(problem in p for p in structural_problems(broken))


def test_printer_columns_read_fields_the_status_has():
    columns = {c["name"]: c for c in version()["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Stage", "Traffic", "Last decision", "Reason", "Age"]
    assert columns["Age"] == {**columns["Age"], "type": "date",
                              "jsonPath": ".metadata.creationTimestamp"}
    status = full_status().to_object()
    for name in ("Phase", "Stage", "Traffic", "Last decision", "Reason"):
        value: Any = {"status": status}
        for part in columns[name]["jsonPath"].split(".")[1:]:
            value = value[part]
        assert isinstance(value, str), name
        assert value, name


def test_enums_and_patterns_agree_with_kpigate():
    assert node("status", "phase")["enum"] == [p.value for p in Phase]
    assert node("status", "lastDecision", "action")["enum"] == [a.value for a in Action]
    verdicts = node("status", "lastDecision", "kpis", "[]", "verdict")["enum"]
    assert verdicts == [v.value for v in Verdict]
    assert node("spec", "backend", "kind")["enum"] == list(spec_module.BACKEND_KINDS)
    assert node("spec", "actionRequest", "action")["enum"] == list(spec_module.REQUEST_ACTIONS)
    pairs = [(("spec", "model", "candidate", "version"), spec_module.VERSION),
             (("spec", "model", "candidate", "alias"), spec_module.ALIAS),
             (("spec", "backend", "name"), spec_module.DNS_LABEL),
             (("spec", "policy", "configMapRef", "name"), spec_module.OBJECT_NAME),
             (("spec", "policy", "configMapRef", "key"), spec_module.CONFIG_KEY),
             (("spec", "collector", "url"), spec_module.HTTP_URL),
             (("spec", "tracking", "uri"), spec_module.TRACKING_URI),
             (("spec", "actionRequest", "id"), spec_module.REQUEST_ID)]
    for path, pattern in pairs:
        assert node(*path)["pattern"] == f"^({pattern.pattern})$" or \
            node(*path)["pattern"] == f"^{pattern.pattern}$", path


# -- sample objects --------------------------------------------------------------------------------
def rollout_v1_inline() -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "ModelRollout",
            "metadata": {"name": "fraud", "namespace": "models"},
            "spec": {"model": {"name": "fraud-detector", "candidate": {"version": "7"}},
                     "policy": {"inline": {"version": 1, "name": "fraud",
                                           "stages": [{"traffic": 5}, {"traffic": 100}]}},
                     "backend": {"kind": "SeldonDeployment"},
                     "tracking": {"uri": "http://mlflow.mlflow.svc:5000"},
                     "collector": {"url": "http://kpigate-collector.models.svc:8080"}}}


def rollout_v2_configmap() -> dict[str, Any]:
    obj = rollout_v1_inline()
    obj["spec"].update(
        model={"name": "fraud-detector", "candidate": {"alias": "challenger"},
               "baseline": {"version": "6"}, "promoteAlias": "prod"},
        policy={"configMapRef": {"name": "kpigate-policy", "key": "fraud.yaml"}},
        backend={"kind": "Experiment", "name": "fraud-v2",
                 "models": {"baseline": "fraud-a", "candidate": "fraud-b"}, "replicas": 2,
                 "envSecretRef": {"name": "mlflow-storage"}},
        tracking={"uri": "databricks", "credentialsSecretRef": {"name": "mlflow-creds"}},
        collector={"url": "https://collector.example", "tokenSecretRef": {"name": "tokens"}},
        prometheusUrl="http://prometheus:9090", paused=True,
        actionRequest={"id": "ticket-42", "action": "rollback", "reason": "alert"})
    return obj


SAMPLES = {"v1-inline": rollout_v1_inline, "v2-configmap": rollout_v2_configmap,
           "example": lambda: yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("make", SAMPLES.values(), ids=SAMPLES.keys())
def test_samples_validate_and_read(make):
    obj = make()
    assert schema_errors(obj) == []
    rollout = ModelRollout.from_object(obj)
    assert rollout.spec.model.name == obj["spec"]["model"]["name"]


def test_sample_values_are_read():
    v2 = ModelRollout.from_object(rollout_v2_configmap())
    assert v2.spec.backend.seldon_version == 2
    assert v2.target_name == "fraud-v2"
    candidate_uri = v2.spec.model.candidate.model_uri("fraud-detector")
    assert candidate_uri == "models:/fraud-detector@challenger"
    assert v2.spec.model.baseline is not None
    assert v2.spec.model.baseline.model_uri("fraud-detector") == "models:/fraud-detector/6"
    assert (v2.spec.policy.config_map, v2.spec.policy.key) == ("kpigate-policy", "fraud.yaml")
    assert v2.spec.action_request is not None
    assert v2.spec.action_request.id == "ticket-42"
    v1 = ModelRollout.from_object(rollout_v1_inline())
    assert (v1.spec.backend.seldon_version, v1.target_name) == (1, "fraud")
    assert v1.spec.model.promote_alias == "champion"  # the CRD's default
    assert v1.spec.policy.inline is not None
    assert v1.spec.policy.inline["name"] == "fraud"


@pytest.mark.parametrize("make", SAMPLES.values(), ids=SAMPLES.keys())
def test_spec_round_trip(make):
    spec = ModelRolloutSpec.from_object(make()["spec"])
    written = spec.to_object()
    assert ModelRolloutSpec.from_object(written) == spec
    assert schema_errors({**make(), "spec": written}) == []


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    target = obj
    for key in parents:
        target = target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return obj


# (field, value or None to delete it, what the schema names, what from_object says)
BAD = [
    ("spec.model.name", None, "spec.model: 'name' is a required property",
     "spec.model.name: required"),
    ("spec.model.candidate", {"version": "7", "alias": "x"}, "spec.model.candidate:",
     "spec.model.candidate: set exactly one of version or alias"),
    ("spec.model.candidate", {"version": "v7"}, "spec.model.candidate.version:",
     "spec.model.candidate.version: 'v7' does not match"),
    ("spec.backend.kind", "Deployment", "spec.backend.kind: 'Deployment' is not one of",
     "spec.backend.kind: 'Deployment' is not one of SeldonDeployment, Experiment"),
    ("spec.backend.replicas", 0, "spec.backend.replicas: 0 is less than the minimum",
     "spec.backend.replicas: must be at least 1, not 0"),
    ("spec.policy", {}, "spec.policy:", "spec.policy: set exactly one of inline or configMapRef"),
    ("spec.collector.url", "kpigate-collector:8080", "spec.collector.url:",
     "spec.collector.url: 'kpigate-collector:8080' does not match"),
    ("spec.tracking", None, "spec: 'tracking' is a required property", "spec.tracking: required"),
    ("spec.paused", "yes", "spec.paused: 'yes' is not of type 'boolean'",
     "spec.paused: must be true or false"),
    ("spec.actionRequest", {"id": "r1", "action": "pause"}, "spec.actionRequest.action:",
     "spec.actionRequest.action: 'pause' is not one of promote, rollback"),
    ("spec.backend.replica", 2, "spec.backend: Additional properties are not allowed", None),
]


@pytest.mark.parametrize(("field", "value", "schema_says", "python_says"), BAD,
                         ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_bad_objects_fail_naming_the_field(field, value, schema_says, python_says):
    obj = _set(rollout_v1_inline(), field, value)
    errors = schema_errors(obj)
    assert any(e.startswith(schema_says) for e in errors), errors
    if python_says is not None:
        with pytest.raises(UsageError) as err:
            ModelRollout.from_object(obj)
        assert str(err.value).startswith(python_says)
        assert "\n" not in str(err.value)


def test_models_only_for_an_experiment_the_cel_rule_checked_in_python():
    obj = _set(rollout_v1_inline(), "spec.backend.models", {"baseline": "a"})
    rule = node("spec", "backend")["x-kubernetes-validations"][0]["rule"]
    assert "Experiment" in rule
    assert "has(self.models)" in rule
    with pytest.raises(UsageError, match=r"^spec\.backend\.models: only for kind Experiment"):
        ModelRollout.from_object(obj)


# -- status ----------------------------------------------------------------------------------------
def decision(action: Action = Action.HOLD) -> Decision:
    ev = Evidence("precision", "proportion", "guardrail", "higher", Verdict.INCONCLUSIVE,
                  "needs more samples", delta=-0.01, lower=-0.05, upper=0.03,
                  baseline_value=0.91, candidate_value=0.90, margin="0.02", samples=1200,
                  samples_needed=5000)
    latency = Evidence("p95_latency", "quantile", "critical", "lower",
                       Verdict.INSUFFICIENT_DATA, "no samples")
    return Decision(action, "precision inconclusive", 1, "canary-5", evidence=(ev, latency))


def state(phase: Phase, **changes: Any) -> RolloutState:
    base = RolloutState("fraud", "fraud-detector", "7", "6", "s3://m/7", "s3://m/6",
                        "policy.yaml", "http://mlflow", 0, stage_index=1, phase=phase,
                        weights=Weights(5.0), last_decision=decision().to_dict(),
                        reason="holding for samples", evaluations=3,
                        updated_at=T0.timestamp() - 60)
    return base.evolve(**changes) if changes else base


def full_status() -> ModelRolloutStatus:
    return status_from_state(state(Phase.CANARY), generation=2, now=T0,
                             stage_names=["shadow", "canary-5", "full"])


EXPECTED = {  # phase → (Available, Progressing, Degraded) as (status, reason)
    Phase.PENDING: (("False", "Pending"), ("True", "Pending"), ("False", "NoRegression")),
    Phase.SHADOW: (("False", "Shadow"), ("True", "Shadow"), ("False", "NoRegression")),
    Phase.CANARY: (("False", "Canary"), ("True", "Canary"), ("False", "NoRegression")),
    Phase.HOLDING: (("False", "Holding"), ("True", "Holding"), ("False", "NoRegression")),
    Phase.BAKING: (("False", "Baking"), ("True", "Baking"), ("False", "NoRegression")),
    Phase.PROMOTED: (("True", "Promoted"), ("False", "Promoted"), ("False", "Promoted")),
    Phase.ROLLED_BACK: (("False", "RolledBack"), ("False", "RolledBack"),
                        ("True", "RolledBack")),
    Phase.ABORTED: (("False", "Aborted"), ("False", "Aborted"), ("True", "Aborted")),
}


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_status_for_every_phase(phase):
    status = status_from_state(state(phase), generation=4, now=T0,
                               stage_names=["shadow", "canary-5", "full"])
    got = tuple((status.condition(t).status, status.condition(t).reason)  # type: ignore[union-attr]
                for t in ("Available", "Progressing", "Degraded"))
    assert got == EXPECTED[phase]
    assert all(c.observed_generation == 4 and c.last_transition_time == T0
               and c.message == "holding for samples" for c in status.conditions)
    obj = status.to_object()
    assert obj["phase"] == phase.value
    assert obj["observedGeneration"] == 4
    assert obj["stage"] == {"index": 1, "name": "canary-5"}
    assert obj["traffic"] == "baseline 95%, candidate 5%"
    assert schema_errors({**rollout_v1_inline(), "status": obj}) == []
    assert ModelRolloutStatus.from_object(obj) == status


def test_rollback_while_baking_and_pause_have_their_own_reasons():
    after = status_from_state(state(Phase.ROLLED_BACK, bake_started_at=1.0), generation=1,
                              now=T0)
    assert after.condition("Degraded").reason == "RolledBackAfterPromotion"  # type: ignore[union-attr]
    paused = status_from_state(state(Phase.CANARY, paused=True), generation=1, now=T0)
    progressing = paused.condition("Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("Unknown", "Paused")
    assert paused.paused is True


def test_last_decision_summarises_each_kpi():
    summary = full_status().last_decision
    assert summary is not None
    assert (summary.action, summary.stage) == (Action.HOLD, "canary-5")
    assert summary.time == T0 - timedelta(seconds=60)  # the state's updated_at
    precision, latency = summary.kpis
    assert (precision.name, precision.verdict, precision.estimate, precision.lower,
            precision.upper, precision.samples, precision.samples_needed) == \
        ("precision", Verdict.INCONCLUSIVE, -0.01, -0.05, 0.03, 1200, 5000)
    # No estimate: the numbers are left out, not written as NaN (JSON has none).
    assert latency.to_object() == {"name": "p95_latency", "verdict": "insufficient_data",
                                   "role": "critical", "samples": 0}


def test_stage_name_without_the_policy_comes_from_the_decision_or_the_index():
    assert status_from_state(state(Phase.CANARY), generation=1, now=T0).stage_name == \
        "canary-5"
    assert status_from_state(state(Phase.CANARY, stage_index=2), generation=1,
                             now=T0).stage_name == "stage 2"


def test_conditions_keep_last_transition_time_while_their_status_holds():
    first = status_from_state(state(Phase.SHADOW), generation=1, now=T0)
    later = T0 + timedelta(hours=1)
    # Shadow → canary: reasons change, statuses do not, so no transition.
    second = status_from_state(state(Phase.CANARY, reason="stage 2"), generation=2,
                               now=later, previous=first)
    assert all(c.last_transition_time == T0 for c in second.conditions)
    assert second.condition("Progressing").reason == "Canary"  # type: ignore[union-attr]
    # Promotion: every status flips except Degraded, which stays False.
    handled = ActionRecord("r1", "promote", "Applied", "approved by hand", later)
    second = dataclasses.replace(second, last_action_request=handled)
    third = status_from_state(state(Phase.PROMOTED), generation=2,
                              now=later + timedelta(hours=1), previous=second)
    times = {c.type: c.last_transition_time for c in third.conditions}
    assert times == {"Available": later + timedelta(hours=1),
                     "Progressing": later + timedelta(hours=1), "Degraded": T0}
    # The same decision re-read keeps its time; the last action request is carried forward.
    assert third.last_decision == second.last_decision
    assert third.last_action_request == handled


def test_status_round_trip_through_json():
    status = full_status()
    assert ModelRolloutStatus.from_object(status.to_object()) == status


def test_bad_status_names_the_field():
    obj = full_status().to_object()
    obj["conditions"][1]["status"] = "Maybe"
    with pytest.raises(UsageError, match=r"^status\.conditions\[1\]\.status: 'Maybe' is not"):
        ModelRolloutStatus.from_object(obj)


# -- through the fake API server ------------------------------------------------------------------
@pytest.fixture
def custom(fake_kube):
    api_client = config.new_client_from_config(str(fake_kube.kubeconfig))
    with api_client:
        yield client.CustomObjectsApi(api_client)


def test_create_get_and_patch_status_over_http(fake_kube, custom):
    args = (GROUP, VERSION, "models", PLURAL)
    body = rollout_v1_inline()
    body["spec"]["unknownField"] = 1  # pruned, as the API server does
    created = custom.create_namespaced_custom_object(*args, body)
    assert created["metadata"]["generation"] == 1
    assert "unknownField" not in created["spec"]
    assert "status" not in created
    status = status_from_state(state(Phase.CANARY), generation=1, now=T0).to_object()
    patched = custom.patch_namespaced_custom_object_status(*args, "fraud",
                                                           {"status": status})
    assert patched["status"] == status
    assert patched["metadata"]["generation"] == 1  # a status write is no spec change
    got = ModelRollout.from_object(custom.get_namespaced_custom_object(*args, "fraud"))
    assert got.status is not None
    assert got.status.phase is Phase.CANARY
    assert got.spec == ModelRolloutSpec.from_object(rollout_v1_inline()["spec"])
    # A one-shot request is a spec change: the generation moves, so observedGeneration
    # tells whether the operator has seen it.
    moved = custom.patch_namespaced_custom_object(
        *args, "fraud", {"spec": {"actionRequest": {"id": "r1", "action": "promote"}}})
    assert moved["metadata"]["generation"] == 2
    assert moved["status"]["observedGeneration"] == 1


def test_the_fake_refuses_an_invalid_model_rollout_naming_the_field(fake_kube, custom):
    body = _set(rollout_v1_inline(), "spec.backend.kind", "Deployment")
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, "models", PLURAL, body)
    assert err.value.status == 422
    assert "spec.backend.kind" in err.value.body
    assert re.search(r"Deployment", err.value.body)
    assert fake_kube.objects(PLURAL) == []
