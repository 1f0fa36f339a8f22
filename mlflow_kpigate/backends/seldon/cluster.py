"""Kubernetes operations kpigate needs: its objects, guarded patches, cleanup, readiness.

* :func:`api_client_from` builds a ``kubernetes`` ApiClient from a kubeconfig (file and
  context) or, inside a pod, from the service account.
* :class:`Cluster` is one namespace of one cluster; :meth:`Cluster.objects` gives a
  :class:`KubeObjects` for one kind (SeldonDeployment, Model, Experiment — through
  ``CustomObjectsApi`` — or ConfigMap — through ``CoreV1Api``) with ``get``, ``list``,
  ``create``, ``replace``, ``patch_guarded`` and ``delete``, all returning plain dicts.
* :meth:`KubeObjects.patch_guarded` reads an object, has the caller build an RFC 6902 patch
  from what it read (with ``test`` operations), sends it as ``application/json-patch+json``
  and, when another writer got there first (409, or 422 from a failed ``test`` on an object
  that changed), re-reads and rebuilds. The API server applies a JSON patch atomically, so
  a lost race changes nothing; after ``attempts`` losses :class:`ClusterConflict` is raised.
* :meth:`Cluster.delete_managed` deletes every object labelled as kpigate's for a rollout.
* :func:`readiness` / :func:`readiness_v2` (pure) say whether Seldon has rolled out what
  kpigate applied.

Every API failure becomes a one-line :class:`ClusterError` naming the verb, the object and
what to do (``kubectl auth can-i`` for 403, the API URL when it cannot be reached).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.state import Readiness

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kpigate"
ROLLOUT_LABEL = "kpigate.io/rollout"
ROLE_LABEL = "kpigate.io/role"
#: Hash of the spec kpigate last applied (written by the manifests/patches module).
SPEC_HASH_ANNOTATION = "kpigate.io/managed-spec"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
_TIMEOUT = (10, 60)  # connect, read (seconds): a hung API server must not hang kpigate
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


# -- errors ---------------------------------------------------------------------------------
class ClusterError(KpigateError):
    """The Kubernetes API refused or failed a request."""


class ClusterUnreachable(ClusterError):
    """The API server could not be reached (wrong address, cluster down, network)."""


class ClusterAccessDenied(ClusterError):
    """401/403: the credentials are rejected, or the Role lacks a verb."""

    exit_code = 2


class ClusterNotFound(ClusterError):
    """The object (or its kind: a CRD that is not installed) does not exist."""


class ResourceNotServed(ClusterNotFound):
    """The API server does not serve the kind at all (its CRD is not installed)."""


class ObjectExists(ClusterError):
    """``create`` found an object of that name already."""


class ClusterConflict(ClusterError):
    """Other writers kept changing the object; nothing was changed by this request."""


class ClusterInvalid(ClusterError):
    """422: the API server rejected the object or patch (schema, admission, a ``test``)."""


class KubeConfigError(UsageError):
    """No usable kubeconfig / in-cluster configuration."""


# -- kinds ----------------------------------------------------------------------------------
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
#: Kinds kpigate creates, in the order :meth:`Cluster.delete_managed` deletes them (routing
#: objects before the models they route to; ConfigMaps last, many go with their owner).
MANAGED_KINDS = (SELDON_EXPERIMENT, SELDON_MODEL, SELDON_DEPLOYMENT, CONFIG_MAP)


def managed_labels(rollout: str, role: str | None = None) -> dict[str, str]:
    """The labels on every object kpigate creates for ``rollout`` (and ``role``)."""
    labels = {MANAGED_BY_LABEL: MANAGED_BY, ROLLOUT_LABEL: rollout}
    if role is not None:
        labels[ROLE_LABEL] = role
    return labels


def managed_selector(rollout: str) -> str:
    """Label selector of kpigate's objects for ``rollout``."""
    if not _DNS_LABEL.fullmatch(rollout):
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


