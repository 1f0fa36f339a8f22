"""Ingesting the router's segment files into ``predictions.db``, exactly once.

:func:`ingest` commits the complete lines of every segment file in a directory (written by
:class:`~.segment_log.SegmentWriter`) as prediction rows. Per file, table
``segment_offsets`` holds how many bytes are already in the database. Each chunk is one
``BEGIN IMMEDIATE`` transaction that reads the stored offset (under the write lock, so
several processes may ingest the same directory at once: the router's ingest thread, a
worker serving ``/feedback``, the controller), reads the file from there up to its last
complete newline, inserts the decoded rows and moves the offset: rows and offset commit
together, so a crash anywhere, or a second ingester, never duplicates or loses a row.
Chunks are bounded (:data:`CHUNK_BYTES`, :data:`CHUNK_LINES`) so a backlog never holds
the write lock for long.

**Finishing a file.** A file whose ``flock`` an ingester can take is closed for good (its
writer rotated past it, or died: the kernel drops the lock with the process, SIGKILL
included); requiring a newer segment of the same writer as well would add nothing, since
a writer unlocks a file only when it rotates or closes. The ingester then ingests the rest
and deletes the file and its offset in one transaction, the file first: a crash between
leaves a stale offset row (removed later), never a file whose offset is gone, which
would be read again from byte 0. A finished file that ends in a partial line (its writer
died inside the write, or a failed append could not be cut back) never had that line
answered: it is counted in :attr:`IngestResult.torn_lines`, logged, and dropped with
the file. A malformed complete line (which a writer never writes) is skipped the same
way, counted in the file's ``torn`` column, so one bad line cannot block the log.

:class:`IngestLoop` runs :func:`ingest` on a thread every interval.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlflow_kpigate.core.records import Prediction
from mlflow_kpigate.metrics.collector_db import transaction
from mlflow_kpigate.metrics.collector_rows import insert_predictions
from mlflow_kpigate.metrics.collector_schema import Layout
from mlflow_kpigate.metrics.segment_format import decode_line
from mlflow_kpigate.metrics.segment_log import SEGMENT_SUFFIX

__all__ = [
    "CHUNK_BYTES", "CHUNK_LINES", "IngestLoop", "IngestResult", "SegmentSource", "ingest",
    "pending_bytes",
]

logger = logging.getLogger(__name__)

#: Most bytes one transaction reads (more only if a single line is longer).
CHUNK_BYTES = 4 * 2**20
#: Most lines one transaction inserts.
CHUNK_LINES = 5000
# A writer's hidden temporary file that is unlocked this long after its last change was
# left by a writer that died while creating it (it is empty: writes follow the rename).
_STALE_TMP_S = 60.0


@dataclass(frozen=True)
class IngestResult:
    """What one :func:`ingest` did: prediction ``rows`` inserted, segment files read
    (with something new) and deleted, and torn or malformed lines skipped."""

    rows: int = 0
    segments_read: int = 0
    segments_deleted: int = 0
    torn_lines: int = 0


def _segments(directory: Path) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith(SEGMENT_SUFFIX) and not n.startswith("."))


def _offset(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute('SELECT "offset" FROM segment_offsets WHERE name = ?', (name,)).fetchone()
    return None if row is None else int(row[0])


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (deleted files read as gone)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_lines(fd: int, offset: int) -> tuple[list[bytes], int]:
    """Up to :data:`CHUNK_LINES` complete lines from ``offset``, and the bytes they span."""
    buf = bytearray()
    while True:
        block = os.pread(fd, CHUNK_BYTES, offset + len(buf))
        buf += block
        if b"\n" in block or len(block) < CHUNK_BYTES:
            break
    lines = bytes(buf[: buf.rfind(b"\n") + 1]).split(b"\n")[:-1][:CHUNK_LINES]
    return lines, sum(len(line) + 1 for line in lines)


class _Segment:
    """One segment file during one :func:`ingest`: its descriptor and what was done."""

    def __init__(self, conn: sqlite3.Connection, layout: Layout, directory: Path, name: str,
                 store_features: bool) -> None:
        self.conn, self.layout, self.name = conn, layout, name
        self.path = directory / name
        self.store_features = store_features
        self.rows = self.torn = 0
        self.read = self.deleted = False

    def ingest(self, fd: int) -> None:
        """Commit the file's complete lines, chunk by chunk, up to its size now (so a
        writer faster than the database cannot keep one call going forever)."""
        size = os.fstat(fd).st_size
        while True:
            # A look without the lock first: an idle file costs no write transaction.
            # The stored offset only grows while the file exists, so this never skips.
            peek = _offset(self.conn, self.name) or 0
            if size <= peek:
                return
            with transaction(self.conn):
                offset = _offset(self.conn, self.name)
                # A file deleted (by another ingester) after we opened it has no offset
                # row any more: reading it from 0 would duplicate every row.
                if not _same_file(self.path, fd):
                    return
                lines, consumed = _read_lines(fd, offset or 0)
                if not lines:
                    return
                self._commit(lines, offset or 0, consumed)
            self.read = True

    def _commit(self, lines: list[bytes], offset: int, consumed: int) -> None:
        rows: list[Prediction] = []
        torn = 0
        at = offset
        for line in lines:
            try:
                rows.append(decode_line(line))
            except ValueError as exc:
                torn += 1
                logger.warning("skipped a malformed line at byte %d of the prediction "
                               "segment %s: %s", at, self.path, exc)
            at += len(line) + 1
        if rows:
            insert_predictions(self.conn, self.layout, rows,
                               store_features=self.store_features)
        self.conn.execute(
            'INSERT INTO segment_offsets (name, "offset", torn) VALUES (?, ?, ?) '
            'ON CONFLICT (name) DO UPDATE SET "offset" = excluded."offset", '
            "torn = torn + excluded.torn",
            (self.name, offset + consumed, torn),
        )
        self.rows += len(rows)
        self.torn += torn

    def finish(self, fd: int) -> None:
        """Delete the file (its lock is ours: no one appends again) and its offset row."""
        with transaction(self.conn):
            offset = _offset(self.conn, self.name) or 0
            if not _same_file(self.path, fd):
                return
            tail = os.fstat(fd).st_size - offset
            if tail > 0:
                if b"\n" in os.pread(fd, tail, offset):
                    return  # complete lines are left (a longer file): the next run
                self.torn += 1
                logger.warning("dropped a torn last line (%d bytes, never answered) of the "
                               "prediction segment %s, whose writer is gone", tail, self.path)
            self.path.unlink()
            self.conn.execute("DELETE FROM segment_offsets WHERE name = ?", (self.name,))
        self.deleted = True


def _ingest_one(conn: sqlite3.Connection, layout: Layout, directory: Path, name: str,
                store_features: bool) -> _Segment:
    segment = _Segment(conn, layout, directory, name, store_features)
    try:
        fd = os.open(segment.path, os.O_RDONLY)
    except FileNotFoundError:
        return segment  # another ingester finished it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finished = True
        except BlockingIOError:
            finished = False  # its writer (or another ingester finishing it) holds it
        segment.ingest(fd)
        if finished:
            segment.finish(fd)
    finally:
        os.close(fd)
    return segment


def _drop_stale(conn: sqlite3.Connection, directory: Path, names: list[str]) -> None:
    """Forget offset rows of deleted files, and remove temporary files of dead writers."""
    stored = [n for (n,) in conn.execute("SELECT name FROM segment_offsets")]
    listed = set(names)
    gone = [n for n in stored if n not in listed]
    if gone:
        with transaction(conn):
            # Checked again under the lock: a file listed after our listing may have an
            # offset row by now. A name is never reused, so a missing file is gone for good.
            for name in gone:
                if not (directory / name).exists():
                    conn.execute("DELETE FROM segment_offsets WHERE name = ?", (name,))
    try:
        tmps = [n for n in os.listdir(directory) if n.startswith(".") and n.endswith(".tmp")]
    except FileNotFoundError:
        return
    for name in tmps:
        _drop_stale_tmp(directory / name)


def _drop_stale_tmp(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if time.time() - os.fstat(fd).st_mtime < _STALE_TMP_S:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def ingest(
    conn: sqlite3.Connection, layout: Layout, directory: Path, *, store_features: bool
) -> IngestResult:
    """Commit every complete line of the segment files in ``directory`` not yet in the
    database, and delete finished files (see the module docstring)."""
    directory = Path(directory)
    names = _segments(directory)
    rows = read = deleted = torn = 0
    for name in names:
        segment = _ingest_one(conn, layout, directory, name, store_features)
        rows += segment.rows
        read += segment.read
        deleted += segment.deleted
        torn += segment.torn
    _drop_stale(conn, directory, names)
    return IngestResult(rows=rows, segments_read=read, segments_deleted=deleted,
                        torn_lines=torn)


def pending_bytes(conn: sqlite3.Connection, directory: Path) -> int:
    """Bytes in ``directory``'s segment files that are not in the database yet."""
    offsets = dict(conn.execute('SELECT name, "offset" FROM segment_offsets').fetchall())
    total = 0
    for name in _segments(Path(directory)):
        try:
            size = os.stat(Path(directory) / name).st_size
        except FileNotFoundError:
            continue
        total += max(0, size - int(offsets.get(name, 0)))
    return total


