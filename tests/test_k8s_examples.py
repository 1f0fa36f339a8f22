"""The cluster examples: Kubernetes manifests, the Argo WorkflowTemplate, the Prometheus
alert rules and the Grafana dashboard.

They cannot be applied here (no cluster), so each is checked by the real tool or model
that would read it: core Kubernetes objects through the ``kubernetes`` client's strict
models (unknown or mistyped fields fail), the rules through ``promtool check`` and
``promtool test rules``, the dashboard's PromQL through promtool's parser, the kustomization
through ``kubectl kustomize``, the policy through ``load_policy``, the workflow's scripts
against a real MLflow registry, the files ``scripts/build-image.sh`` builds the package from
through a real package build (tests/test_image.py builds and runs the image itself).
The rest checks that the pieces agree: selectors match labels, ports exist, every metric
a query names is one kpigate or Seldon exports, the Role grants exactly what the controller
calls.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from _k8s_validation import (
    COLLECTOR_METRICS,
    CONTROLLER_METRICS,
    DASHBOARD,
    KNOWN_METRICS,
    OPERATOR_METRICS,
    PROMETHEUS,
    ROOT,
    ROUTER_METRICS,
)
from _k8s_validation import MONITOR_ENDPOINT as _ENDPOINT
from _k8s_validation import MONITOR_SPEC as _MONITOR_SPEC
from _k8s_validation import dockerfile as _dockerfile
from _k8s_validation import dockerfile_uid as _dockerfile_uid
from _k8s_validation import docs as _docs
from _k8s_validation import grants as _grants
from _k8s_validation import metric_names as _metric_names
from _k8s_validation import panels as _panels
from _k8s_validation import promtool as _promtool
from _k8s_validation import records as _records
from _k8s_validation import rules as _alerting_rules
from _k8s_validation import run as _run
from _k8s_validation import secure as _secure
from _k8s_validation import validate as _validate
from _k8s_validation import walk as _walk

K8S = ROOT / "examples" / "k8s"

# -- the contract ------------------------------------------------------------------------------
#: What the controller may do (group, resource, verb): exactly what the Seldon backend calls.
CONTROLLER_GRANTS = {
    *(("machinelearning.seldon.io", "seldondeployments", v)
      for v in ("get", "list", "create", "patch", "delete")),
    *(("mlops.seldon.io", r, v) for r in ("models", "experiments")
      for v in ("get", "list", "create", "patch", "delete")),
    *(("", "configmaps", v) for v in ("get", "list", "create", "update", "delete")),
}

#: Core kinds and the kubernetes client model that must accept them.
CORE_MODELS = {
    "Deployment": "V1Deployment", "Service": "V1Service", "Job": "V1Job", "Role": "V1Role",
    "RoleBinding": "V1RoleBinding", "ServiceAccount": "V1ServiceAccount",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim", "ConfigMap": "V1ConfigMap",
    "NetworkPolicy": "V1NetworkPolicy",
}
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "WorkflowTemplate"}
#: Files in examples/k8s that are kustomize's own, not resources.
KUSTOMIZE_FILES = {"kustomization.yaml"}
#: Sample custom resources that the kustomization does not apply: a ModelRollout is run by
#: the operator that deploy/kubernetes installs, not by this directory's Job
#: (tests/test_model_rollout_crd.py and tests/test_install.py check it).
SAMPLE_FILES = {"modelrollout.yaml"}
#: The collector's token Secret (made by the kustomization's secretGenerator), its keys
#: (the scopes) and where the pods mount it.
TOKENS_SECRET = "kpigate-collector-tokens"
TOKEN_SCOPES = ("ingest", "labels", "operator")
TOKENS_DIR = "/var/run/secrets/kpigate"


# -- helpers -----------------------------------------------------------------------------------
def _kustomization() -> dict[str, Any]:
    return _docs(K8S / "kustomization.yaml")[0]


def _manifest_files() -> list[Path]:
    config = set(_kustomization().get("configurations", []))
    return sorted(p for p in K8S.glob("*.yaml")
                  if p.name not in KUSTOMIZE_FILES | SAMPLE_FILES and p.name not in config)


def _objects() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in _manifest_files() for d in _docs(p)]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in _objects()
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _c_options(args: list[str]) -> dict[str, str]:
    """The ``-C key=value`` options of an ``mlflow deployments`` command line."""
    out: dict[str, str] = {}
    for flag, value in itertools.pairwise(args):
        if flag == "-C":
            key, _, val = value.partition("=")
            assert key not in out, f"-C {key} given twice"
            out[key] = val
    return out


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _job_container() -> dict[str, Any]:
    return _one("Job")["spec"]["template"]["spec"]["containers"][0]


def _workflow() -> dict[str, Any]:
    return _one("WorkflowTemplate")


def _wf_template(name: str) -> dict[str, Any]:
    return next(t for t in _workflow()["spec"]["templates"] if t["name"] == name)


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _dashboard_exprs() -> list[str]:
    d = _dashboard()
    exprs = [t["expr"] for p in _panels(d["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    return exprs


def _rules() -> list[dict[str, Any]]:
    return _alerting_rules()


def _rule(alert: str) -> dict[str, Any]:
    return next(r for r in _rules() if r.get("alert") == alert)


# -- every file parses -------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted([*K8S.glob("*.yaml"), *PROMETHEUS.glob("*.yml")]),
                         ids=lambda p: p.name)
def test_every_yaml_file_parses_into_mappings(path):
    docs = _docs(path)
    assert docs, f"{path.name} is empty"
    assert all(isinstance(d, dict) for d in docs)


def test_every_manifest_has_a_known_kind_and_a_name():
    kinds = set()
    for file, obj in _objects():
        assert obj.get("kind") in set(CORE_MODELS) | CRD_KINDS, f"{file}: kind {obj.get('kind')}"
        assert obj.get("apiVersion"), f"{file}: {obj['kind']} without apiVersion"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        assert "namespace" not in obj["metadata"], f"{file}: the kustomization sets namespaces"
        kinds.add(obj["kind"])
    assert kinds == set(CORE_MODELS) | CRD_KINDS


# -- core objects through the kubernetes client's models ---------------------------------------
_CORE_OBJECTS = [(f, o) for f, o in _objects() if o["kind"] in CORE_MODELS]


@pytest.mark.parametrize(("file", "obj"), _CORE_OBJECTS,
                         ids=[f"{f}:{o['kind']}/{o['metadata']['name']}" for f, o in
                              _CORE_OBJECTS])
def test_core_objects_are_valid_kubernetes_objects(file, obj):
    _validate(CORE_MODELS[obj["kind"]], obj)


def test_the_strict_model_check_rejects_a_mistyped_field():
    from pydantic import ValidationError

    job = json.loads(json.dumps(_one("Job")))
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ValidationError, match="imagePullPolicyy"):
        _validate("V1Job", job)
    job = json.loads(json.dumps(_one("Job")))
    job["spec"]["backoffLimit"] = "six"
    with pytest.raises(ValidationError, match="backoffLimit"):
        _validate("V1Job", job)


# -- RBAC --------------------------------------------------------------------------------------
def test_the_role_grants_exactly_what_the_controller_calls():
    role = _one("Role", "kpigate")
    assert _grants(role) == CONTROLLER_GRANTS
    assert "*" not in {x for g in _grants(role) for x in g}
    assert all(set(rule) == {"apiGroups", "resources", "verbs"} for rule in role["rules"])
    assert not [d for _, d in _objects() if d["kind"].startswith("Cluster")]


def test_the_rolebinding_binds_the_role_to_the_service_account_the_pods_run_as():
    binding = _one("RoleBinding", "kpigate")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "kpigate"}
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount",
                                                                     "kpigate")]
    _one("ServiceAccount", "kpigate")
    assert _one("Job")["spec"]["template"]["spec"]["serviceAccountName"] == "kpigate"
    assert _workflow()["spec"]["serviceAccountName"] == "kpigate"
    collector = _one("Deployment", "kpigate-collector")["spec"]["template"]["spec"]
    assert "serviceAccountName" not in collector
    assert collector["automountServiceAccountToken"] is False


def test_argo_executor_role_only_reports_step_results():
    role = _one("Role", "kpigate-argo-executor")
    assert _grants(role) == {("argoproj.io", "workflowtaskresults", "create"),
                             ("argoproj.io", "workflowtaskresults", "patch")}
    binding = _one("RoleBinding", "kpigate-argo-executor")
    assert binding["roleRef"]["name"] == "kpigate-argo-executor"
    assert [s["name"] for s in binding["subjects"]] == ["kpigate"]


# -- the collector -----------------------------------------------------------------------------
def test_collector_runs_one_sqlite_writer_with_its_volume_probes_and_limits():
    dep = _one("Deployment", "kpigate-collector")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}, "two pods must never share the SQLite file"
    (container,) = pod["containers"]
    _secure(container, pod)
    assert container["args"] == ["collector", "--deployment", "fraud", "--policy",
                                 "/policy/policy.yaml", "--data-dir", "/data", "--host",
                                 "0.0.0.0", "--port", "8080",
                                 *itertools.chain.from_iterable(
                                     ("--token-file", f"{s}={TOKENS_DIR}/{s}")
                                     for s in TOKEN_SCOPES)]
    assert "--insecure-no-auth" not in container["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
    assert _one("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert volumes[mounts["/policy"]]["configMap"]["name"] == "kpigate-policy"
    tokens = volumes[mounts[TOKENS_DIR]]["secret"]
    assert tokens["secretName"] == TOKENS_SECRET
    assert "items" not in tokens, "the collector checks every scope's token"
    assert tokens["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == _dockerfile_uid(), "the volume must be writable"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert set(spec["selector"]["matchLabels"].items()) <= set(
        dep["spec"]["template"]["metadata"]["labels"].items())


def test_collector_service_reaches_the_pods_at_the_url_the_controller_is_given():
    service = _one("Service", "kpigate-collector")
    pod_labels = _one("Deployment", "kpigate-collector")["spec"]["template"]["metadata"]["labels"]
    assert set(service["spec"]["selector"].items()) <= set(pod_labels.items())
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    url = _c_options(_job_container()["args"])["collector_url"]
    assert url == f"http://{service['metadata']['name']}.$(POD_NAMESPACE).svc:{port['port']}"


def _token_mount(container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, Any]:
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == TOKENS_DIR]
    assert mount["readOnly"] is True
    return next(v for v in volumes if v["name"] == mount["name"])["secret"]


def test_the_controller_holds_the_operator_and_ingest_tokens_only():
    from mlflow_kpigate.backends.seldon.collector_credentials import (
        INGEST_TOKEN_ENV,
        OPERATOR_TOKEN_ENV,
    )

    job_pod = _one("Job")["spec"]["template"]["spec"]
    wf = _workflow()["spec"]
    step = _wf_template("rollout")["container"]
    for container, volumes, pod in ((_job_container(), job_pod["volumes"], job_pod),
                                    (step, wf["volumes"], wf)):
        secret = _token_mount(container, volumes)
        assert secret["secretName"] == TOKENS_SECRET
        assert {i["key"]: i["path"] for i in secret["items"]} == {"operator": "operator",
                                                                 "ingest": "ingest"}
        assert pod["securityContext"]["fsGroup"] == _dockerfile_uid()
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[OPERATOR_TOKEN_ENV] == f"{TOKENS_DIR}/operator"
        assert env[INGEST_TOKEN_ENV] == f"{TOKENS_DIR}/ingest"
        # Tokens never travel as -C options (they would be saved in a ConfigMap).
        assert not any("token" in key for key in _c_options(container["args"]))
    for name in ("wait-for-approval", "report"):
        body = _wf_template(name).get("container") or _wf_template(name)["script"]
        assert all(m["mountPath"] != TOKENS_DIR for m in body.get("volumeMounts", []))
    generator = {g["name"]: g for g in _kustomization()["secretGenerator"]}[TOKENS_SECRET]
    assert sorted(f.split("=")[0] for f in generator["files"]) == sorted(TOKEN_SCOPES)
    assert generator["options"]["disableNameSuffixHash"] is True
    ignored = (K8S / "tokens" / ".gitignore").read_text().splitlines()
    assert "*" in ignored, "the token files must never be committed"


def test_network_policy_admits_only_the_collectors_clients():
    policy = _one("NetworkPolicy", "kpigate-collector")
    spec = policy["spec"]
    collector = _one("Deployment", "kpigate-collector")
    pod_labels = collector["spec"]["template"]["metadata"]["labels"]
    assert set(spec["podSelector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert spec["policyTypes"] == ["Ingress"]
    (container,) = collector["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    peers = []
    for rule in spec["ingress"]:
        assert [(p["port"], p["protocol"]) for p in rule["ports"]] == [("http", "TCP")]
        assert rule["ports"][0]["port"] in port_names
        peers += rule["from"]
    selectors = [(p.get("namespaceSelector", {}).get("matchLabels"),
                  p["podSelector"]["matchLabels"]) for p in peers]
    deployment = _flag(container["args"], "--deployment")
    assert selectors == [
        (None, {"seldon-deployment-id": deployment}),       # Seldon's request logger
        (None, {"app.kubernetes.io/name": "kpigate-controller"}),  # the controller
        (None, {"kpigate.io/label-producer": "true"}),       # label producers
        ({"kubernetes.io/metadata.name": "monitoring"},      # Prometheus
         {"app.kubernetes.io/name": "prometheus"}),
    ]
    controller = dict(selectors[1][1])
    assert set(controller.items()) <= set(
        _one("Job")["spec"]["template"]["metadata"]["labels"].items())
    assert set(controller.items()) <= set(_wf_template("rollout")["metadata"]["labels"].items())
    prometheus = _c_options(_job_container()["args"])["prometheus_url"]
    job_env = {e["name"]: e.get("value") for e in _job_container()["env"]}
    assert ".monitoring.svc" in job_env[prometheus.strip("$()")]


# -- the rollout Job ---------------------------------------------------------------------------
def test_rollout_job_retries_from_the_state_and_stops_on_configuration_errors():
    from mlflow_kpigate.core import exit_codes

    job = _one("Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] > 0
    assert pod["restartPolicy"] == "Never"
    (fail_rule,) = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    # bad input, and the outcomes that end the rollout (a retry would start it again)
    assert fail_rule["onExitCodes"]["values"] == [exit_codes.USAGE, exit_codes.ROLLED_BACK,
                                                  exit_codes.ABORTED]
    assert fail_rule["onExitCodes"]["containerName"] == pod["containers"][0]["name"]


def test_rollout_job_runs_the_seldon_target_with_policy_mlflow_env_and_metrics_port():
    job = _one("Job")
    pod = job["spec"]["template"]["spec"]
    container = _job_container()
    _secure(container, pod)
    assert container["command"] == ["mlflow"]
    args = container["args"]
    assert args[:2] == ["deployments", "create"]
    assert _flag(args, "-t") == "kpigate:/seldon/$(POD_NAMESPACE)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # Kubernetes leaves a $(VAR) it does not know as it is: every one must be defined.
    for ref in re.findall(r"\$\((\w+)\)", " ".join(args)):
        assert ref in env, f"$({ref}) is not defined in the container's env"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 9102}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/policy"]]["configMap"]["name"] == "kpigate-policy"
    assert _c_options(args)["policy"] == "/policy/policy.yaml"
    refs = [(k, v["name"]) for e in container["envFrom"] for k, v in e.items()]
    assert refs == [("configMapRef", "kpigate-mlflow"),
                    ("secretRef", "kpigate-mlflow-credentials")]
    assert "MLFLOW_TRACKING_URI" in _one("ConfigMap", "kpigate-mlflow")["data"]


def test_rollout_job_config_keys_pass_kpigates_own_validation(tmp_path):
    from mlflow_kpigate.deploy.config import KEYS, parse_config

    container = _job_container()
    env = {e["name"]: e.get("value", "models") for e in container["env"]}
    options = _c_options(container["args"])
    assert set(options) <= set(KEYS)
    assert options["wait"] == "true"
    policy = tmp_path / "policy.yaml"
    policy.write_text(_policy_text(), encoding="utf-8")
    resolved = {k: re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], v)
                for k, v in options.items()}
    resolved["policy"] = str(policy)
    cfg = parse_config(resolved)
    assert cfg.wait is True
    assert cfg.env_secret == "mlflow-storage"
    assert cfg.collector_url == "http://kpigate-collector.models.svc:8080"
    assert cfg.baseline == "models:/fraud-detector@champion"


# -- the policy --------------------------------------------------------------------------------
def _policy_text() -> str:
    return _one("ConfigMap", "kpigate-policy")["data"]["policy.yaml"]


def test_policy_configmap_loads_with_its_cluster_sections(tmp_path):
    from mlflow_kpigate.core.durations import parse_duration
    from mlflow_kpigate.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(_policy_text(), encoding="utf-8")
    policy = load_policy(path)
    assert policy.readiness.timeout == parse_duration("10m")
    assert policy.readiness.on_timeout.value == "hold"
    prometheus = policy.metrics.prometheus
    assert prometheus.url == "http://prometheus-operated.monitoring.svc:9090"
    assert prometheus.requests_from.value == "seldon"
    assert _c_options(_job_container()["args"])["prometheus_url"] == "$(PROMETHEUS_URL)"
    job_env = {e["name"]: e.get("value") for e in _job_container()["env"]}
    assert job_env["PROMETHEUS_URL"] == prometheus.url
    # Seldon v1's traffic is a whole number per predictor.
    assert all(float(s.traffic).is_integer() for s in policy.stages if not s.shadow)


def test_alert_timings_match_the_policy(tmp_path):
    from mlflow_kpigate.policy import load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(_policy_text(), encoding="utf-8")
    policy = load_policy(path)
    not_evaluating = _rule("KpigateControllerNotEvaluating")["expr"]
    assert re.search(r"> (\d+)\)", not_evaluating).group(1) == str(
        int(3 * policy.evaluation.interval))
    waiting = _rule("KpigateReadinessWaitingTooLong")["expr"]
    assert re.search(r"> (\d+)", waiting).group(1) == str(int(policy.readiness.timeout / 2))
    # The Job outlives every stage's max_duration together.
    total = sum(s.max_duration or 0 for s in policy.stages)
    assert _one("Job")["spec"]["activeDeadlineSeconds"] > total


# -- Prometheus Operator monitors --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PodMonitor"])
def test_monitors_use_only_known_fields(kind):
    for _, obj in _objects():
        if obj["kind"] != kind:
            continue
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(obj["spec"]) <= _MONITOR_SPEC
        _validate("V1LabelSelector", obj["spec"]["selector"])
        endpoints = obj["spec"]["endpoints" if kind == "ServiceMonitor" else
                                "podMetricsEndpoints"]
        assert endpoints
        for endpoint in endpoints:
            assert set(endpoint) <= _ENDPOINT
            assert endpoint["path"].startswith("/")


def test_servicemonitor_scrapes_the_collector_service():
    monitor = _one("ServiceMonitor")
    service = _one("Service", "kpigate-collector")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert set(wanted.items()) <= set(service["metadata"]["labels"].items())
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http",
                                                                              "/metrics")]
    assert "http" in ports


def test_controller_podmonitor_scrapes_the_job_and_the_workflow_rollout_step():
    monitor = _one("PodMonitor", "kpigate-controller")
    wanted = set(monitor["spec"]["selector"]["matchLabels"].items())
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    job = _one("Job")
    assert wanted <= set(job["spec"]["template"]["metadata"]["labels"].items())
    assert "metrics" in {p["name"] for p in _job_container()["ports"]}
    step = _wf_template("rollout")
    assert wanted <= set(step["metadata"]["labels"].items())
    assert "metrics" in {p["name"] for p in step["container"]["ports"]}
    # The collector's pods must not be scraped twice.
    collector = _one("Deployment", "kpigate-collector")["spec"]["template"]["metadata"]
    assert not wanted <= set(collector["labels"].items())


def test_seldon_podmonitor_reads_the_executors_metrics_port():
    monitor = _one("PodMonitor", "kpigate-seldon-executor")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "seldon-core"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/prometheus")


# -- Argo WorkflowTemplate ---------------------------------------------------------------------
def test_workflow_template_is_consistent():
    wf = _workflow()
    assert wf["apiVersion"] == "argoproj.io/v1alpha1"
    spec = wf["spec"]
    templates = {t["name"]: t for t in spec["templates"]}
    assert len(templates) == len(spec["templates"]), "template names must be unique"
    assert spec["entrypoint"] in templates
    declared = {p["name"] for p in spec["arguments"]["parameters"]}
    assert {"model", "version", "baseline", "policy"} <= declared
    volumes = {v["name"] for v in spec["volumes"]}
    for v in spec["volumes"]:
        _validate("V1Volume", v)
    _validate("V1PodSecurityContext", spec["securityContext"])
    text = json.dumps(spec)
    for ref in re.findall(r"\{\{workflow\.parameters\.([\w-]+)\}\}", text):
        assert ref in declared, f"{{{{workflow.parameters.{ref}}}}} is not declared"
    order = [step["name"] for group in templates[spec["entrypoint"]]["steps"] for step in group]
    assert order == ["approve", "rollout", "report"]
    for i, group in enumerate(templates[spec["entrypoint"]]["steps"]):
        for step in group:
            target = templates[step["template"]]
            given = {p["name"] for p in step.get("arguments", {}).get("parameters", [])}
            needed = {p["name"] for p in target.get("inputs", {}).get("parameters", [])}
            assert given == needed, f"step {step['name']}: gives {given}, needs {needed}"
            for earlier in re.findall(r"\{\{steps\.([\w-]+)\.", json.dumps(step)):
                assert earlier in order[:i], f"step {step['name']} uses later step {earlier}"
    for name, template in templates.items():
        inputs = {p["name"] for p in template.get("inputs", {}).get("parameters", [])}
        for ref in re.findall(r"\{\{inputs\.parameters\.([\w-]+)\}\}", json.dumps(template)):
            assert ref in inputs, f"template {name}: input {ref} is not declared"
        body = template.get("container") or template.get("script")
        if body is None:
            continue
        container = {k: v for k, v in body.items() if k != "source"}
        _validate("V1Container", {"name": "main", **container})
        _secure(container, {"securityContext": spec["securityContext"],
                            "volumes": spec["volumes"]})
        assert {m["name"] for m in container["volumeMounts"]} <= volumes
        if "script" in template:
            assert "{{" not in template["script"]["source"], \
                "parameters reach scripts through env, never spliced into the code"


def test_workflow_rollout_step_is_the_jobs_rollout():
    step = _wf_template("rollout")
    args = step["container"]["args"]
    job_args = _job_container()["args"]
    assert step["container"]["command"] == _job_container()["command"]
    assert args[:2] == job_args[:2]
    assert set(_c_options(args)) == set(_c_options(job_args))
    from mlflow_kpigate.deploy.config import KEYS

    assert set(_c_options(args)) <= set(KEYS)
    assert _flag(args, "-t") == "kpigate:/seldon/{{workflow.namespace}}"
    retry = step["retryStrategy"]
    assert int(retry["limit"]) >= 1
    for code in (2, 3, 4):  # bad input, rolled back, aborted: never retried
        assert f"!= {code}" in retry["expression"], retry["expression"]
    assert step["activeDeadlineSeconds"] == _one("Job")["spec"]["activeDeadlineSeconds"]
    policy_keys = set(_one("ConfigMap", "kpigate-policy")["data"])
    default_policy = next(p["value"] for p in _workflow()["spec"]["arguments"]["parameters"]
                          if p["name"] == "policy")
    assert default_policy in policy_keys


def _run_script(template: str, env: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    source = _wf_template(template)["script"]["source"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = 0
    try:
        exec(compile(source, f"<{template}>", "exec"), {"__name__": "__main__"})
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def registry_model(local_tracking_uri, tmp_path):
    """A registered model with versions 1 (alias champion) and 2, without artifacts."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("fraud-detector")
    source = tmp_path / "artifacts"
    source.mkdir()
    for _ in range(2):
        client.create_model_version("fraud-detector", source=str(source))
    client.set_registered_model_alias("fraud-detector", "champion", "1")
    return client


