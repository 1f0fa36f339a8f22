"""Watch streams for the fake Kubernetes API server (:mod:`fake_kube`).

:class:`WatchHub` keeps a bounded history of changes (every create, write and delete, with
the resourceVersion it got) and wakes the open streams; :class:`WatchStream` serves one
``?watch=true`` request on its connection's handler thread: newline-delimited JSON watch
events, one per HTTP chunk, as the real API server sends them.

Semantics (those of the real server's watch cache, within its history):

* with a ``resourceVersion`` (not ``"0"``): every change after it, in order; one older than
  the history → a single ``ERROR`` event carrying a ``Status`` 410 ``Expired`` ("too old
  resource version: X (Y)"), then the stream ends;
* without one (or ``"0"``): synthetic ``ADDED`` events for the current objects, then the
  changes after that;
* selectors are applied to the old and the new state of a modified object: one that starts
  matching arrives as ``ADDED``, one that stops matching as ``DELETED``;
* ``allowWatchBookmarks=true``: a ``BOOKMARK`` (only kind, apiVersion and
  ``metadata.resourceVersion``) every ``bookmark_interval`` seconds, carrying the newest
  resourceVersion the stream has caught up with;
* ``timeoutSeconds`` ends the stream cleanly (the terminating chunk), like the server's
  timeout; :meth:`WatchHub.drop` ends every open stream, cleanly or by cutting the
  connection; :meth:`WatchHub.close` (the server's ``stop()``) ends them all for good.

Everything that reads or writes the history holds the server's lock (the condition is built
on it); sockets are written without it.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

DEFAULT_HISTORY = 1000
#: How often a stream with nothing to send checks that its client is still connected.
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Change:
    """One stored change: ``type`` ADDED | MODIFIED | DELETED, the object after it (for a
    deletion, its last state with the deletion's resourceVersion) and, for MODIFIED, before."""

    rv: int
    type: str
    group: str
    plural: str
    namespace: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


def status_event(code: int, reason: str, message: str) -> dict[str, Any]:
    """An ``ERROR`` watch event carrying a ``Status``."""
    return {"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code}}


class WatchHub:
    """The change history and the set of open streams of one fake API server."""

    def __init__(self, lock: threading.RLock, current_rv: Callable[[], int], *,
                 history: int = DEFAULT_HISTORY, bookmark_interval: float = 1.0) -> None:
        self.cond = threading.Condition(lock)
        self.current_rv = current_rv
        self.bookmark_interval = bookmark_interval
        self._history: deque[Change] = deque(maxlen=history)
        #: Changes with a resourceVersion above this are all in the history.
        self.floor = current_rv()
        self.closed = False
        self.streams: set[WatchStream] = set()

    def record(self, change: Change) -> None:
        """Append a change (caller holds the lock) and wake the streams."""
        with self.cond:
            if self._history.maxlen and len(self._history) == self._history.maxlen:
                self.floor = self._history[0].rv
            self._history.append(change)
            self.cond.notify_all()

    def after(self, rv: int) -> list[Change] | None:
        """Changes with a resourceVersion above ``rv``, or None when some are no longer
        kept (caller holds the lock)."""
        if rv < self.floor:
            return None
        return [c for c in self._history if c.rv > rv]

    def drop(self, *, clean: bool = True) -> int:
        """End every open stream: ``clean`` with the terminating chunk (as the server's
        watch timeout does), else by cutting the connection. Returns how many."""
        with self.cond:
            streams = list(self.streams)
            for stream in streams:
                stream.ending = "clean" if clean else "cut"
            self.cond.notify_all()
        return len(streams)

    def close(self) -> None:
        """The server stops: every stream ends now and no new one starts."""
        with self.cond:
            self.closed = True
            for stream in self.streams:
                stream.ending = "cut"
            self.cond.notify_all()


@dataclass(eq=False)
class WatchStream:
    """One watch request, served by :meth:`serve` on its handler thread.

    ``matches(obj)`` applies the request's namespace, label and field selectors;
    ``initial`` are the objects to send as ADDED first (a watch without resourceVersion);
    ``since`` the resourceVersion after which changes are sent.
    """

    hub: WatchHub
    group: str
    plural: str
    kind: str
    api_version: str
    matches: Callable[[dict[str, Any]], bool]
    since: int
    initial: list[dict[str, Any]] = field(default_factory=list)
    bookmarks: bool = False
    timeout: float | None = None
    ending: str = ""  # "", "clean" or "cut": set by the hub to end the stream

    def _events(self, changes: list[Change]) -> list[dict[str, Any]]:
        out = []
        for change in changes:
            if (change.group, change.plural) != (self.group, self.plural):
                continue
            if change.type == "MODIFIED":
                was = change.old is not None and self.matches(change.old)
                now = self.matches(change.obj)
                kind = {(True, True): "MODIFIED", (False, True): "ADDED",
                        (True, False): "DELETED"}.get((was, now))
            else:
                kind = change.type if self.matches(change.obj) else None
            if kind:
                out.append({"type": kind, "object": change.obj})
        return out

    def serve(self, wfile: BinaryIO, conn: socket.socket) -> bool:
        """Stream until the timeout, a drop, the server's stop or the client leaving.
        Returns whether the connection can be kept alive (the stream ended cleanly)."""
        hub = self.hub
        with hub.cond:
            if hub.closed:
                return False
            hub.streams.add(self)
        try:
            return self._serve(wfile, conn)
        except OSError:  # the client went away
            return False
        finally:
            with hub.cond:
                hub.streams.discard(self)

    def _serve(self, wfile: BinaryIO, conn: socket.socket) -> bool:
        hub = self.hub
        now = time.monotonic()
        deadline = now + self.timeout if self.timeout else None
        next_bookmark = now + hub.bookmark_interval if self.bookmarks else None
        last = self.since
        pending = [{"type": "ADDED", "object": obj} for obj in self.initial]
        self.initial = []
        changes: list[Change] | None = []
        while True:
            if pending:
                _write_chunk(wfile, b"".join(json.dumps(e).encode() + b"\n" for e in pending))
                pending = []
            if not _client_connected(conn):
                return False
            with hub.cond:
                while True:
                    if self.ending:
                        break
                    changes = hub.after(last)
                    if changes is None:
                        expired = status_event(410, "Expired", f"too old resource version: "
                                                               f"{last} ({hub.floor})")
                        break
                    if changes:
                        last = changes[-1].rv
                        pending = self._events(changes)
                        if pending:
                            break
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        break
                    if next_bookmark is not None and now >= next_bookmark:
                        last = max(last, hub.current_rv())
                        pending = [{"type": "BOOKMARK", "object": {
                            "kind": self.kind, "apiVersion": self.api_version,
                            "metadata": {"resourceVersion": str(last)}}}]
                        next_bookmark = now + hub.bookmark_interval
                        break
                    wake = now + POLL_SECONDS
                    for t in (deadline, next_bookmark):
                        if t is not None:
                            wake = min(wake, t)
                    hub.cond.wait(max(0.0, wake - now))
                    if not pending and not _client_connected(conn):
                        return False
                ending = self.ending
            if changes is None:
                _write_chunk(wfile, json.dumps(expired).encode() + b"\n")
                _write_chunk(wfile, b"")
                return True
            if ending == "cut":
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                return False
            if ending == "clean" or (not pending and deadline is not None and
                                     time.monotonic() >= deadline):
                _write_chunk(wfile, b"")
                return True


def _write_chunk(wfile: BinaryIO, data: bytes) -> None:
    """One HTTP/1.1 chunk (an empty one terminates the body)."""
    wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n")
    wfile.flush()


def _client_connected(conn: socket.socket) -> bool:
    """False once the client has closed its end (the socket reads EOF or fails)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return True
        return conn.recv(1, socket.MSG_PEEK) != b""
    except (OSError, ValueError):
        return False
