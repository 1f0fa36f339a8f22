"""The errors of talking to a Kubernetes cluster, one class per thing the user must do.

Every API failure becomes a one-line :class:`ClusterError` naming the verb, the object and
what to do (``kubectl auth can-i`` for 403, the API URL when it cannot be reached):
:func:`api_error` translates the client's ``ApiException`` by its status and Status body.
:func:`one_line` keeps the texts they quote (the API server's, Seldon's status
descriptions) on one line.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow_kpigate.backends.seldon.kinds import ResourceKind
from mlflow_kpigate.core.errors import KpigateError, UsageError

__all__ = [
    "ClusterAccessDenied",
    "ClusterConflict",
    "ClusterError",
    "ClusterInvalid",
    "ClusterNotFound",
    "ClusterUnreachable",
    "KubeConfigError",
    "ObjectExists",
    "ResourceNotServed",
    "api_error",
    "describe",
    "one_line",
]


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


def one_line(value: object) -> str:
    """``value`` as text with its whitespace runs (newlines included) made single spaces."""
    return " ".join(str(value).split())


def describe(kind: ResourceKind, namespace: str, name: str | None) -> str:
    """How messages name an object (or, without ``name``, the kind) in ``namespace``."""
    target = f"{kind.resource} {name!r}" if name else kind.resource
    return f"{target} in namespace {namespace!r}"


def _status_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, or its text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        data = json.loads(body) if isinstance(body, str) else body
    except ValueError:
        return one_line(body)[:300]
    if isinstance(data, dict):
        return one_line(data.get("message") or data.get("reason") or "")
    return one_line(body)[:300]


def _status_field(body: Any, key: str) -> Any:
    """A field of a Kubernetes Status body (None if the body is not one)."""
    try:
        data = json.loads(body) if isinstance(body, (str, bytes)) else body
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def api_error(exc: Any, verb: str, kind: ResourceKind, namespace: str, name: str | None,
              url: str) -> ClusterError:
    """The :class:`ClusterError` for the client's ``ApiException`` ``exc``, raised when
    ``verb`` was tried on ``name`` (or the kind) at the API server ``url``."""
    status = int(exc.status or 0)
    message = _status_message(exc.body) or one_line(exc.reason or "")
    what = describe(kind, namespace, name)
    if status == 401:
        return ClusterAccessDenied(
            f"cannot {verb} {what}: the API server at {url} rejected the "
            "credentials (401 Unauthorized); refresh the kubeconfig's credentials or the "
            "pod's service-account token")
    if status == 403:
        return ClusterAccessDenied(
            f"cannot {verb} {what}: forbidden (403: {message}); grant the verb "
            f"{verb!r} on {kind.resource} to kpigate's Role in namespace "
            f"{namespace!r} (check: kubectl auth can-i {verb} {kind.resource} "
            f"-n {namespace})")
    if status == 404:
        # A missing object's Status names it; a kind the server does not serve has none.
        if name and (_status_field(exc.body, "details") or {}).get("name") == name:
            return ClusterNotFound(f"cannot {verb} {what}: it does not exist")
        return ResourceNotServed(
            f"cannot {verb} {what}: the API server does not serve "
            f"{kind.resource}/{kind.version}; install the CRD (is Seldon Core "
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
                        f"{one_line(exc.reason or '')}: {message}")