def test_approval_step_waits_for_the_registry_and_pins_the_baseline(registry_model,
                                                                      monkeypatch, capsys):
    env = {"MODEL": "fraud-detector", "VERSION": "2", "BASELINE": "",
           "APPROVAL_TAG": "approval", "APPROVAL_TIMEOUT_SECONDS": "0"}
    code, out, err = _run_script("wait-for-approval", env, monkeypatch, capsys)
    assert code == 1
    assert "no tag approval=approved within 0 s" in err
    assert out == ""

    registry_model.set_model_version_tag("fraud-detector", "2", "approval", "rejected")
    code, out, err = _run_script("wait-for-approval", env, monkeypatch, capsys)
    assert (code, out) == (1, "")
    assert "approval=rejected" in err

    registry_model.set_model_version_tag("fraud-detector", "2", "approval", "approved")
    code, out, _ = _run_script("wait-for-approval", env, monkeypatch, capsys)
    assert (code, out) == (0, "models:/fraud-detector/1\n")
    code, out, _ = _run_script("wait-for-approval",
                               {**env, "BASELINE": "models:/fraud-detector/2"}, monkeypatch,
                               capsys)
    assert (code, out) == (0, "models:/fraud-detector/2\n")


def test_report_step_succeeds_only_for_a_promoted_candidate(registry_model, monkeypatch,
                                                            capsys):
    env = {"MODEL": "fraud-detector", "VERSION": "2", "ROLLOUT_STATUS": "Succeeded"}
    code, out, _ = _run_script("report", env, monkeypatch, capsys)
    assert code == 1
    assert json.loads(out)["status"] == "unknown"

    for key, value in {"kpigate.status": "rolled_back", "kpigate.stage": "canary-5",
                       "kpigate.reason": "recall confidently below the margin"}.items():
        registry_model.set_model_version_tag("fraud-detector", "2", key, value)
    code, out, err = _run_script("report", env, monkeypatch, capsys)
    assert code == 1
    outcome = json.loads(out)
    assert outcome["status"] == "rolled_back"
    assert outcome["reason"] == "recall confidently below the margin"
    assert "rolled_back (recall confidently below the margin)" in err

    registry_model.set_model_version_tag("fraud-detector", "2", "kpigate.status", "promoted")
    code, out, _ = _run_script("report", env, monkeypatch, capsys)
    assert code == 0
    assert json.loads(out)["status"] == "promoted"


