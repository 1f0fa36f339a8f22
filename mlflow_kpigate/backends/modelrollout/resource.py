"""A whole ModelRollout object: its identity (group, version, kind, plural), metadata
that the operator needs, the spec and the status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.backends.modelrollout import fields as f
from mlflow_kpigate.backends.modelrollout.spec import ModelRolloutSpec
from mlflow_kpigate.backends.modelrollout.status import ModelRolloutStatus
from mlflow_kpigate.core.errors import UsageError

GROUP, VERSION, KIND, PLURAL = "kpigate.io", "v1alpha1", "ModelRollout", "modelrollouts"
API_VERSION = f"{GROUP}/{VERSION}"


@dataclass(frozen=True)
class ModelRollout:
    """A ModelRollout as stored: name, namespace, generation, spec, status (None: none
    written yet)."""

    name: str
    namespace: str
    spec: ModelRolloutSpec
    generation: int = 0
    status: ModelRolloutStatus | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ModelRollout:
        """Read a ModelRollout; :class:`UsageError` naming the first bad field."""
        if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
            raise UsageError(f"apiVersion/kind: expected {API_VERSION} {KIND}, not "
                             f"{obj.get('apiVersion')} {obj.get('kind')}")
        meta = f.section(obj, "metadata", "")
        spec = f.section(obj, "spec", "")
        status = f.mapping(obj, "status", "")
        return cls(f.required(meta, "name", "metadata"),
                   f.string(meta, "namespace", "metadata") or "default",
                   ModelRolloutSpec.from_object(spec),
                   f.integer(meta, "generation", "metadata", default=0),
                   None if status is None else ModelRolloutStatus.from_object(status))

    def to_object(self) -> dict[str, Any]:
        """The JSON form (metadata: name, namespace, and generation once set)."""
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.generation:
            meta["generation"] = self.generation
        out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
                               "spec": self.spec.to_object()}
        if self.status is not None:
            out["status"] = self.status.to_object()
        return out

    @property
    def target_name(self) -> str:
        """The SeldonDeployment's or Experiment's name."""
        return self.spec.backend.target_name(self.name)


def readable_status(obj: Mapping[str, Any]) -> ModelRolloutStatus | None:
    """The status of a ModelRollout object as read, or None when it has none or one this
    version cannot read (written by something else: the operator rewrites it whole)."""
    status = obj.get("status")
    if not status:
        return None
    try:
        return ModelRolloutStatus.from_object(status)
    except UsageError:
        return None
