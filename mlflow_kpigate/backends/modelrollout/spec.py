"""The ModelRollout's ``spec``: what to roll out, where, under which policy, and the
operator's requests, as frozen values read from and written to the resource's JSON.

:meth:`ModelRolloutSpec.from_object` checks what the CRD's schema checks (required fields,
enums, patterns) and the one rule the schema states as a CEL rule (``backend.models`` only
for an Experiment), so an object that reaches the operator without the API server's
validation — a file, the fake API server of the tests — is held to the same rules. The
defaults the CRD declares are filled in, and :meth:`~ModelRolloutSpec.to_object` writes
them out, as the API server stores them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_kpigate.backends.modelrollout import fields as f
from mlflow_kpigate.core.errors import UsageError

# The same patterns as the CRD (tests/test_model_rollout_crd.py compares them).
VERSION = re.compile(r"[1-9][0-9]*")
ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
HTTP_URL = re.compile(r"https?://\S+")
TRACKING_URI = re.compile(r"https?://\S+|databricks(://\S*)?")
REQUEST_ID = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.:]*[A-Za-z0-9])?")

#: spec.backend.kind: Seldon Core v1 and v2.
SELDON_DEPLOYMENT, EXPERIMENT = "SeldonDeployment", "Experiment"
BACKEND_KINDS = (SELDON_DEPLOYMENT, EXPERIMENT)
#: spec.actionRequest.action; pause and resume are spec.paused, a state rather than an event.
REQUEST_ACTIONS = ("promote", "rollback")
DEFAULT_PROMOTE_ALIAS = "champion"
DEFAULT_POLICY_KEY = "policy.yaml"
MAX_TARGET_NAME = 53  # NAME-candidate must stay a 63-character label


@dataclass(frozen=True)
class VersionRef:
    """A model version by number or by alias (exactly one is set)."""

    version: str | None = None
    alias: str | None = None

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> VersionRef:
        """Read ``{version: "7"}`` or ``{alias: "challenger"}``."""
        f.only_one(data, ("version", "alias"), path)
        return cls(f.string(data, "version", path, pattern=VERSION),
                   f.string(data, "alias", path, pattern=ALIAS))

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        return {"version": self.version} if self.version else {"alias": self.alias}

    def model_uri(self, model_name: str) -> str:
        """``models:/NAME/7`` or ``models:/NAME@alias``, as kpigate's ``-m`` takes it."""
        if self.version:
            return f"models:/{model_name}/{self.version}"
        return f"models:/{model_name}@{self.alias}"


@dataclass(frozen=True)
class ModelSpec:
    """The registered model, the candidate and the baseline (None: the promote alias's)."""

    name: str
    candidate: VersionRef
    baseline: VersionRef | None = None
    promote_alias: str = DEFAULT_PROMOTE_ALIAS

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> ModelSpec:
        """Read ``spec.model``."""
        name = f.required(data, "name", path)
        candidate = f.section(data, "candidate", path)
        baseline = f.mapping(data, "baseline", path)
        return cls(name, VersionRef.from_object(candidate, f.at(path, "candidate")),
                   None if baseline is None
                   else VersionRef.from_object(baseline, f.at(path, "baseline")),
                   f.string(data, "promoteAlias", path, pattern=ALIAS,
                            default=DEFAULT_PROMOTE_ALIAS) or DEFAULT_PROMOTE_ALIAS)

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"name": self.name, "candidate": self.candidate.to_object()}
        if self.baseline is not None:
            out["baseline"] = self.baseline.to_object()
        out["promoteAlias"] = self.promote_alias
        return out


@dataclass(frozen=True)
class PolicySource:
    """The policy inline (its document) or in a ConfigMap of the rollout's namespace."""

    inline: Mapping[str, Any] | None = None
    config_map: str | None = None
    key: str = DEFAULT_POLICY_KEY

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> PolicySource:
        """Read ``spec.policy``."""
        if f.only_one(data, ("inline", "configMapRef"), path) == "inline":
            inline = f.section(data, "inline", path)
            return cls(inline=dict(inline))
        ref = f.section(data, "configMapRef", path)
        ref_path = f.at(path, "configMapRef")
        return cls(config_map=f.required(ref, "name", ref_path,
                                       pattern=OBJECT_NAME),
                   key=f.string(ref, "key", ref_path, pattern=CONFIG_KEY,
                                default=DEFAULT_POLICY_KEY) or DEFAULT_POLICY_KEY)

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        if self.inline is not None:
            return {"inline": dict(self.inline)}
        return {"configMapRef": {"name": self.config_map, "key": self.key}}


