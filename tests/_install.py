"""Test helpers for the operator's install (deploy/kubernetes): what each overlay holds,
the operator's interface as the lead fixed it (flags, grants), and rendering the overlays
with ``kubectl kustomize``.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from _k8s_validation import ROOT, docs, run

INSTALL = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("namespaced", "cluster", "rollout-namespace")
CRD = INSTALL / "base" / "crd" / "kpigate.io_modelrollouts.yaml"
SAMPLES = (INSTALL / "samples" / "modelrollout.yaml",
           ROOT / "examples" / "k8s" / "modelrollout.yaml")

#: What each overlay creates: (kind, name).
OPERATOR_OBJECTS = {
    ("CustomResourceDefinition", "modelrollouts.kpigate.io"),
    ("ServiceAccount", "kpigate-operator"), ("Deployment", "kpigate-operator"),
    ("Service", "kpigate-operator"), ("PodDisruptionBudget", "kpigate-operator"),
    ("ServiceMonitor", "kpigate-operator"),
}
COLLECTOR_OBJECTS = {
    ("PersistentVolumeClaim", "kpigate-collector-data"), ("Deployment", "kpigate-collector"),
    ("Service", "kpigate-collector"), ("NetworkPolicy", "kpigate-collector"),
    ("ServiceMonitor", "kpigate-collector"),
}
EXPECTED_OBJECTS = {
    "namespaced": OPERATOR_OBJECTS | COLLECTOR_OBJECTS | {
        ("Role", "kpigate-operator"), ("RoleBinding", "kpigate-operator"),
        ("Secret", "kpigate-collector-tokens")},
    "cluster": OPERATOR_OBJECTS | {
        ("Namespace", "kpigate-system"), ("ClusterRole", "kpigate-operator"),
        ("ClusterRoleBinding", "kpigate-operator"), ("Role", "kpigate-operator-lease"),
        ("RoleBinding", "kpigate-operator-lease")},
    "rollout-namespace": COLLECTOR_OBJECTS,
}
CORE_MODELS = {
    "Deployment": "V1Deployment", "Service": "V1Service", "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role", "RoleBinding": "V1RoleBinding", "ClusterRole": "V1ClusterRole",
    "ClusterRoleBinding": "V1ClusterRoleBinding", "Namespace": "V1Namespace",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim", "NetworkPolicy": "V1NetworkPolicy",
    "Secret": "V1Secret", "PodDisruptionBudget": "V1PodDisruptionBudget",
    "CustomResourceDefinition": "V1CustomResourceDefinition",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}

# -- the operator's interface (fixed by the lead) ----------------------------------------------
#: ``kpigate operator`` flags: "value" takes one, "repeat" may be given again, "switch" none.
OPERATOR_FLAGS = {
    "--namespace": "repeat", "--all-namespaces": "switch", "--lease-namespace": "value",
    "--lease-name": "value", "--lease-duration": "value", "--renew-deadline": "value",
    "--retry-period": "value", "--metrics-bind": "value", "--health-bind": "value",
    "--kubeconfig": "value", "--context": "value", "--state-dir": "value",
    "--identity": "value",
}
LEASE_NAME_DEFAULT = "kpigate-operator"
#: Secrets the operator may read, by name only (ModelRollouts name them).
SECRET_NAMES = frozenset({"kpigate-mlflow-credentials", "kpigate-collector-tokens"})
_CRUD = ("get", "list", "watch", "create", "update", "patch", "delete")
#: (apiGroup, resource, verb, resourceNames or None) the operator needs in a namespace.
OPERATOR_GRANTS = {
    *(("kpigate.io", "modelrollouts", v, None)
      for v in ("get", "list", "watch", "patch", "update")),
    *(("kpigate.io", "modelrollouts/status", v, None) for v in ("get", "patch", "update")),
    *(("", "configmaps", v, None) for v in _CRUD),
    ("", "secrets", "get", SECRET_NAMES),
    *(("machinelearning.seldon.io", "seldondeployments", v, None) for v in _CRUD),
    *(("mlops.seldon.io", r, v, None) for r in ("models", "experiments") for v in _CRUD),
    ("", "events", "create", None), ("", "events", "patch", None),
}
LEASE_GRANTS = {
    ("coordination.k8s.io", "leases", "create", None),
    *(("coordination.k8s.io", "leases", v, frozenset({LEASE_NAME_DEFAULT}))
      for v in ("get", "update")),
}
TOKENS_SECRET = "kpigate-collector-tokens"
TOKEN_SCOPES = ("ingest", "labels", "operator")
TOKENS_DIR = "/var/run/kpigate/tokens"


# -- rendering ---------------------------------------------------------------------------------
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not found on PATH: the install is checked with `kubectl "
                    "kustomize` (Debian: apt-get install kubectl)")
    return path


def copy_install(tmp: Path, *, tokens: bool) -> Path:
    """deploy/kubernetes without the user's token files, with fresh ones if ``tokens``."""
    copy = tmp / "kubernetes"
    shutil.copytree(INSTALL, copy, ignore=shutil.ignore_patterns(*TOKEN_SCOPES))
    if tokens:
        for scope in TOKEN_SCOPES:
            (copy / "namespaced" / "tokens" / scope).write_text(secrets.token_hex(32) + "\n")
    return copy


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_template(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return one(objects, "Deployment", name)["spec"]["template"]


def kustomization(overlay: str) -> dict[str, Any]:
    return docs(INSTALL / overlay / "kustomization.yaml")[0]


def render(tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered offline by ``kubectl kustomize`` (with fresh token files)."""
    copy = copy_install(tmp, tokens=True)
    out = {}
    for overlay in OVERLAYS:
        result = run([kubectl(), "kustomize", str(copy / overlay)])
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out