# -- Prometheus rules --------------------------------------------------------------------------
def test_promtool_accepts_the_rules():
    result = _run([_promtool(), "check", "rules", str(PROMETHEUS / "rules.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_rules_pass():
    result = _run([_promtool(), "test", "rules", "rules_test.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    cases = [c for t in _docs(PROMETHEUS / "rules_test.yml")[0]["tests"]
             for c in t.get("alert_rule_test", [])]
    for rule in _rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} is never shown to fire"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} never shown quiet"


EXPECTED_SEVERITY = {
    "KpigateRollback": "critical", "KpigateControllerNotEvaluating": "critical",
    "KpigateControllerDown": "critical", "KpigateHolding": "warning",
    "KpigateMetricsUnavailable": "warning", "KpigateReadinessWaitingTooLong": "warning",
    "KpigateCollectorRejectingEvents": "warning", "KpigateNoLabelsArriving": "warning",
    "KpigateCollectorDown": "warning", "KpigateCollectorRefusingRequests": "warning",
    "KpigateStageCannotDecideInTime": "warning",
    "KpigateOperatorNoLeader": "critical", "KpigateOperatorReconcileErrors": "warning",
    "KpigateOperatorWorkerCrashLooping": "warning",
}


def test_every_alert_has_a_severity_summary_and_description():
    rules = _rules()
    assert {r["alert"] for r in rules} == set(EXPECTED_SEVERITY)
    for rule in rules:
        assert rule["labels"]["severity"] == EXPECTED_SEVERITY[rule["alert"]]
        assert rule["annotations"]["summary"].strip()
        assert len(rule["annotations"]["description"]) > len(rule["annotations"]["summary"])


def test_lifecycle_events_are_records_shown_by_unit_tests_not_alerts():
    """A stage advanced or a promotion needs nobody: a record, each with a case where it
    is 1 and one where it is absent (alerts are only what needs a human)."""
    names = {r["record"] for r in _records()}
    assert names == {"kpigate:rollout_stage_advanced", "kpigate:rollout_promoted"}
    cases = [c for t in _docs(PROMETHEUS / "rules_test.yml")[0]["tests"]
             for c in t.get("promql_expr_test", [])]
    for name in names:
        mine = [c for c in cases if c["expr"] == name]
        assert any(c["exp_samples"] for c in mine), f"{name} is never shown set"
        assert any(not c["exp_samples"] for c in mine), f"{name} is never shown absent"
    assert "info" not in {r["labels"]["severity"] for r in _rules()}


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_runbook_section():
    for rule in _rules():
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert anchor == _slug(rule["alert"]), rule["alert"]
        text = (ROOT / page).read_text(encoding="utf-8")
        runbook = text.split("\n## Runbook\n", 1)[1].split("\n## ", 1)[0]
        headings = re.findall(r"^### (.+)$", runbook, re.M)
        assert anchor in {_slug(h) for h in headings}, f"{page}: no Runbook section #{anchor}"


def test_rules_and_their_tests_name_only_exported_metrics():
    for rule in _records():
        unknown = _metric_names(rule["expr"]) - KNOWN_METRICS
        assert not unknown, f"{rule['record']}: {sorted(unknown)}"
    for rule in _rules():
        unknown = _metric_names(rule["expr"]) - KNOWN_METRICS
        assert not unknown, f"{rule['alert']}: {sorted(unknown)}"
    for test in _docs(PROMETHEUS / "rules_test.yml")[0]["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{")[0]
            assert name in KNOWN_METRICS | {"up"}, f"test {test['name']}: {name}"


def test_the_metric_list_is_what_kpigate_exports():
    """The explicit lists above are checked against the code that writes the series."""
    from mlflow_kpigate.metrics import exposition
    from mlflow_kpigate.rollout.exposition import DecisionMetrics

    families = DecisionMetrics("fraud").registry.collect()
    exported = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert exported >= CONTROLLER_METRICS
    from mlflow_kpigate.backends.local.router_metrics import RouterMetrics

    router = {f.name + {"counter": "_total", "histogram": "_bucket"}.get(f.type, "")
              for f in RouterMetrics("fraud").registry.collect()}
    assert router >= ROUTER_METRICS
    collector = {getattr(exposition, n) for n in exposition.__all__
                 if isinstance(getattr(exposition, n), str)
                 and getattr(exposition, n).startswith("kpigate_")}
    histograms = {exposition.STAGE_LATENCY: ("_bucket", "_count", "_sum"),
                  exposition.STAGE_SCORE: ("_bucket",)}
    samples = {n for n in collector if n not in histograms}
    samples |= {h + s for h, suffixes in histograms.items() for s in suffixes}
    assert samples >= COLLECTOR_METRICS


def test_metric_name_check_catches_a_typo():
    assert _metric_names('rate(kpigate_decision_total{action="rollback"}[5m])') - \
        KNOWN_METRICS == {"kpigate_decision_total"}


# -- Grafana dashboard -------------------------------------------------------------------------
def test_dashboard_has_the_variables_and_unique_panel_ids():
    d = _dashboard()
    assert d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert {"datasource", "namespace", "deployment"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "deployment"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in _panels(d["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(d["panels"]):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
    for var in d["templating"]["list"]:
        repeated = [p for p in _panels(d["panels"]) if p.get("repeat") == var["name"]]
        assert not repeated or var.get("multi"), f"{var['name']} repeats but is single-valued"


def test_dashboard_queries_select_the_chosen_rollout_and_known_metrics():
    for expr in _dashboard_exprs():
        unknown = _metric_names(expr) - KNOWN_METRICS
        assert not unknown, f"{expr}: {sorted(unknown)}"
        if _metric_names(expr) <= set(OPERATOR_METRICS):
            continue  # the Operator row (the operator's, not a rollout's): test_install.py
        assert 'namespace="$namespace"' in expr, expr
        assert re.search(r'deployment(_name)?="\$deployment"', expr), expr
    d = _dashboard()
    for var in d["templating"]["list"][1:]:
        assert not _metric_names(var["definition"]) - KNOWN_METRICS


def test_dashboard_shows_what_the_rollout_needs():
    d = _dashboard()
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for panel in _panels(d["panels"]):
        for target in panel.get("targets", []):
            for name in _metric_names(target["expr"]):
                by_metric.setdefault(name, []).append(panel)
    for name in ("kpigate_traffic_weight", "kpigate_rollout_stage", "kpigate_rollout_phase",
                 "kpigate_kpi_estimate", "kpigate_kpi_samples", "kpigate_decisions_total",
                 "kpigate_stage_labelled_total", "kpigate_cloudevents_total",
                 "seldon_api_executor_server_requests_seconds_count",
                 "seldon_api_executor_server_requests_seconds_bucket"):
        assert name in by_metric, f"no panel shows {name}"
    (band,) = {id(p): p for p in by_metric["kpigate_kpi_interval_upper"]}.values()
    names = {n for t in band["targets"] for n in _metric_names(t["expr"])}
    assert {"kpigate_kpi_difference", "kpigate_kpi_interval_lower"} <= names
    fill = {o["matcher"]["options"]: p["value"] for o in band["fieldConfig"]["overrides"]
            for p in o["properties"] if p["id"] == "custom.fillBelowTo"}
    legends = {t["legendFormat"] for t in band["targets"]}
    assert fill, "the interval is drawn as a band"
    assert set(fill) | set(fill.values()) <= legends
    p95 = [t["expr"] for p in by_metric["seldon_api_executor_server_requests_seconds_bucket"]
           for t in p["targets"]]
    assert any(e.startswith("histogram_quantile(0.95, sum by (le, predictor_name)")
               for e in p95)


def test_dashboard_queries_are_valid_promql(tmp_path):
    substitutions = {"$namespace": "models", "$deployment": "fraud", "$kpi": "recall",
                     "$__rate_interval": "2m"}
    rules = []
    for i, expr in enumerate(_dashboard_exprs()):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}),
                    encoding="utf-8")
    result = _run([_promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# -- kustomize ---------------------------------------------------------------------------------
def test_kustomization_lists_every_manifest_file():
    k = _kustomization()
    listed = k["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in _manifest_files())
    assert not SAMPLE_FILES & set(listed)
    assert all((K8S / sample).is_file() for sample in SAMPLE_FILES)
    for config in k.get("configurations", []):
        assert (K8S / config).is_file()
    assert [i["name"] for i in k["images"]] == ["kpigate"]
    assert k["namespace"]


def _with_token_files(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of examples/k8s with the token files a user generates (never committed)."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    tokens = {scope: secrets.token_hex(32) for scope in TOKEN_SCOPES}
    for scope, token in tokens.items():
        (copy / "tokens" / scope).write_text(token + "\n", encoding="ascii")
    return copy, tokens


def test_kustomize_build_sets_namespace_and_image_everywhere(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; `kubectl kustomize` cannot be checked here")
    # Without the token files nothing is built: no collector without its tokens.
    bare = _run([kubectl, "kustomize", str(K8S)])
    assert bare.returncode != 0
    assert "tokens/ingest" in bare.stderr
    directory, tokens = _with_token_files(tmp_path)
    result = _run([kubectl, "kustomize", str(directory)])
    assert result.returncode == 0, result.stderr
    objects = [d for d in yaml.safe_load_all(io.StringIO(result.stdout)) if d]
    k = _kustomization()
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    _validate("V1Secret", secret)
    assert secret["metadata"]["name"] == TOKENS_SECRET  # no hash suffix: referred by name
    assert {key: base64.b64decode(v).decode().strip() for key, v in secret["data"].items()} \
        == tokens
    objects.remove(secret)
    assert len(objects) == len(_objects())
    image = f"{k['images'][0]['newName']}:{k['images'][0]['newTag']}"
    images = [v for obj in objects for key, v in _walk(obj) if key == "image"]
    assert len(images) == 5  # collector, Job, three workflow steps
    assert set(images) == {image}
    for obj in objects:
        assert obj["metadata"]["namespace"] == k["namespace"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kpigate"
        for subject in obj.get("subjects", []):
            assert subject["namespace"] == k["namespace"]


# -- the image ---------------------------------------------------------------------------------
def _stages() -> list[tuple[str, str, list[str]]]:
    """The Dockerfile's stages: (base, name, instructions after FROM)."""
    stages: list[tuple[str, str, list[str]]] = []
    for line in _dockerfile():
        if line.startswith("FROM "):
            words = line.split()
            stages.append((words[1], words[3] if len(words) > 3 else "", []))
        elif stages:
            stages[-1][2].append(line)
    return stages


def _container_ports() -> set[int]:
    return {v["containerPort"] for _, obj in _objects() for key, value in _walk(obj)
            if key == "ports" and isinstance(value, list) for v in value
            if "containerPort" in v}


def test_dockerfile_is_a_slim_non_root_kpigate_image_installed_offline():
    lines = _dockerfile()
    # The base is a build argument whose default is a slim Debian bookworm image (Python 3.11,
    # what the wheelhouse is built for); every stage starts from it.
    (arg,) = [line for line in lines if line.startswith("ARG BASE_IMAGE=")]
    assert re.fullmatch(r"ARG BASE_IMAGE=(debian:bookworm-slim|python:3\.11-slim(-bookworm)?)",
                        arg), arg
    assert lines.index(arg) < next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    (runtime, build, final) = _stages()
    assert runtime[:2] == ("${BASE_IMAGE}", "runtime")
    assert (build[0], final[0]) == ("runtime", "runtime")
    # The venv is installed from the wheelhouse only, never from a package index, with the
    # seldon extra (the operator and the cluster rollout import the Kubernetes client) ...
    (install,) = [line for line in build[2] if "pip install" in line]
    assert re.search(r"pip install --no-index --find-links /wheels "
                     r".*'mlflow-kpigate\[seldon\]'( |$)", install)
    assert "COPY wheels /wheels" in build[2]
    # ... and the image gets the venv, not the wheelhouse.
    copies = [line for line in final[2] if line.startswith(("COPY", "ADD"))]
    assert copies == ["COPY --from=build /opt/kpigate /opt/kpigate"]
    assert "ENV PATH=/opt/kpigate/bin:$PATH" in " ".join(final[2])
    # A numeric non-root user with the same group id, which fsGroup in the manifests names.
    uid = _dockerfile_uid()
    assert uid != 0
    assert f"USER {uid}" in final[2]
    (useradd,) = [line for line in runtime[2] if "useradd" in line]
    assert f"groupadd --gid {uid} " in useradd
    assert f"useradd --uid {uid} --gid {uid} " in useradd
    assert 'ENTRYPOINT ["kpigate"]' in final[2]
    (expose,) = [line for line in final[2] if line.startswith("EXPOSE ")]
    exposed = {int(port) for port in expose.split()[1:]}
    assert exposed == {8080, 9102, 8081}  # collector, controller metrics, operator health
    assert _container_ports() <= exposed


def test_dockerignore_sends_only_the_wheelhouse():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules == ["*", "!wheels/"]
    sources = [line.split()[1] for line in _dockerfile()
               if line.startswith("COPY ") and "--from=" not in line]
    assert sources == ["wheels"]


def test_build_image_script_packages_enough_to_build_kpigate(tmp_path):
    """The files scripts/build-image.sh copies to build kpigate's wheel are enough to build
    it with its entry point, package data and the `seldon` extra, which the script and the
    Dockerfile install: the operator and the cluster rollout import the Kubernetes client
    (tests/test_image.py runs the script)."""
    script = (ROOT / "scripts" / "build-image.sh").read_text(encoding="utf-8")
    copied = re.findall(r'^cp (?:-R )?(.+?) "\$context/src/"$', script, flags=re.MULTILINE)
    sources = [name for line in copied for name in line.split()]
    assert sources == ["setup.py", "pyproject.toml", "README.md", "mlflow_kpigate"]
    assert '-w "$context/wheels" "$context/src[seldon]"' in script
    context = tmp_path / "src"
    context.mkdir()
    for source in sources:
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, context / source)
    # setup.py's own build (not a wheel: this venv's setuptools cannot build wheels
    # without the `wheel` package, and an isolated build would need the network).
    build, egg = tmp_path / "build", tmp_path / "egg"
    egg.mkdir()
    result = _run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg),
                   "build_py", "--build-lib", str(build)], cwd=context)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (build / "mlflow_kpigate" / "policies" / "default.yaml").is_file()
    assert (build / "mlflow_kpigate" / "cli" / "main.py").is_file()
    entry_points = (egg / "mlflow_kpigate.egg-info" / "entry_points.txt").read_text()
    assert "kpigate = mlflow_kpigate.cli:main" in entry_points
    requires = (egg / "mlflow_kpigate.egg-info" / "requires.txt").read_text()
    seldon = requires.partition("[seldon]\n")[2].split("\n\n")[0].split()
    assert sorted(name.split(">=")[0] for name in seldon) == \
        ["kubernetes", "prometheus-api-client"]