@dataclass(frozen=True)
class BackendSpec:
    """The Seldon objects kpigate manages: a SeldonDeployment (v1) or an Experiment (v2)."""

    kind: str
    name: str | None = None  # None: the ModelRollout's name
    baseline_model: str | None = None  # v2 only; None: NAME-baseline
    candidate_model: str | None = None  # v2 only; None: NAME-candidate
    replicas: int = 1
    env_secret: str | None = None

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> BackendSpec:
        """Read ``spec.backend``."""
        kind = f.required(data, "kind", path, choices=BACKEND_KINDS)
        name = f.string(data, "name", path, pattern=DNS_LABEL)
        if name is not None and len(name) > MAX_TARGET_NAME:
            raise UsageError(f"{f.at(path, 'name')}: at most {MAX_TARGET_NAME} characters")
        models = f.mapping(data, "models", path)
        if models is not None and kind != EXPERIMENT:
            # The CRD states this as a CEL rule; the fake API server does not run CEL.
            raise UsageError(f"{f.at(path, 'models')}: only for kind {EXPERIMENT} (Seldon v2)")
        models_path = f.at(path, "models")
        secret = f.mapping(data, "envSecretRef", path)
        return cls(kind, name,
                   f.string(models or {}, "baseline", models_path, pattern=DNS_LABEL),
                   f.string(models or {}, "candidate", models_path, pattern=DNS_LABEL),
                   f.integer(data, "replicas", path, default=1, minimum=1),
                   _secret_name(secret, f.at(path, "envSecretRef")))

    @property
    def seldon_version(self) -> int:
        """1 for a SeldonDeployment, 2 for an Experiment (kpigate's ``-C seldon_version``)."""
        return 1 if self.kind == SELDON_DEPLOYMENT else 2

    def target_name(self, rollout_name: str) -> str:
        """The SeldonDeployment's or Experiment's name."""
        return self.name or rollout_name

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.name:
            out["name"] = self.name
        models = {k: v for k, v in (("baseline", self.baseline_model),
                                    ("candidate", self.candidate_model)) if v}
        if models:
            out["models"] = models
        out["replicas"] = self.replicas
        if self.env_secret:
            out["envSecretRef"] = {"name": self.env_secret}
        return out


@dataclass(frozen=True)
class ActionRequest:
    """A one-shot promote or rollback, carried out once per ``id``."""

    id: str
    action: str
    reason: str = ""

    @classmethod
    def from_object(cls, data: Mapping[str, Any], path: str) -> ActionRequest:
        """Read ``spec.actionRequest``."""
        rid = f.required(data, "id", path, pattern=REQUEST_ID)
        action = f.required(data, "action", path, choices=REQUEST_ACTIONS)
        return cls(rid, action, f.string(data, "reason", path) or "")

    def to_object(self) -> dict[str, Any]:
        """The JSON form."""
        out = {"id": self.id, "action": self.action}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class ModelRolloutSpec:
    """The whole ``spec`` of a ModelRollout."""

    model: ModelSpec
    policy: PolicySource
    backend: BackendSpec
    tracking_uri: str
    collector_url: str
    tracking_secret: str | None = None
    collector_token_secret: str | None = None
    prometheus_url: str | None = None
    paused: bool = False
    action_request: ActionRequest | None = field(default=None)

    @classmethod
    def from_object(cls, spec: Mapping[str, Any], path: str = "spec") -> ModelRolloutSpec:
        """Read a ``spec`` mapping; :class:`UsageError` naming the first bad field."""
        parts = {key: f.section(spec, key, path)
                 for key in ("model", "policy", "backend", "tracking", "collector")}
        tracking, collector = parts["tracking"], parts["collector"]
        request = f.mapping(spec, "actionRequest", path)
        return cls(
            model=ModelSpec.from_object(parts["model"], f.at(path, "model")),
            policy=PolicySource.from_object(parts["policy"], f.at(path, "policy")),
            backend=BackendSpec.from_object(parts["backend"], f.at(path, "backend")),
            tracking_uri=f.required(tracking, "uri", f.at(path, "tracking"),
                                    pattern=TRACKING_URI),
            collector_url=f.required(collector, "url", f.at(path, "collector"),
                                     pattern=HTTP_URL),
            tracking_secret=_secret_name(f.mapping(tracking, "credentialsSecretRef",
                                                   f.at(path, "tracking")),
                                         f.at(path, "tracking.credentialsSecretRef")),
            collector_token_secret=_secret_name(f.mapping(collector, "tokenSecretRef",
                                                             f.at(path, "collector")),
                                                f.at(path, "collector.tokenSecretRef")),
            prometheus_url=f.string(spec, "prometheusUrl", path, pattern=HTTP_URL),
            paused=f.boolean(spec, "paused", path),
            action_request=None if request is None
            else ActionRequest.from_object(request, f.at(path, "actionRequest")),
        )

    def to_object(self) -> dict[str, Any]:
        """The JSON form, defaults written out."""
        tracking: dict[str, Any] = {"uri": self.tracking_uri}
        if self.tracking_secret:
            tracking["credentialsSecretRef"] = {"name": self.tracking_secret}
        collector: dict[str, Any] = {"url": self.collector_url}
        if self.collector_token_secret:
            collector["tokenSecretRef"] = {"name": self.collector_token_secret}
        out: dict[str, Any] = {"model": self.model.to_object(),
                               "policy": self.policy.to_object(),
                               "backend": self.backend.to_object(),
                               "tracking": tracking, "collector": collector}
        if self.prometheus_url:
            out["prometheusUrl"] = self.prometheus_url
        out["paused"] = self.paused
        if self.action_request is not None:
            out["actionRequest"] = self.action_request.to_object()
        return out


def _secret_name(ref: Mapping[str, Any] | None, path: str) -> str | None:
    if ref is None:
        return None
    return f.required(ref, "name", path, pattern=OBJECT_NAME)