# -- client ---------------------------------------------------------------------------------
def api_client_from(kubeconfig: str | os.PathLike[str] | None = None,
                    context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``.

    In-cluster (the pod's service account) when ``KUBERNETES_SERVICE_HOST`` is set and no
    ``kubeconfig`` is given; otherwise ``kubeconfig`` (default ``$KUBECONFIG`` or
    ``~/.kube/config``) with ``context`` (default: its current context).
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    in_cluster = kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None,
                                    context=context, client_configuration=configuration,
                                    persist_config=False)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        if in_cluster:
            where = "the in-cluster configuration (the pod's service account)"
        else:
            where = f"kubeconfig {kubeconfig}" if kubeconfig else "the default kubeconfig"
        ctx = f" (context {context!r})" if context and not in_cluster else ""
        raise KubeConfigError(
            f"-C kubeconfig: cannot load {where}{ctx}: {_one_line(exc)}; give -C "
            "kubeconfig=PATH (and -C kube_context=NAME) or run inside the cluster") from exc
    return client.ApiClient(configuration=configuration)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _status_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, or its text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        data = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        return _one_line(body)[:300]
    if isinstance(data, dict):
        return _one_line(data.get("message") or data.get("reason") or "")
    return _one_line(body)[:300]


def _status_field(body: Any, key: str) -> Any:
    """A field of a Kubernetes Status body (None if the body is not one)."""
    try:
        data = json.loads(body) if isinstance(body, (str, bytes)) else body
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None


# -- one kind in one namespace --------------------------------------------------------------
class KubeObjects:
    """Operations on the objects of one kind in one namespace; objects are plain dicts."""

    def __init__(self, cluster: Cluster, kind: ResourceKind) -> None:
        from kubernetes import client

        self.cluster = cluster
        self.kind = kind
        self.namespace = cluster.namespace
        self._custom = client.CustomObjectsApi(cluster.api_client)
        self._core = client.CoreV1Api(cluster.api_client)

    def _what(self, name: str | None) -> str:
        target = f"{self.kind.resource} {name!r}" if name else self.kind.resource
        return f"{target} in namespace {self.namespace!r}"

    @contextmanager
    def _api(self, verb: str, name: str | None) -> Iterator[None]:
        """Translate client/transport failures into one-line :class:`ClusterError`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as exc:
            raise self._translate(exc, verb, name) from exc
        except (HTTPError, OSError) as exc:
            raise ClusterUnreachable(
                f"cannot {verb} {self._what(name)}: the Kubernetes API at "
                f"{self.cluster.url} is unreachable ({_one_line(exc)[:200]}); check the "
                "kubeconfig's server address and that the cluster is running") from exc

    def _translate(self, exc: Any, verb: str, name: str | None) -> ClusterError:
        status = int(exc.status or 0)
        message = _status_message(exc.body) or _one_line(exc.reason or "")
        what = self._what(name)
        if status == 401:
            return ClusterAccessDenied(
                f"cannot {verb} {what}: the API server at {self.cluster.url} rejected the "
                "credentials (401 Unauthorized); refresh the kubeconfig's credentials or the "
                "pod's service-account token")
        if status == 403:
            return ClusterAccessDenied(
                f"cannot {verb} {what}: forbidden (403: {message}); grant the verb "
                f"{verb!r} on {self.kind.resource} to kpigate's Role in namespace "
                f"{self.namespace!r} (check: kubectl auth can-i {verb} {self.kind.resource} "
                f"-n {self.namespace})")
        if status == 404:
            if name and (_status_field(exc.body, "details") or {}).get("name") == name:
                return ClusterNotFound(f"cannot {verb} {what}: it does not exist")
            return ResourceNotServed(
                f"cannot {verb} {what}: the API server does not serve "
                f"{self.kind.resource}/{self.kind.version}; install the CRD (is Seldon Core "
                "installed in this cluster?)")
        if status == 409:
            if _status_field(exc.body, "reason") == "AlreadyExists":
                return ObjectExists(f"cannot create {what}: it already exists; delete it "
                                    "or choose another deployment name")
            return ClusterConflict(f"cannot {verb} {what}: it was modified concurrently "
                                   f"({message}); re-read it and retry")
        if status == 422:
            return ClusterInvalid(f"cannot {verb} {what}: the API server rejected it "
                                  f"(422: {message})")
        return ClusterError(f"cannot {verb} {what}: the API server answered {status} "
                            f"{_one_line(exc.reason or '')}: {message}")

    def _to_dict(self, obj: Any) -> dict[str, Any]:
        if isinstance(obj, dict):
            return obj
        data = self.cluster.api_client.sanitize_for_serialization(obj)
        data.setdefault("apiVersion", self.kind.api_version)
        data.setdefault("kind", self.kind.kind)
        return data

    def _core_kind(self) -> None:
        if self.kind != CONFIG_MAP:
            raise ValueError(f"core kind {self.kind.kind} is not supported")

    # -- reads ---------------------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any] | None:
        """The object ``name``, or None if it does not exist."""
        try:
            with self._api("get", name):
                if self.kind.group:
                    obj = self._custom.get_namespaced_custom_object(
                        self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                        name, _request_timeout=_TIMEOUT)
                else:
                    self._core_kind()
                    obj = self._core.read_namespaced_config_map(name, self.namespace,
                                                                _request_timeout=_TIMEOUT)
        except ResourceNotServed:
            raise
        except ClusterNotFound:
            return None
        return self._to_dict(obj)

    def list(self, label_selector: str | Mapping[str, str] | None = None
             ) -> list[dict[str, Any]]:
        """Objects matching an equality ``label_selector`` (a string or a label mapping)."""
        if isinstance(label_selector, Mapping):
            label_selector = ",".join(f"{k}={v}" for k, v in label_selector.items())
        with self._api("list", None):
            if self.kind.group:
                out = self._custom.list_namespaced_custom_object(
                    self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                    label_selector=label_selector or None, _request_timeout=_TIMEOUT)
                return list(out.get("items", []))
            self._core_kind()
            lst = self._core.list_namespaced_config_map(
                self.namespace, label_selector=label_selector or None,
                _request_timeout=_TIMEOUT)
            return [self._to_dict(item) for item in lst.items or []]

    # -- writes --------------------------------------------------------------------------------
    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``manifest``; :class:`ObjectExists` if the name is taken."""
        body = dict(manifest)
        name = (body.get("metadata") or {}).get("name")
        with self._api("create", name):
            if self.kind.group:
                return self._to_dict(self._custom.create_namespaced_custom_object(
                    self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                    body, _request_timeout=_TIMEOUT))
            self._core_kind()
            return self._to_dict(self._core.create_namespaced_config_map(
                self.namespace, body, _request_timeout=_TIMEOUT))

    def replace(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the object with ``manifest``, which must carry the
        ``metadata.resourceVersion`` it was read at; :class:`ClusterConflict` if the object
        changed since."""
        body = dict(manifest)
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not name or not meta.get("resourceVersion"):
            raise ValueError("replace needs metadata.name and metadata.resourceVersion (the "
                             "version the change was computed from)")
        with self._api("update", name):
            if self.kind.group:
                return self._to_dict(self._custom.replace_namespaced_custom_object(
                    self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                    name, body, _request_timeout=_TIMEOUT))
            self._core_kind()
            return self._to_dict(self._core.replace_namespaced_config_map(
                name, self.namespace, body, _request_timeout=_TIMEOUT))

    def json_patch(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """Send one RFC 6902 patch as ``application/json-patch+json`` (no retry)."""
        with self._api("patch", name):
            if self.kind.group:
                # The client defaults patches to merge-patch whatever the body; say it.
                return self._to_dict(self._custom.patch_namespaced_custom_object(
                    self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                    name, ops, _content_type=JSON_PATCH, _request_timeout=_TIMEOUT))
            self._core_kind()
            return self._to_dict(self._core.patch_namespaced_config_map(
                name, self.namespace, ops, _content_type=JSON_PATCH,
                _request_timeout=_TIMEOUT))

    def merge_patch(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Send an RFC 7386 merge patch (lists in it replace the object's lists whole)."""
        with self._api("patch", name):
            if self.kind.group:
                return self._to_dict(self._custom.patch_namespaced_custom_object(
                    self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                    name, dict(patch), _content_type=MERGE_PATCH, _request_timeout=_TIMEOUT))
            self._core_kind()
            return self._to_dict(self._core.patch_namespaced_config_map(
                name, self.namespace, dict(patch), _content_type=MERGE_PATCH,
                _request_timeout=_TIMEOUT))

    def patch_guarded(self, name: str,
                      build_ops: Callable[[dict[str, Any]], list[dict[str, Any]]],
                      attempts: int = 5, backoff: float = 0.05) -> dict[str, Any]:
        """Read ``name``, patch it with ``build_ops(current)``, retry on lost races.

        ``build_ops`` returns RFC 6902 operations computed from the object it is given,
        including ``test`` operations on what they rely on (names at list indexes);
        a ``test`` of ``/metadata/resourceVersion`` is prepended when the builder has
        none, so a patch never applies to an object other than the one it was built
        from. An empty list means nothing to change (the current object is returned).

        A 409, or a 422 while the object has changed since it was read (a failed
        ``test``), re-reads and rebuilds, up to ``attempts`` times with a short jittered
        backoff; then :class:`ClusterConflict`. A 422 on an unchanged object is the
        builder's mistake or an invalid result: :class:`ClusterInvalid` at once. Since
        the server applies a patch atomically, a failure never leaves a partial change.
        """
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        for attempt in range(attempts):
            current = self.get(name)
            if current is None:
                raise ClusterNotFound(f"cannot patch {self._what(name)}: it does not exist")
            ops = list(build_ops(current))
            if not ops:
                return current
            rv = (current.get("metadata") or {}).get("resourceVersion")
            if rv and not any(op.get("op") == "test" and op.get("path") ==
                              "/metadata/resourceVersion" for op in ops):
                ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
            try:
                return self.json_patch(name, ops)
            except ClusterConflict:
                pass
            except ClusterInvalid as exc:
                now = self.get(name)
                now_rv = (now or {}).get("metadata", {}).get("resourceVersion")
                if now is not None and now_rv == rv:
                    raise ClusterInvalid(
                        f"{exc} — the patch does not apply to the object it was built from "
                        f"(resourceVersion {rv} unchanged): a test op or path in it is wrong "
                        "or the result is invalid") from exc
            if attempt + 1 < attempts:
                time.sleep(backoff * (2 ** attempt) * (0.5 + random.random()))
        raise ClusterConflict(
            f"cannot patch {self._what(name)}: it changed under {attempts} consecutive "
            "attempts (other writers); nothing was changed — retry later")

    def delete(self, name: str, propagation: str = "Background") -> bool:
        """Delete ``name`` (dependents per ``propagation``); False if it was already gone."""
        try:
            with self._api("delete", name):
                if self.kind.group:
                    self._custom.delete_namespaced_custom_object(
                        self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                        name, propagation_policy=propagation, _request_timeout=_TIMEOUT)
                else:
                    self._core_kind()
                    self._core.delete_namespaced_config_map(
                        name, self.namespace, propagation_policy=propagation,
                        _request_timeout=_TIMEOUT)
        except ResourceNotServed:
            raise
        except ClusterNotFound:
            return False
        return True


# -- one namespace ----------------------------------------------------------------------------
class Cluster:
    """A namespace of a cluster, reached through one ``ApiClient``."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        if not _DNS_LABEL.fullmatch(namespace):
            raise UsageError(f"namespace {namespace!r}: must be a DNS-1123 label (lower-case "
                             "letters, digits and '-'); fix the target kpigate:/seldon/NAMESPACE")
        self.api_client = api_client
        self.namespace = namespace

    @classmethod
    def connect(cls, namespace: str, kubeconfig: str | os.PathLike[str] | Path | None = None,
                context: str | None = None) -> Cluster:
        """A :class:`Cluster` from :func:`api_client_from` settings."""
        return cls(api_client_from(kubeconfig, context), namespace)

    @property
    def url(self) -> str:
        """The API server's URL."""
        return str(self.api_client.configuration.host)

    def objects(self, kind: ResourceKind) -> KubeObjects:
        """Operations on ``kind`` in this namespace."""
        return KubeObjects(self, kind)

    def delete_managed(self, rollout: str,
                       kinds: tuple[ResourceKind, ...] = MANAGED_KINDS) -> list[str]:
        """Delete every object of ``kinds`` labelled as kpigate's for ``rollout``, and
        nothing else; returns ``kind/name`` of each deleted. Kinds whose CRD is not
        installed are skipped (there is nothing of them to delete)."""
        selector = managed_selector(rollout)
        deleted: list[str] = []
        for kind in kinds:
            api = self.objects(kind)
            try:
                found = api.list(selector)
            except ResourceNotServed:
                continue
            for obj in found:
                labels = (obj.get("metadata") or {}).get("labels") or {}
                if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or \
                        labels.get(ROLLOUT_LABEL) != rollout:
                    continue  # never trust a selector alone with deletes
                name = obj["metadata"]["name"]
                if api.delete(name):
                    deleted.append(f"{kind.kind}/{name}")
        return deleted

    def close(self) -> None:
        """Release the client's connection pool."""
        self.api_client.close()


# -- readiness (pure) -------------------------------------------------------------------------
def _predictor_deployments(sdep: Mapping[str, Any], predictor: Mapping[str, Any],
                           statuses: Mapping[str, Any]) -> list[str]:
    """Names in ``status.deploymentStatus`` that belong to ``predictor``.

    Seldon names a predictor's Deployments ``{sdep}-{predictor}-{i}-{containers}`` (or
    ``{sdep}-{predictor}-{i}-{componentSpec metadata.name}``), hashed to ``seldon-<md5>``
    when longer than 63 characters, and its separate engine ``{sdep}-{predictor}-svc-orch``.
    Both the exact names and the ``{sdep}-{predictor}-`` prefix are matched.
    """
    import hashlib

    sdep_name = (sdep.get("metadata") or {}).get("name", "")
    pname = predictor.get("name", "")
    expected: set[str] = set()
    for i, comp in enumerate(predictor.get("componentSpecs") or []):
        comp = comp or {}
        base = f"{sdep_name}-{pname}-{i}-"
        meta_name = (comp.get("metadata") or {}).get("name")
        containers = ((comp.get("spec") or {}).get("containers")) or []
        full = base + (meta_name or "-".join(c.get("name", "") for c in containers))
        if len(full) > 63:
            digest = hashlib.md5(full.encode(), usedforsecurity=False).hexdigest()
            expected.update({f"seldon-{digest}", f"{sdep_name}-{digest}"})
        else:
            expected.add(full)
    prefix = f"{sdep_name}-{pname}-"
    return sorted(d for d in statuses if d in expected or d.startswith(prefix))


def readiness(sdep: Mapping[str, Any], expected_spec_hash: str | None) -> Readiness:
    """Readiness of a Seldon v1 ``SeldonDeployment`` as read from the cluster.

    Ready only when ``status.state`` is ``Available``, every predictor of the spec has
    Deployments in ``status.deploymentStatus`` each with ``availableReplicas >= replicas
    > 0``, and the ``kpigate.io/managed-spec`` annotation equals ``expected_spec_hash``
    (when given: the object still carries the spec kpigate applied — Seldon v1 does not
    report ``observedGeneration``; when it does, it must reach ``metadata.generation``).
    ``failed`` when ``status.state`` is ``Failed``.
    """
    meta = sdep.get("metadata") or {}
    name = meta.get("name", "?")
    status = sdep.get("status") or {}
    state = status.get("state")
    if state == "Failed":
        why = _one_line(status.get("description") or "no description")
        return Readiness(False, f"SeldonDeployment {name} failed: {why}", failed=True)
    applied = (meta.get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if expected_spec_hash is not None and applied != expected_spec_hash:
        return Readiness(False, f"SeldonDeployment {name} carries spec {applied or 'none'} "
                                f"(annotation {SPEC_HASH_ANNOTATION}), not the applied "
                                f"{expected_spec_hash}")
    observed, generation = status.get("observedGeneration"), meta.get("generation")
    if observed is not None and generation is not None and int(observed) < int(generation):
        return Readiness(False, f"SeldonDeployment {name}: Seldon has seen generation "
                                f"{observed}, not yet {generation}")
    if state != "Available":
        return Readiness(False, f"SeldonDeployment {name} is {state or 'not reported yet'}")
    statuses = status.get("deploymentStatus") or {}
    predictors = (sdep.get("spec") or {}).get("predictors") or []
    if not predictors:
        return Readiness(False, f"SeldonDeployment {name} has no predictors")
    for pred in predictors:
        deps = _predictor_deployments(sdep, pred, statuses)
        if not deps:
            return Readiness(False, f"SeldonDeployment {name}: no Deployment status yet for "
                                    f"predictor {pred.get('name')!r}")
        for dep in deps:
            info = statuses.get(dep) or {}
            want = int(info.get("replicas") or 0)
            have = int(info.get("availableReplicas") or 0)
            if not (have >= want > 0):
                return Readiness(False, f"SeldonDeployment {name}: predictor "
                                        f"{pred.get('name')!r} Deployment {dep} has {have}/"
                                        f"{want} replicas available")
    return Readiness(True, f"SeldonDeployment {name} is Available with every predictor's "
                           f"replicas available ({len(predictors)} predictors)")


def readiness_v2(obj: Mapping[str, Any]) -> Readiness:
    """Readiness of a Seldon v2 ``Model`` or ``Experiment``: its ``Ready`` condition is
    ``"True"`` and, when reported, ``status.observedGeneration`` reached
    ``metadata.generation``. ``failed`` when ``Ready`` is ``"False"`` with a reason or
    message naming a failure (Seldon's ``ModelFailed``, ``ScheduleFailed``, …)."""
    meta = obj.get("metadata") or {}
    what = f"{obj.get('kind', 'object')} {meta.get('name', '?')}"
    status = obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or []
                  if isinstance(c, dict) and c.get("type") == "Ready"), None)
    observed, generation = status.get("observedGeneration"), meta.get("generation")
    if ready is None:
        return Readiness(False, f"{what}: no Ready condition reported yet")
    detail = _one_line(" ".join(str(ready.get(k) or "") for k in ("reason", "message")))
    if ready.get("status") == "True":
        if observed is not None and generation is not None and int(observed) < int(generation):
            return Readiness(False, f"{what}: Seldon has seen generation {observed}, not yet "
                                    f"{generation}")
        return Readiness(True, f"{what} is Ready")
    failed = ready.get("status") == "False" and "fail" in detail.lower()
    return Readiness(False, f"{what} is not Ready ({detail or ready.get('status')})",
                     failed=failed)
