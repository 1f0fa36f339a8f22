"""The prediction log's SQLite file: per-thread connections and write transactions.

Router and controller are separate processes with separate ``Collector`` instances on the
same file; SQLite's WAL mode lets the controller read while the router writes. Durability:
WAL with ``synchronous=NORMAL``: committed rows survive a crash of either process; the last
commits may be lost on power loss, an accepted trade for a log.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CollectorError", "Connections", "transaction"]


class CollectorError(RuntimeError):
    """The collector cannot accept or persist data (writer failed, or closed)."""


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on ``conn``: committed on exit, rolled back if anything raises."""
    # IMMEDIATE takes the write lock up front, so two writers (router threads, another
    # process) queue on the busy timeout instead of failing on lock upgrade.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Connections:
    """The connections one collector holds on its file, one per thread, closed together."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._lock = threading.Lock()
        self._local = threading.local()
        self._open: list[sqlite3.Connection] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def open(self) -> sqlite3.Connection:
        """A new connection (WAL mode), closed by :meth:`close`."""
        conn = sqlite3.connect(
            self.db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._open.append(conn)
        return conn

    def this_thread(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections must not be shared mid-use)."""
        if self._closed:
            raise CollectorError(f"the collector for {self.db_path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.open()
        return conn

    def close(self) -> None:
        """Close every connection; :meth:`this_thread` raises :class:`CollectorError` after."""
        with self._lock:
            self._closed = True
            connections, self._open = self._open, []
        for conn in connections:
            conn.close()
