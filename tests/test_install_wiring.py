"""The operator's install (deploy/kubernetes), wired together: the operator's arguments are
flags ``kpigate operator`` has (the lead's list; a test against the real CLI comes with
it), its ports, probes, Lease and state directory agree with the rest; Services and
monitors select the pods they mean by port names that exist; the shared collector runs as
the single-rollout one does; its NetworkPolicy admits the named clients and nobody else;
and the sample ModelRollouts validate against the CRD and name what the install creates.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from _install import (
    INSTALL,
    LEASE_NAME_DEFAULT,
    OPERATOR_FLAGS,
    SAMPLES,
    SECRET_NAMES,
    TOKEN_SCOPES,
    TOKENS_DIR,
    TOKENS_SECRET,
    kustomization,
    one,
    pod_template,
    render,
)
from _k8s_validation import ROOT, dockerfile_uid, docs, rules, secure
from crd_schema import strict_schema

CRD = INSTALL / "base" / "crd" / "kpigate.io_modelrollouts.yaml"
OPERATOR_OVERLAYS = ("namespaced", "cluster")
COLLECTOR_OVERLAYS = ("namespaced", "rollout-namespace")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    return render(tmp_path_factory.mktemp("install"))


# -- the operator's arguments ------------------------------------------------------------------
def parse_operator_args(args: list[str]) -> dict[str, Any]:
    """``kpigate operator`` arguments by flag, as the documented interface reads them."""
    if args[:1] != ["operator"]:
        raise ValueError(f"not the operator command: {args[:1]}")
    out: dict[str, Any] = {}
    rest, i = args[1:], 0
    while i < len(rest):
        flag, eq, inline = rest[i].partition("=")
        kind = OPERATOR_FLAGS.get(flag)
        if kind is None:
            raise ValueError(f"unknown flag {rest[i]!r}")
        if kind == "switch":
            if eq:
                raise ValueError(f"{flag} takes no value")
            value: Any = True
            i += 1
        elif eq:
            value, i = inline, i + 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            value, i = rest[i + 1], i + 2
        else:
            raise ValueError(f"{flag} needs a value")
        if kind == "repeat":
            out.setdefault(flag, []).append(value)
        elif flag in out:
            raise ValueError(f"{flag} given twice")
        else:
            out[flag] = value
    if ("--namespace" in out) == ("--all-namespaces" in out):
        raise ValueError("give --namespace (repeatable) or --all-namespaces")
    return out


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert match, f"not a duration: {text!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@pytest.mark.parametrize(("args", "problem"), [
    (["operator", "--all-namespaces", "--namespaces", "a"], "unknown flag"),
    (["operator", "--namespace", "a", "--all-namespaces"], "--namespace"),
    (["operator", "--lease-name"], "needs a value"),
    (["operator", "--all-namespaces", "--lease-name", "a", "--lease-name=b"], "twice"),
    (["operator", "--lease-name", "a"], "--namespace"),
    (["collector", "--all-namespaces"], "not the operator"),
])
def test_the_argument_check_refuses_what_the_operator_would(args, problem):
    with pytest.raises(ValueError, match=problem):
        parse_operator_args(args)
    assert parse_operator_args(["operator", "--namespace=a", "--namespace", "b"]) == {
        "--namespace": ["a", "b"]}


@pytest.mark.parametrize("overlay", OPERATOR_OVERLAYS)
def test_operator_runs_with_its_flags_ports_probes_and_state_dir(rendered, overlay):
    dep = one(rendered[overlay], "Deployment", "kpigate-operator")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parse_operator_args(container["args"])
    assert dep["spec"]["replicas"] == 2, "leader election makes a standby replica safe"
    secure(container, pod)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroup"] == dockerfile_uid()
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    for ref in re.findall(r"\$\((\w+)\)", " ".join(container["args"])):
        assert ref in env, f"$({ref}) is not defined in the container's env"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9102, "health": 8081}
    for flag, port in (("--metrics-bind", "metrics"), ("--health-bind", "health")):
        host, _, number = args[flag].rpartition(":")
        assert (host, int(number)) == ("0.0.0.0", ports[port]), flag
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "health"}, probe
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[args["--state-dir"]]] == {"name": "state", "emptyDir": {}}
    lease, renew, retry = (_seconds(args[f]) for f in
                           ("--lease-duration", "--renew-deadline", "--retry-period"))
    assert lease > renew > 1.2 * retry > 0, "client-go's rule for leader election timings"
    # In-cluster configuration; the Lease in the pod's namespace, where its Role is.
    assert not {"--kubeconfig", "--context", "--lease-namespace", "--identity"} & set(args)
    assert args["--lease-name"] == LEASE_NAME_DEFAULT
    role = "kpigate-operator" if overlay == "namespaced" else "kpigate-operator-lease"
    leases = [r for r in one(rendered[overlay], "Role", role)["rules"]
              if r["resources"] == ["leases"] and "resourceNames" in r]
    assert [r["resourceNames"] for r in leases] == [[args["--lease-name"]]]
    if overlay == "namespaced":
        assert args["--namespace"] == ["$(POD_NAMESPACE)"]
    else:
        assert args["--all-namespaces"] is True


# -- selectors and ports -----------------------------------------------------------------------
def _subset(wanted: dict[str, str], labels: dict[str, str]) -> bool:
    return set(wanted.items()) <= set(labels.items())


@pytest.mark.parametrize("overlay", ["namespaced", "cluster", "rollout-namespace"])
def test_services_monitors_and_budgets_select_their_pods_by_named_ports(rendered, overlay):
    objects = rendered[overlay]
    pods = {o["metadata"]["name"]: o["spec"]["template"] for o in objects
            if o["kind"] == "Deployment"}
    for dep in (o for o in objects if o["kind"] == "Deployment"):
        assert _subset(dep["spec"]["selector"]["matchLabels"],
                       dep["spec"]["template"]["metadata"]["labels"])
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for name, service in services.items():
        selected = [p for p in pods.values()
                    if _subset(service["spec"]["selector"], p["metadata"]["labels"])]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} Deployments"
        port_names = {p["name"] for c in selected[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["name"] == port["targetPort"]
            assert port["targetPort"] in port_names
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services.values() if _subset(wanted, s["metadata"]["labels"])]
        assert service["metadata"]["name"] == monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
            assert endpoint["path"] == "/metrics"
            # The operator's rollout series keep the ModelRollout's namespace.
            assert endpoint.get("honorLabels", False) is (service["metadata"]["name"]
                                                          == "kpigate-operator")
    for budget in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        (dep,) = [o for o in objects if o["kind"] == "Deployment" and _subset(
            budget["spec"]["selector"]["matchLabels"],
            o["spec"]["template"]["metadata"]["labels"])]
        assert 0 < budget["spec"]["minAvailable"] < dep["spec"]["replicas"]


def test_the_alert_rules_find_the_collector_and_never_a_controller_pod(rendered):
    collector = one(rendered["rollout-namespace"], "Service", "kpigate-collector")
    for rule in rules():
        for key, value in re.findall(r'\b(job|pod|instance|service)=~?"([^"]*)"', rule["expr"]):
            # ServiceMonitor targets' job is their Service's name.
            assert (key, value) == ("job", collector["metadata"]["name"]), rule["alert"]


# -- the shared collector ----------------------------------------------------------------------
@pytest.mark.parametrize("overlay", COLLECTOR_OVERLAYS)
def test_shared_collector_runs_one_writer_with_its_tokens_volume_and_probes(rendered, overlay):
    objects = rendered[overlay]
    dep = one(objects, "Deployment", "kpigate-collector")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}, "one SQLite writer at a time"
    secure(container, pod)
    assert pod["securityContext"]["fsGroup"] == dockerfile_uid()
    assert container["args"] == [
        "collector", "--shared", "--data-dir", "/data", "--host", "0.0.0.0", "--port", "8080",
        *(x for s in TOKEN_SCOPES for x in ("--token-file", f"{s}={TOKENS_DIR}/{s}"))]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert one(objects, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
        "ReadWriteOnce"]
    assert mounts[TOKENS_DIR]["readOnly"] is True
    tokens = volumes[mounts[TOKENS_DIR]["name"]]["secret"]
    assert tokens == {"secretName": TOKENS_SECRET, "defaultMode": 0o440}


def test_namespaced_install_makes_the_token_secret_the_pods_and_rollouts_name(rendered):
    import base64

    secret = one(rendered["namespaced"], "Secret", TOKENS_SECRET)  # no hash suffix
    assert sorted(secret["data"]) == sorted(TOKEN_SCOPES)
    tokens = [base64.b64decode(v).decode().strip() for v in secret["data"].values()]
    assert len(set(tokens)) == len(tokens), "one token per scope"
    assert TOKENS_SECRET in SECRET_NAMES, "the operator reads it by name"


# -- the collector's NetworkPolicy -------------------------------------------------------------
def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not _subset(selector.get("matchLabels", {}), labels):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if not {"Exists": key in labels, "DoesNotExist": key not in labels,
                "In": labels.get(key) in values,
                "NotIn": key not in labels or labels[key] not in values}[op]:
            return False
    return True


def _admits(policy: dict[str, Any], labels: dict[str, str], namespace: str) -> bool:
    """Whether ``policy`` (in its namespace) lets a pod with ``labels`` connect."""
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                ns_ok = _selects(peer["namespaceSelector"], ns_labels)
            else:
                ns_ok = namespace == policy["metadata"].get("namespace", "team-a")
            if ns_ok and _selects(peer.get("podSelector", {}), labels):
                return True
    return False


@pytest.mark.parametrize("overlay", COLLECTOR_OVERLAYS)
def test_network_policy_admits_the_named_clients_and_nobody_else(rendered, overlay):
    objects = rendered[overlay]
    policy = one(objects, "NetworkPolicy", "kpigate-collector")
    here = policy["metadata"].get("namespace", "team-a")
    collector = pod_template(objects, "kpigate-collector")
    assert _selects(policy["spec"]["podSelector"], collector["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    port_names = {p["name"] for p in collector["spec"]["containers"][0]["ports"]}
    for rule in policy["spec"]["ingress"]:
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
        assert "http" in port_names
    operator_labels = pod_template(rendered["cluster"], "kpigate-operator")["metadata"]["labels"]
    operator_ns = here if overlay == "namespaced" else kustomization("cluster")["namespace"]
    seldon = {"seldon-deployment-id": "fraud", "app.kubernetes.io/managed-by": "seldon-core"}
    producer = {"kpigate.io/label-producer": "true", "app": "labeller"}
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    admitted = [(operator_labels, operator_ns), (seldon, here), (producer, here),
                (prometheus, "monitoring")]
    refused = [({"app": "curl"}, here), (collector["metadata"]["labels"], here),
               (seldon, "elsewhere"), (producer, "elsewhere"), (prometheus, here),
               ({"app": "grafana"}, "monitoring"), (operator_labels, "elsewhere")]
    if overlay == "rollout-namespace":  # pods here cannot pose as the operator
        refused.append((operator_labels, here))
    for labels, namespace in admitted:
        assert _admits(policy, labels, namespace), (labels, namespace)
    for labels, namespace in refused:
        assert not _admits(policy, labels, namespace), (labels, namespace)
    assert sum(len(rule["from"]) for rule in policy["spec"]["ingress"]) == len(admitted)


# -- sample ModelRollouts ----------------------------------------------------------------------
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sample_model_rollouts_validate_and_name_what_the_install_creates(rendered, path):
    (crd,) = docs(CRD)
    (version,) = crd["spec"]["versions"]
    validator = jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))
    (sample,) = docs(path)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(sample)]
    assert errors == []
    assert sample["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert "namespace" not in sample["metadata"], "applied with -n into the rollout's namespace"
    spec = sample["spec"]
    namespace = kustomization("namespaced")["namespace"]
    service = one(rendered["namespaced"], "Service", "kpigate-collector")
    assert spec["collector"]["url"] == (f"http://{service['metadata']['name']}.{namespace}"
                                        f".svc:{service['spec']['ports'][0]['port']}")
    assert spec["collector"]["tokenSecretRef"]["name"] == TOKENS_SECRET
    assert spec["tracking"]["credentialsSecretRef"]["name"] in SECRET_NAMES
    (policy,) = docs(ROOT / "examples" / "k8s" / "policy-configmap.yaml")
    ref = spec["policy"]["configMapRef"]
    assert (ref["name"], ref["key"] in policy["data"]) == (policy["metadata"]["name"], True)


# -- the arguments against the real commands ---------------------------------------------------
def _container_args(objects: list[dict[str, Any]], name: str) -> list[str]:
    dep = one(objects, "Deployment", name)
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_documented_operator_flags_are_the_real_commands_options():
    from mlflow_kpigate.cli.operator import operator_command

    real = {opt for p in operator_command.params for opt in p.opts}
    assert set(OPERATOR_FLAGS) <= real, set(OPERATOR_FLAGS) - real


@pytest.mark.parametrize("overlay", OPERATOR_OVERLAYS)
def test_operator_args_parse_with_the_real_command(rendered, overlay):
    from mlflow_kpigate.cli.operator import operator_command

    args = _container_args(rendered[overlay], "kpigate-operator")
    assert args[0] == "operator"
    # click parses and type-checks every option as `kpigate operator` would at start.
    ctx = operator_command.make_context("operator", list(args[1:]))
    assert ctx.params["namespaces"] or ctx.params["all_namespaces"]


@pytest.mark.parametrize("overlay", COLLECTOR_OVERLAYS)
def test_collector_args_parse_with_the_real_command(rendered, overlay):
    from mlflow_kpigate.cli.collector import collector_command

    args = _container_args(rendered[overlay], "kpigate-collector")
    assert args[0] == "collector"
    ctx = collector_command.make_context("collector", list(args[1:]))
    assert ctx.params["shared"] is True  # one collector for the namespace's rollouts
    scopes = {f.split("=", 1)[0] for f in ctx.params["token_files"]}
    assert {"ingest", "labels", "operator"} <= scopes
