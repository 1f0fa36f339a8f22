"""One namespace of one Kubernetes cluster, and the API client that reaches it.

* :func:`api_client_from` builds a ``kubernetes`` ApiClient from a kubeconfig (file and
  context) or, inside a pod, from the service account.
* :class:`Cluster` is one namespace of one cluster; :meth:`Cluster.objects` gives a
  :class:`~.objects.KubeObjects` for one kind (get, list, create, replace, guarded JSON
  patches, delete), and :meth:`Cluster.delete_managed` deletes every object labelled as
  kpigate's for a rollout (:mod:`.kinds`).

The errors are in :mod:`.cluster_errors`; whether Seldon has rolled out what kpigate
applied is the pure :mod:`.readiness`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.seldon.cluster_errors import (
    KubeConfigError,
    ResourceNotServed,
    one_line,
)
from mlflow_kpigate.backends.seldon.kinds import (
    DNS_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MANAGED_KINDS,
    ROLLOUT_LABEL,
    ResourceKind,
    managed_selector,
)
from mlflow_kpigate.backends.seldon.objects import KubeObjects
from mlflow_kpigate.core.errors import UsageError

__all__ = ["Cluster", "api_client_from"]


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
            f"-C kubeconfig: cannot load {where}{ctx}: {one_line(exc)}; give -C "
            "kubeconfig=PATH (and -C kube_context=NAME) or run inside the cluster") from exc
    return client.ApiClient(configuration=configuration)


class Cluster:
    """A namespace of a cluster, reached through one ``ApiClient``."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        if not DNS_LABEL.fullmatch(namespace):
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
