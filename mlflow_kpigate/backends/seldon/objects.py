"""Operations on the Kubernetes objects of one kind in one namespace, as plain dicts.

:class:`KubeObjects` (from :meth:`~.cluster.Cluster.objects`) reaches SeldonDeployment,
Model and Experiment through ``CustomObjectsApi`` and ConfigMap through ``CoreV1Api`` with
``get``, ``list``, ``create``, ``replace``, ``json_patch``, ``merge_patch``,
``merge_patch_status``, ``patch_guarded`` and ``delete``.

:meth:`KubeObjects.patch_guarded` reads an object, has the caller build an RFC 6902 patch
from what it read (with ``test`` operations), sends it as ``application/json-patch+json``
and, when another writer got there first (409, or 422 from a failed ``test`` on an object
that changed), re-reads and rebuilds. The API server applies a JSON patch atomically, so a
lost race changes nothing; after ``attempts`` losses :class:`ClusterConflict` is raised.

Every API failure becomes a one-line :class:`~.cluster_errors.ClusterError` naming the
verb, the object and what to do (:func:`~.cluster_errors.api_error`).
"""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, cast

from mlflow_kpigate.backends.seldon.cluster_errors import (
    ClusterConflict,
    ClusterInvalid,
    ClusterNotFound,
    ClusterUnreachable,
    ResourceNotServed,
    api_error,
    describe,
    one_line,
)
from mlflow_kpigate.backends.seldon.kinds import CONFIG_MAP, ResourceKind

__all__ = ["JSON_PATCH", "MERGE_PATCH", "KubeObjects"]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
_TIMEOUT = (10, 60)  # connect, read (seconds): a hung API server must not hang kpigate


class Connection(Protocol):
    """What the objects of one kind need from their :class:`~.cluster.Cluster` (a protocol,
    because the cluster is the one that hands out :class:`KubeObjects`)."""

    @property
    def namespace(self) -> str:
        """The namespace the objects live in."""
        ...

    @property
    def url(self) -> str:
        """The API server's URL (for messages)."""
        ...

    @property
    def api_client(self) -> Any:
        """The ``kubernetes`` client's ApiClient."""
        ...


class KubeObjects:
    """Operations on the objects of one kind in one namespace; objects are plain dicts."""

    def __init__(self, cluster: Connection, kind: ResourceKind) -> None:
        from kubernetes import client

        self.cluster = cluster
        self.kind = kind
        self.namespace = cluster.namespace
        self._custom = client.CustomObjectsApi(cluster.api_client)
        self._core = client.CoreV1Api(cluster.api_client)

    def _what(self, name: str | None) -> str:
        return describe(self.kind, self.namespace, name)

    @contextmanager
    def _api(self, verb: str, name: str | None) -> Iterator[None]:
        """Translate client/transport failures into one-line :class:`ClusterError`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            yield
        except ApiException as exc:
            raise api_error(exc, verb, self.kind, self.namespace, name,
                            self.cluster.url) from exc
        except (HTTPError, OSError) as exc:
            raise ClusterUnreachable(
                f"cannot {verb} {self._what(name)}: the Kubernetes API at "
                f"{self.cluster.url} is unreachable ({one_line(exc)[:200]}); check the "
                "kubeconfig's server address and that the cluster is running") from exc

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
                out: Any = self._custom.list_namespaced_custom_object(
                    self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                    label_selector=label_selector or None, _request_timeout=_TIMEOUT)
                return builtins.list(out.get("items", []))
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
            # The client serialises plain dicts as well as its V1ConfigMap models.
            return self._to_dict(self._core.create_namespaced_config_map(
                self.namespace, cast(Any, body), _request_timeout=_TIMEOUT))

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
                name, self.namespace, cast(Any, body), _request_timeout=_TIMEOUT))

    def json_patch(self, name: str, ops: builtins.list[dict[str, Any]]) -> dict[str, Any]:
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

    def merge_patch_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch ``{"status": status}`` through the status subresource (custom kinds
        with ``subresources.status``: a write there never changes the spec, nor the
        object's generation)."""
        if not self.kind.group:
            raise ValueError(f"{self.kind.kind} has no status subresource here")
        with self._api("patch", f"{name}/status"):
            return self._to_dict(self._custom.patch_namespaced_custom_object_status(
                self.kind.group, self.kind.version, self.namespace, self.kind.plural,
                name, {"status": dict(status)}, _content_type=MERGE_PATCH,
                _request_timeout=_TIMEOUT))

    def patch_guarded(self, name: str,
                      build_ops: Callable[[dict[str, Any]], builtins.list[dict[str, Any]]],
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
            ops = builtins.list(build_ops(current))
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
