"""The embedded backend's StateStore: rollout state and audit log in a deployment directory.

Layout of ``<state_dir>/<name>/``::

    state.db        SQLite (WAL): the current RolloutState and every audit event
    audit.jsonl     the audit events as JSON lines, for people and log shippers
    policy.yaml     the policy the rollout was started with (a copy)
    predictions.db  the collector's prediction log (see metrics/collector.py)

A state change and the audit event that explains it are written in **one** SQLite
transaction, so after a crash at any instant the state and its history agree. The JSON
lines file is a mirror written after the commit; :meth:`RolloutStore.sync_audit_file`
(run whenever a store is opened) appends whatever a crash kept out of it, so no event is
ever lost from either. Events are typed (:mod:`mlflow_kpigate.core.events`); the file
holds each as ``{"seq", "ts", "kind", "revision"?, ...body}``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.errors import StateConflict, StateUnreadable, UsageError
from mlflow_kpigate.core.events import AuditEvent, Recorded
from mlflow_kpigate.core.state import RolloutState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


class RolloutStore:
    """The state and audit log of one deployment."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        # Private to the user: the state, audit log and prediction log are evidence.
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.dir.stat().st_mode & 0o077:
            self.dir.chmod(0o700)  # made by another hand (mkdir's default mode, an old version)
        self.db_path = self.dir / "state.db"
        self.audit_path = self.dir / "audit.jsonl"
        for path in (self.db_path, self.audit_path):
            # Created 0600 before SQLite or the mirror opens them (SQLite gives its -wal
            # and -shm files the database file's mode).
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        with self._connect() as db:
            db.executescript(_SCHEMA)
        self.sync_audit_file()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        except sqlite3.OperationalError:
            raise  # locked, busy, disk full: the file is fine, the moment is not
        except sqlite3.DatabaseError as exc:
            # "file is not a database", "database disk image is malformed": damaged.
            raise self._unreadable(exc) from None
        finally:
            db.close()

    def _unreadable(self, exc: BaseException) -> StateUnreadable:
        return StateUnreadable(
            f"the state of deployment {self.dir.name!r} cannot be read ({exc}: "
            f"{self.db_path}); restore the file from a backup, or delete the deployment")

    # -- state ------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether a state has been saved."""
        return self.load() is not None

    def load(self) -> RolloutState | None:
        """The last saved state, or ``None``."""
        with self._connect() as db:
            row = db.execute("SELECT body FROM state WHERE id = 1").fetchone()
        if not row:
            return None
        try:
            return RolloutState.from_dict(json.loads(row[0]))
        except (ValueError, TypeError, KeyError) as exc:
            raise self._unreadable(exc) from None

    def require(self) -> RolloutState:
        """The saved state; ``UsageError`` naming the deployment if there is none."""
        state = self.load()
        if state is None:
            raise UsageError(f"deployment {self.dir.name!r} has no saved state in {self.dir}")
        return state

    def save(self, state: RolloutState, event: AuditEvent | None = None) -> RolloutState:
        """Persist ``state`` and, atomically with it, the audit ``event`` that explains it.

        Compare-and-set: ``state.revision`` must equal the stored revision (the state was
        derived from the latest save), otherwise :class:`StateConflict` is raised and
        nothing is written. Returns the saved state, with its new revision.
        """
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT body FROM state WHERE id = 1").fetchone()
                current = json.loads(row[0]).get("revision", 0) if row else 0
                if row is not None and current != state.revision:
                    raise StateConflict(
                        f"deployment {self.dir.name!r} changed meanwhile (revision {current}, "
                        f"expected {state.revision}); reload and retry")
                state = replace(state, revision=current + 1 if row else 1)
                body = json.dumps(state.to_dict(), allow_nan=False)
                db.execute("INSERT INTO state (id, body) VALUES (1, ?) "
                           "ON CONFLICT(id) DO UPDATE SET body = excluded.body", (body,))
                if event is not None:
                    self._insert_event(db, event.kind,
                                       {"revision": state.revision, **event.body()})
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self.sync_audit_file()
        return state

    # -- audit ------------------------------------------------------------------------------
    @staticmethod
    def _insert_event(db: sqlite3.Connection, kind: str, event: dict[str, Any]) -> int:
        ts = time.time()
        cur = db.execute("INSERT INTO events (ts, kind, body) VALUES (?, ?, ?)",
                         (ts, kind, json.dumps(event, allow_nan=False, default=str)))
        return int(cur.lastrowid or 0)

    def append(self, event: AuditEvent) -> int:
        """Record an audit event that changes no state (an alert sent, an effect failed…)."""
        with self._connect() as db:
            seq = self._insert_event(db, event.kind, event.body())
        self.sync_audit_file()
        return seq

    def events(self, since: int = 0) -> list[Recorded]:
        """Audit events with sequence number > ``since``, oldest first."""
        return [Recorded.from_stored(s, ts, k, body) for s, ts, k, body in self._rows(since)]

    def _rows(self, since: int) -> list[tuple[int, float, str, dict[str, Any]]]:
        with self._connect() as db:
            rows = db.execute("SELECT seq, ts, kind, body FROM events WHERE seq > ? "
                              "ORDER BY seq", (since,)).fetchall()
        return [(int(s), float(ts), str(k), json.loads(b)) for s, ts, k, b in rows]

    def _last_mirrored(self) -> int:
        """Sequence number of the last complete line of ``audit.jsonl`` (0 if none).

        Reads only the file's tail, so a save stays cheap however long the log grows.
        """
        if not self.audit_path.exists():
            return 0
        with self.audit_path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            chunk = 1 << 16
            while True:
                start = max(0, size - chunk)
                fh.seek(start)
                lines = fh.read(size - start).split(b"\n")
                for line in reversed(lines[1:] if start else lines):
                    try:
                        return int(json.loads(line)["seq"])
                    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                        continue  # blank, or a torn last line from a crash mid-write
                if start == 0:
                    return 0
                chunk *= 4

    def sync_audit_file(self) -> None:
        """Append to ``audit.jsonl`` every committed event it does not have yet.

        Serialised across processes with a lock file, so two writers (the controller and
        an operator's command) never mirror the same event twice.
        """
        with (self.dir / ".audit.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._sync_locked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _cut_torn_line(self) -> None:
        """Drop a partial last line (a crash mid-write) so the file stays parseable; the
        event it began is committed in the database and is written again whole."""
        if not self.audit_path.exists():
            return
        with self.audit_path.open("r+b") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            keep = 0
            chunk = 1 << 16
            while True:  # find the last newline, reading back from the end
                start = max(0, size - chunk)
                fh.seek(start)
                block = fh.read(size - start)
                at = block.rfind(b"\n")
                if at >= 0:
                    keep = start + at + 1
                    break
                if start == 0:
                    break
                chunk *= 4
            fh.truncate(keep)

    def _sync_locked(self) -> None:
        # The stored rows as they are (not decoded): the file mirrors what was committed.
        missing = [{"seq": s, "ts": ts, "kind": k, **body}
                   for s, ts, k, body in self._rows(self._last_mirrored())]
        if not missing:
            return
        self._cut_torn_line()
        with self.audit_path.open("ab") as fh:
            for ev in missing:
                fh.write(json.dumps(ev, allow_nan=False, default=str).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
