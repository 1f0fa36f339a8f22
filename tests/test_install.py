"""The kpigate operator's install (deploy/kubernetes): its kustomize overlays render, every
object is valid, and the RBAC grants exactly what the operator calls.

Every overlay is rendered by the real ``kubectl kustomize`` (offline). Every core object
goes through the ``kubernetes`` client's strict models (unknown or mistyped fields fail);
the ServiceMonitors are checked against the Prometheus Operator's documented fields, as no
copy of its CRD is vendored under tests/data. The Roles and the ClusterRole must grant
exactly the operator's calls, Secrets by name only: adding `list secrets` or a wildcard
fails. tests/test_install_wiring.py checks how the objects fit together (flags, ports,
selectors, NetworkPolicy, samples), tests/test_install_monitoring.py the dashboard row,
the alerts' runbooks and the docs.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from _install import (
    CLUSTER_SCOPED,
    CORE_MODELS,
    EXPECTED_OBJECTS,
    INSTALL,
    LEASE_GRANTS,
    OPERATOR_GRANTS,
    OVERLAYS,
    copy_install,
    kubectl,
    kustomization,
    one,
    pod_template,
    render,
)
from _k8s_validation import MONITOR_ENDPOINT, MONITOR_SPEC, grants, run, validate, walk


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    return render(tmp_path_factory.mktemp("install"))


def test_each_overlay_renders_exactly_its_objects(rendered):
    for overlay, objects in rendered.items():
        assert {(o["kind"], o["metadata"]["name"]) for o in objects} == \
            EXPECTED_OBJECTS[overlay], overlay
        assert len(objects) == len(EXPECTED_OBJECTS[overlay]), f"{overlay}: duplicates"


def test_without_its_token_files_the_namespaced_install_does_not_build(tmp_path):
    copy = copy_install(tmp_path, tokens=False)
    result = run([kubectl(), "kustomize", str(copy / "namespaced")])
    assert result.returncode != 0
    assert "tokens/ingest" in result.stderr
    ignored = (INSTALL / "namespaced" / "tokens" / ".gitignore").read_text().splitlines()
    assert "*" in ignored, "the token files must never be committed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(rendered, overlay):
    for obj in rendered[overlay]:
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert set(obj["spec"]) <= MONITOR_SPEC
            validate("V1LabelSelector", obj["spec"]["selector"])
            for endpoint in obj["spec"]["endpoints"]:
                assert set(endpoint) <= MONITOR_ENDPOINT
                assert endpoint["path"].startswith("/")
        else:
            validate(CORE_MODELS[obj["kind"]], obj)


def test_the_strict_model_check_rejects_a_mistyped_field(rendered):
    from pydantic import ValidationError

    dep = one(rendered["cluster"], "Deployment", "kpigate-operator")
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(ValidationError, match="readinesProbe"):
        validate("V1Deployment", bad)


def test_namespace_image_and_labels_are_set_everywhere(rendered):
    for overlay, objects in rendered.items():
        namespace = kustomization(overlay).get("namespace")
        image = "{newName}:{newTag}".format(**kustomization(overlay)["images"][0])
        assert {v for o in objects for k, v in walk(o) if k == "image"} == {image}, overlay
        for obj in objects:
            assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kpigate"
            if obj["kind"] in CLUSTER_SCOPED:
                assert "namespace" not in obj["metadata"]
            else:
                # rollout-namespace has none: `kubectl apply -n NS -k` places it.
                assert obj["metadata"].get("namespace") == namespace, (overlay, obj["kind"])
            for subject in obj.get("subjects", []):
                assert (subject["kind"], subject["namespace"]) == ("ServiceAccount",
                                                                  namespace)
    assert kustomization("cluster")["namespace"] == "kpigate-system"


# -- RBAC --------------------------------------------------------------------------------------
def _named_grants(role: dict[str, Any]) -> set[tuple[str, str, str, frozenset[str] | None]]:
    out = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        names = frozenset(rule["resourceNames"]) if "resourceNames" in rule else None
        out |= {(g, r, v, names) for g, r, v in grants({"rules": [rule]})}
    return out


def rbac_problems(role: dict[str, Any], expected: set[Any]) -> list[str]:
    """How ``role`` differs from exactly ``expected`` (empty: it grants just that)."""
    have = _named_grants(role)
    problems = [f"grants {g} beyond what the operator calls" for g in sorted(
        have - expected, key=str)]
    problems += [f"lacks {g}" for g in sorted(expected - have, key=str)]
    if any("*" in g[:3] for g in have):
        problems.append("a wildcard")
    return problems


def test_the_namespaced_role_grants_exactly_what_the_operator_calls(rendered):
    objects = rendered["namespaced"]
    assert rbac_problems(one(objects, "Role", "kpigate-operator"),
                         OPERATOR_GRANTS | LEASE_GRANTS) == []
    assert not [o for o in objects if o["kind"].startswith("Cluster")]
    binding = one(objects, "RoleBinding", "kpigate-operator")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "kpigate-operator"}


def test_the_cluster_role_grants_the_same_and_the_lease_stays_namespaced(rendered):
    objects = rendered["cluster"]
    assert rbac_problems(one(objects, "ClusterRole", "kpigate-operator"),
                         OPERATOR_GRANTS) == []
    assert rbac_problems(one(objects, "Role", "kpigate-operator-lease"), LEASE_GRANTS) == []
    for kind, role_kind, name in (("ClusterRoleBinding", "ClusterRole", "kpigate-operator"),
                                  ("RoleBinding", "Role", "kpigate-operator-lease")):
        binding = one(objects, kind, name)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": role_kind, "name": name}


@pytest.mark.parametrize("extra", [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},  # any Secret by name
    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
], ids=["list-secrets", "get-any-secret", "wildcard", "pods"])
def test_the_rbac_check_fails_on_a_broader_grant(rendered, extra):
    role = yaml.safe_load(yaml.safe_dump(one(rendered["namespaced"], "Role",
                                              "kpigate-operator")))
    role["rules"].append(extra)
    assert rbac_problems(role, OPERATOR_GRANTS | LEASE_GRANTS)


def test_every_pod_runs_as_its_service_account_or_none(rendered):
    for overlay in ("namespaced", "cluster"):
        pod = pod_template(rendered[overlay], "kpigate-operator")["spec"]
        assert pod["serviceAccountName"] == "kpigate-operator"
        one(rendered[overlay], "ServiceAccount", "kpigate-operator")
    collector = pod_template(rendered["rollout-namespace"], "kpigate-collector")["spec"]
    assert "serviceAccountName" not in collector
    assert collector["automountServiceAccountToken"] is False
