"""The operator's inputs: watches that turn cluster changes into rollouts to reconcile.

Two kinds of object say a rollout needs a look: its ModelRollout (a user changed the spec)
and its state ConfigMap (the worker saved a decision: the status and Events follow). Each
is watched (the ``kubernetes`` client's :class:`~kubernetes.watch.Watch`), per watched
namespace or cluster-wide. A watch starts with a list (every object is reconciled once),
then streams changes from the list's resourceVersion with bookmarks; an expired version
(410) or a broken stream starts over with a list, after a short backoff, and is counted.

Changes land in a :class:`WorkQueue` of rollout keys: a key queued twice before it is
taken is reconciled once, and one reconciler takes keys one at a time, so a rollout is
never reconciled by two threads at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.backends.seldon.kinds import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MODEL_ROLLOUT,
    ROLLOUT_LABEL,
)

log = logging.getLogger("kpigate.operator")
Key = tuple[str, str]
WATCH_TIMEOUT_S = 60  # the server ends each stream after this; the watch resumes from RV


class WorkQueue:
    """A set of keys to reconcile, taken in arrival order, each at most once pending."""

    def __init__(self) -> None:
        self._order: list[Key] = []
        self._pending: set[Key] = set()
        self._cond = threading.Condition()

    def add(self, key: Key) -> None:
        """Queue ``key`` (no-op if it is already waiting)."""
        with self._cond:
            if key not in self._pending:
                self._pending.add(key)
                self._order.append(key)
                self._cond.notify()

    def take(self, timeout: float) -> Key | None:
        """The next key, or None after ``timeout`` seconds without one."""
        with self._cond:
            if not self._order:
                self._cond.wait(timeout)
            if not self._order:
                return None
            key = self._order.pop(0)
            self._pending.discard(key)
            return key


@dataclass(frozen=True)
class WatchTarget:
    """One watch: a resource, a namespace (None: every namespace) and how an object of it
    names the rollout to reconcile (None: not one of ours)."""

    resource: str
    namespace: str | None
    key_of: Callable[[dict[str, Any]], Key | None]


def _modelrollout_key(obj: dict[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace", ""), meta["name"]) if meta.get("name") else None


def _configmap_key(obj: dict[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    rollout = labels.get(ROLLOUT_LABEL)
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or not rollout:
        return None
    return (meta.get("namespace", ""), rollout)


def targets_for(namespaces: tuple[str, ...] | None) -> list[WatchTarget]:
    """The watches of an operator over ``namespaces`` (None: all)."""
    spaces: tuple[str | None, ...] = namespaces if namespaces else (None,)
    out = []
    for ns in spaces:
        out.append(WatchTarget("modelrollouts", ns, _modelrollout_key))
        out.append(WatchTarget("configmaps", ns, _configmap_key))
    return out


class Watcher:
    """Runs one :class:`WatchTarget` in a thread until ``stop`` is set."""

    def __init__(self, api_client: Any, target: WatchTarget, queue: WorkQueue,
                 stop: threading.Event, on_restart: Callable[[str], None],
                 on_listed: Callable[[WatchTarget], None]) -> None:
        self.api_client = api_client
        self.target = target
        self.queue = queue
        self.stop = stop
        self.on_restart = on_restart
        self.on_listed = on_listed
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"watch-{target.resource}-{target.namespace}")

    def _list_call(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        from kubernetes import client

        t = self.target
        if t.resource == "modelrollouts":
            api = client.CustomObjectsApi(self.api_client)
            k = MODEL_ROLLOUT
            if t.namespace is None:
                return api.list_cluster_custom_object, (k.group, k.version, k.plural), {}
            return (api.list_namespaced_custom_object,
                    (k.group, k.version, t.namespace, k.plural), {})
        core = client.CoreV1Api(self.api_client)
        selector = {"label_selector": f"{MANAGED_BY_LABEL}={MANAGED_BY}"}
        if t.namespace is None:
            return core.list_config_map_for_all_namespaces, (), selector
        return core.list_namespaced_config_map, (t.namespace,), selector

    def _key(self, obj: Any) -> Key | None:
        if not isinstance(obj, dict):
            obj = self.api_client.sanitize_for_serialization(obj)
        return self.target.key_of(obj)

    def _run(self) -> None:
        from kubernetes import watch

        backoff = 0.5
        while not self.stop.is_set():
            call, args, kwargs = self._list_call()
            try:
                listed = call(*args, **kwargs, _request_timeout=(10, 60))
                items = listed["items"] if isinstance(listed, dict) else listed.items
                meta = listed["metadata"] if isinstance(listed, dict) else listed.metadata
                version = (meta.get("resourceVersion") if isinstance(meta, dict)
                           else meta.resource_version)
                for item in items or []:
                    key = self._key(item)
                    if key is not None:
                        self.queue.add(key)
                self.on_listed(self.target)
                stream = watch.Watch()
                while not self.stop.is_set():
                    for event in stream.stream(call, *args, **kwargs,
                                               resource_version=version,
                                               allow_watch_bookmarks=True,
                                               timeout_seconds=WATCH_TIMEOUT_S):
                        if self.stop.is_set():
                            stream.stop()
                            break
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            key = self._key(event["object"])
                            if key is not None:
                                self.queue.add(key)
                    version = stream.resource_version or version
                backoff = 0.5
            except Exception as exc:
                if self.stop.is_set():
                    return
                log.info("watch of %s (%s) restarts: %s", self.target.resource,
                         self.target.namespace or "all namespaces", str(exc)[:200])
                self.on_restart(self.target.resource)
                self.stop.wait(backoff)
                backoff = min(10.0, backoff * 2)


def resync_forever(list_keys: Callable[[], list[Key]], queue: WorkQueue, every_s: float,
                   stop: threading.Event) -> None:
    """Queue every rollout every ``every_s`` seconds: what a missed event left behind (a
    worker that died, a status write that failed) is picked up at the latest then."""
    while not stop.wait(every_s):
        try:
            for key in list_keys():
                queue.add(key)
        except Exception as exc:
            log.warning("resync failed: %s", str(exc)[:200])