class SegmentSource(Protocol):
    """What :class:`IngestLoop` drives (a :class:`~.collector.Collector` with segments)."""

    def ingest_segments(self) -> IngestResult: ...


class IngestLoop:
    """Calls ``source.ingest_segments()`` every ``interval_s`` on its own thread.

    Errors are logged, not raised (once per run of failures, and again on recovery); the
    next round retries. :meth:`stop` runs one last ingest. Stop it before closing the
    collector.
    """

    def __init__(self, source: SegmentSource, *, interval_s: float = 0.1) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or not (
            0 < interval_s < float("inf")
        ):
            raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        self.source = source
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None:
            raise RuntimeError("the ingest loop was already started")
        self._thread = threading.Thread(target=self._run, name="kpigate-segment-ingest",
                                        daemon=True)
        self._thread.start()

    def _once(self) -> None:
        try:
            self.source.ingest_segments()
        except Exception as exc:
            if not self._failing:
                logger.error("ingesting prediction segments failed (%s: %s); retrying "
                             "every %g s", type(exc).__name__, exc, self.interval_s)
            self._failing = True
            return
        if self._failing:
            logger.info("ingesting prediction segments works again")
        self._failing = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._once()
        self._once()  # the final ingest, on this thread's own connection

    def stop(self) -> None:
        """Stop the thread after one last ingest, and wait for it. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
