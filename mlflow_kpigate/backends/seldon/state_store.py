"""Rollout state and audit log in ConfigMaps: the cluster twin of :class:`RolloutStore`.

Layout, for deployment ``NAME`` in the target namespace::

    NAME-kpigate-state         data: state.json   the current RolloutState (JSON)
                                     events.jsonl the newest audit events, one JSON per line
                                     meta.json    {"last_seq": N, "archives": [...]}
    NAME-kpigate-audit-NNNN    data: events.jsonl older events, first event id NNNN

The state and the event explaining it are written in **one** ConfigMap update guarded by
its ``resourceVersion``: the API server refuses the write (409) if anyone wrote since it
was read, so a lost race never loses or duplicates anything. The loser re-reads; if the
stored state's revision is no longer the one its state was derived from it raises
:class:`StateConflict` (like ``RolloutStore.save``), otherwise (only events were
appended meanwhile) it retries with the next event ids.

A ConfigMap holds at most 1 MiB. When ``events.jsonl`` would pass ``archive_threshold``
bytes (700 kB by default) the oldest events are first written to archive ConfigMaps, named
from their first event id so a retried rotation overwrites the same archive (merging by
event id, never dropping one); only then is the state ConfigMap written without them,
listing the archive and its event range in ``meta.json``. :meth:`ClusterStore.events`
reads the listed archives and the current events. Archives are owned by the state
ConfigMap, and the state ConfigMap by the SeldonDeployment / Experiment when ``owner`` is
given, so deleting the deployment deletes its whole history.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mlflow_kpigate.backends.seldon.cluster_errors import ClusterConflict, ObjectExists
from mlflow_kpigate.backends.seldon.kinds import managed_labels
from mlflow_kpigate.backends.seldon.objects import KubeObjects
from mlflow_kpigate.core.errors import StateConflict, UsageError
from mlflow_kpigate.core.events import AuditEvent, Recorded
from mlflow_kpigate.core.state import RolloutState

STATE_KEY = "state.json"
EVENTS_KEY = "events.jsonl"
META_KEY = "meta.json"
#: Bytes of events.jsonl above which the oldest events move to an archive ConfigMap.
ARCHIVE_THRESHOLD = 700_000


def state_configmap_name(deployment: str) -> str:
    """``NAME-kpigate-state``."""
    return f"{deployment}-kpigate-state"


def archive_configmap_name(deployment: str, first_seq: int) -> str:
    """``NAME-kpigate-audit-NNNN`` for the archive whose first event id is ``first_seq``."""
    return f"{deployment}-kpigate-audit-{first_seq:04d}"


@dataclass(frozen=True)
class _Archive:
    name: str
    first: int
    last: int


@dataclass(frozen=True)
class _Snapshot:
    """The state ConfigMap as read: what a guarded write starts from."""

    configmap: dict[str, Any] | None
    state: dict[str, Any] | None
    events: list[dict[str, Any]]
    last_seq: int
    archives: tuple[_Archive, ...]

    @property
    def resource_version(self) -> str | None:
        return ((self.configmap or {}).get("metadata") or {}).get("resourceVersion")


#: change(snapshot) -> (state to store, new event {"kind", "body"} or None)
_Change = Callable[[_Snapshot], tuple[dict[str, Any] | None, dict[str, Any] | None]]


def _line(event: dict[str, Any]) -> str:
    return json.dumps(event, allow_nan=False, default=str, separators=(",", ":"))


def _size(events: list[dict[str, Any]]) -> int:
    return sum(len(_line(e).encode()) + 1 for e in events)


def _parse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _recorded(event: dict[str, Any]) -> Recorded:
    """A stored line ``{"seq", "ts", "kind", "body"}`` as a typed record."""
    return Recorded.from_stored(event["seq"], event["ts"], event["kind"], event.get("body", {}))


class ClusterStore:
    """The state and audit log of one deployment, kept in ConfigMaps.

    Same public methods and semantics as the embedded backend's SQLite store:
    ``exists``, ``load``, ``require``, ``save`` (compare-and-set on the state's revision,
    :class:`StateConflict` when another writer saved first), ``append`` and
    ``events``. ``configmaps`` are the ConfigMap operations of the target namespace
    (``Cluster.objects(CONFIG_MAP)``); ``owner`` (apiVersion, kind, name, uid of the
    SeldonDeployment or Experiment) becomes the state ConfigMap's ownerReference.
    ``attempts`` bounds the retries after lost races that do not conflict (concurrent
    event appends); past it :class:`ClusterConflict` is raised.
    """

    def __init__(self, configmaps: KubeObjects, deployment: str, *,
                 owner: dict[str, Any] | None = None,
                 archive_threshold: int = ARCHIVE_THRESHOLD, attempts: int = 20,
                 backoff: float = 0.02) -> None:
        if configmaps.kind.kind != "ConfigMap":
            raise ValueError("ClusterStore needs ConfigMap operations (Cluster.objects("
                             "CONFIG_MAP))")
        if archive_threshold < 1:
            raise ValueError("archive_threshold must be positive")
        self.configmaps = configmaps
        self.name = deployment
        self.namespace = configmaps.namespace
        self.configmap_name = state_configmap_name(deployment)
        self.owner = owner
        self.archive_threshold = archive_threshold
        self.attempts = attempts
        self.backoff = backoff

    # -- reading --------------------------------------------------------------------------------
    def _read(self) -> _Snapshot:
        cm = self.configmaps.get(self.configmap_name)
        data = (cm or {}).get("data") or {}
        meta = json.loads(data[META_KEY]) if data.get(META_KEY) else {}
        events = _parse_events(data.get(EVENTS_KEY, ""))
        state = json.loads(data[STATE_KEY]) if data.get(STATE_KEY) else None
        archives = tuple(_Archive(a["name"], int(a["first"]), int(a["last"]))
                         for a in meta.get("archives", []))
        last = int(meta.get("last_seq", events[-1]["seq"] if events else 0))
        return _Snapshot(cm, state, events, last, archives)

    def exists(self) -> bool:
        """Whether a state has been saved."""
        return self.load() is not None

    def load(self) -> RolloutState | None:
        """The last saved state, or ``None``."""
        state = self._read().state
        return RolloutState.from_dict(state) if state is not None else None

    def require(self) -> RolloutState:
        """The saved state; ``UsageError`` naming the deployment if there is none."""
        state = self.load()
        if state is None:
            raise UsageError(f"deployment {self.name!r} has no saved state in ConfigMap "
                             f"{self.namespace}/{self.configmap_name}")
        return state

    def events(self, since: int = 0) -> list[Recorded]:
        """Audit events with sequence number > ``since``, oldest first (archives included)."""
        snap = self._read()
        out: list[dict[str, Any]] = []
        for archive in snap.archives:
            if archive.last <= since:
                continue
            cm = self.configmaps.get(archive.name)
            if cm is None:
                raise UsageError(f"audit archive ConfigMap {self.namespace}/{archive.name} of "
                                 f"deployment {self.name!r} is missing (events {archive.first}-"
                                 f"{archive.last}); it was deleted outside kpigate")
            out.extend(e for e in _parse_events((cm.get("data") or {}).get(EVENTS_KEY, ""))
                       if archive.first <= e["seq"] <= archive.last and e["seq"] > since)
        out.extend(e for e in snap.events if e["seq"] > since)
        return [_recorded(e) for e in out]

    # -- writing --------------------------------------------------------------------------------
    def save(self, state: RolloutState, event: AuditEvent | None = None) -> RolloutState:
        """Persist ``state`` and, in the same ConfigMap write, the audit ``event``.

        Compare-and-set: ``state.revision`` must equal the stored revision, otherwise
        :class:`StateConflict` is raised and nothing is written. Returns the saved state
        with its new revision.
        """
        def change(snap: _Snapshot) -> tuple[dict[str, Any], dict[str, Any] | None]:
            if snap.state is not None:
                current = int(snap.state.get("revision", 0))
                if current != state.revision:
                    raise StateConflict(
                        f"deployment {self.name!r} changed meanwhile (revision {current}, "
                        f"expected {state.revision}); reload and retry")
                saved = replace(state, revision=current + 1)
            else:
                saved = replace(state, revision=1)
            if event is None:
                return saved.to_dict(), None
            return saved.to_dict(), {"kind": event.kind,
                                     "body": {"revision": saved.revision, **event.body()}}

        new_state, _ = self._write(change)
        assert new_state is not None
        return RolloutState.from_dict(new_state)

    def append(self, event: AuditEvent) -> int:
        """Record an audit event that changes no state (an alert sent, an effect failed…)."""
        def change(snap: _Snapshot) -> tuple[dict[str, Any] | None, dict[str, Any]]:
            return snap.state, {"kind": event.kind, "body": event.body()}

        _, seq = self._write(change)
        return seq

    def _write(self, change: _Change) -> tuple[dict[str, Any] | None, int]:
        """Read, apply ``change(snapshot) -> (state dict, new event | None)``, write guarded
        by the resourceVersion read; on a lost race read again. Returns (state, event id)."""
        for attempt in range(self.attempts):
            snap = self._read()
            state, new_event = change(snap)
            events = list(snap.events)
            last = snap.last_seq
            if new_event is not None:
                last += 1
                events.append({"seq": last, "ts": time.time(), **new_event})
            try:
                archives, events = self._rotate(snap, events)
                data = {EVENTS_KEY: "".join(_line(e) + "\n" for e in events),
                        META_KEY: json.dumps({"last_seq": last, "archives": [
                            {"name": a.name, "first": a.first, "last": a.last}
                            for a in archives]})}
                if state is not None:
                    data[STATE_KEY] = json.dumps(state, allow_nan=False)
                self._put(snap, data)
                return state, last if new_event is not None else 0
            except (ClusterConflict, ObjectExists):
                time.sleep(self.backoff * (1 + attempt) * random.random())
        raise ClusterConflict(
            f"cannot save the state of deployment {self.name!r}: ConfigMap "
            f"{self.namespace}/{self.configmap_name} changed under {self.attempts} "
            "consecutive attempts; retry later")

    def _put(self, snap: _Snapshot, data: dict[str, str]) -> None:
        """Create the state ConfigMap, or replace it at the resourceVersion read."""
        if snap.configmap is None:
            meta: dict[str, Any] = {"name": self.configmap_name, "namespace": self.namespace,
                                    "labels": managed_labels(self.name)}
            if self.owner is not None:
                meta["ownerReferences"] = [_owner_ref(self.owner)]
            self.configmaps.create({"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": meta, "data": data})
            return
        cm = dict(snap.configmap)
        cm["data"] = data
        self.configmaps.replace(cm)

    def _rotate(self, snap: _Snapshot, events: list[dict[str, Any]]
                ) -> tuple[tuple[_Archive, ...], list[dict[str, Any]]]:
        """Archive the oldest events when ``events`` pass the threshold; the archives are
        written before the caller's guarded write that drops them from the state ConfigMap."""
        archives = snap.archives
        if _size(events) <= self.archive_threshold or snap.configmap is None:
            return archives, events
        owner_uid = snap.configmap["metadata"]["uid"]
        keep_bytes = self.archive_threshold // 2
        # Newest events stay (about half the threshold); the older ones are archived in
        # chunks that each fit under the threshold.
        keep_from = len(events)
        kept = 0
        while keep_from > 1 and kept + len(_line(events[keep_from - 1]).encode()) + 1 <= \
                keep_bytes:
            keep_from -= 1
            kept += len(_line(events[keep_from]).encode()) + 1
        old, events = events[:keep_from], events[keep_from:]
        chunk: list[dict[str, Any]] = []
        for ev in old:
            if chunk and _size([*chunk, ev]) > self.archive_threshold:
                archives = (*archives, self._archive(owner_uid, chunk))
                chunk = []
            chunk.append(ev)
        if chunk:
            archives = (*archives, self._archive(owner_uid, chunk))
        return archives, events

    def _archive(self, owner_uid: str, chunk: list[dict[str, Any]]) -> _Archive:
        """Write ``chunk`` to its archive ConfigMap, merged by event id with what is there."""
        name = archive_configmap_name(self.name, chunk[0]["seq"])
        for _ in range(self.attempts):
            existing = self.configmaps.get(name)
            merged = {e["seq"]: e for e in _parse_events(
                ((existing or {}).get("data") or {}).get(EVENTS_KEY, ""))}
            merged.update({e["seq"]: e for e in chunk})
            data = {EVENTS_KEY: "".join(_line(merged[s]) + "\n" for s in sorted(merged))}
            try:
                if existing is None:
                    meta = {"name": name, "namespace": self.namespace,
                            "labels": managed_labels(self.name),
                            "ownerReferences": [_owner_ref({
                                "apiVersion": "v1", "kind": "ConfigMap",
                                "name": self.configmap_name,
                                "uid": owner_uid})]}
                    self.configmaps.create({"apiVersion": "v1", "kind": "ConfigMap",
                                            "metadata": meta, "data": data})
                else:
                    self.configmaps.replace({**existing, "data": data})
                return _Archive(name, chunk[0]["seq"], chunk[-1]["seq"])
            except (ClusterConflict, ObjectExists):
                continue
        raise ClusterConflict(f"cannot write audit archive {self.namespace}/{name}: it kept "
                              "changing; retry later")


def _owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("apiVersion", "kind", "name", "uid") if not owner.get(k)]
    if missing:
        raise ValueError(f"owner: missing {', '.join(missing)}; pass the apiVersion, kind, "
                         "name and uid of the object read from the cluster")
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["name"],
            "uid": owner["uid"], "controller": False, "blockOwnerDeletion": False}
