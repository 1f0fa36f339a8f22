"""The Kubernetes resources kpigate manages, and how it marks them as its own.

* :class:`ResourceKind` names a REST resource; :data:`SELDON_DEPLOYMENT` (v1),
  :data:`SELDON_MODEL` and :data:`SELDON_EXPERIMENT` (v2) and :data:`CONFIG_MAP` are the
  kinds kpigate creates (:data:`MANAGED_KINDS`).
* Every object kpigate creates carries :func:`managed_labels`, so
  :meth:`~.cluster.Cluster.delete_managed` can find exactly those with
  :func:`managed_selector`; :func:`owner_reference` lets an object go with its owner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.core.errors import UsageError

__all__ = [
    "CONFIG_MAP",
    "DNS_LABEL",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "MANAGED_KINDS",
    "MODEL_ROLLOUT",
    "ROLE_LABEL",
    "ROLLOUT_LABEL",
    "SELDON_DEPLOYMENT",
    "SELDON_EXPERIMENT",
    "SELDON_MODEL",
    "SPEC_HASH_ANNOTATION",
    "ResourceKind",
    "managed_labels",
    "managed_selector",
    "owner_reference",
]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kpigate"
ROLLOUT_LABEL = "kpigate.io/rollout"
ROLE_LABEL = "kpigate.io/role"
#: Hash of the spec kpigate last applied (written by the manifests/patches module).
SPEC_HASH_ANNOTATION = "kpigate.io/managed-spec"
#: An RFC 1123 label: what namespaces and kpigate's rollout names must be.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class ResourceKind:
    """A REST resource: API group (``""`` for core), version, plural and kind."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        """``group/version`` (``v1`` for core)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """``plural.group`` as ``kubectl`` and RBAC rules name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


SELDON_DEPLOYMENT = ResourceKind("machinelearning.seldon.io", "v1", "seldondeployments",
                                 "SeldonDeployment")
SELDON_MODEL = ResourceKind("mlops.seldon.io", "v1alpha1", "models", "Model")
SELDON_EXPERIMENT = ResourceKind("mlops.seldon.io", "v1alpha1", "experiments", "Experiment")
CONFIG_MAP = ResourceKind("", "v1", "configmaps", "ConfigMap")
#: kpigate's own resource (deploy/kubernetes/base/crd): written by users and ``create``,
#: reconciled by ``kpigate operator``; never in :data:`MANAGED_KINDS`.
MODEL_ROLLOUT = ResourceKind("kpigate.io", "v1alpha1", "modelrollouts", "ModelRollout")
#: Kinds kpigate creates, in the order :meth:`~.cluster.Cluster.delete_managed` deletes them
#: (routing objects before the models they route to; ConfigMaps last, many go with their
#: owner).
MANAGED_KINDS = (SELDON_EXPERIMENT, SELDON_MODEL, SELDON_DEPLOYMENT, CONFIG_MAP)


def managed_labels(rollout: str, role: str | None = None) -> dict[str, str]:
    """The labels on every object kpigate creates for ``rollout`` (and ``role``)."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY, ROLLOUT_LABEL: rollout}
    if role is not None:
        labels[ROLE_LABEL] = role
    return labels


def managed_selector(rollout: str) -> str:
    """Label selector of kpigate's objects for ``rollout``."""
    if not DNS_LABEL.fullmatch(rollout):
        raise UsageError(f"rollout name {rollout!r}: must be a DNS-1123 label (lower-case "
                         "letters, digits and '-', at most 63); use the deployment's name")
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{ROLLOUT_LABEL}={rollout}"


def owner_reference(obj: Mapping[str, Any], *, controller: bool = False) -> dict[str, Any]:
    """An ownerReference to ``obj`` (as read from the cluster: it needs its uid)."""
    meta = obj.get("metadata") or {}
    if not meta.get("uid"):
        raise ValueError(f"{obj.get('kind')} {meta.get('name')!r} has no uid; read it from "
                         "the cluster before making it an owner")
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": controller, "blockOwnerDeletion": False}
