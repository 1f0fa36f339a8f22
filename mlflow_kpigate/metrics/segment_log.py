"""The router's append-only segment files: a prediction is written before it is answered.

Each router process owns one :class:`SegmentWriter`. :meth:`SegmentWriter.append` encodes
the predictions (:mod:`.segment_format`) and hands the whole buffer to the kernel with
``os.write`` before it returns, so once the caller answers the request the prediction is in
the kernel's page cache: **a crash of any process, SIGKILL included, loses no answered
prediction**. :mod:`.segment_ingest` later commits the lines into ``predictions.db``.

Files: ``<directory>/<writer>-<time_ns:020d>-<pid>.seg``, names sorting by creation for one
writer name. A writer creates its file under a hidden temporary name, takes
``flock(LOCK_EX)`` on it and only then renames it into place, and keeps the lock while the
file is its current segment: an ingester that can take the lock knows no one will append
to the file again (its writer closed it after rotating, or died: the kernel drops an
``flock`` with the process), so it may ingest the rest and delete the file. Create the
writer in the process that appends (after any fork): the lock belongs to the open file.

Rotation: once the current file holds ``max_bytes`` or more, the next append first opens a
new segment; the old one is closed (and so unlocked) only after the new one is in place.

A failed write (``ENOSPC``, ``EIO``, ``EFBIG``…, or the ``fdatasync`` of ``"always"``) is
cut back off the file with ``ftruncate`` to the size before that append, so no torn line
is left, and :class:`~.collector_db.CollectorError` is raised with one line naming the
file and the errno. The next append then starts a new segment: an ingester may have read
complete lines of the failed append before they were cut (a short write is visible until
then), and its stored offset would point past the cut, into whatever came next. Such
lines, and the complete ones left when even the truncation fails (the ingester drops the
torn tail), are predictions the caller was told were not recorded; they are rare and
harmless to the KPIs (counted as requests, never labelled).

Durability against a machine crash or power loss, by ``fsync`` policy
(:data:`FSYNC_POLICIES`, :meth:`SegmentWriter.describe`):

* ``"never"``: page cache only. Survives any process crash; a machine crash loses what the
  OS had not yet written back (typically up to ~30 s of predictions).
* ``"interval"`` (default): a daemon thread ``fdatasync``s the current segment every
  ``fsync_interval_s`` when something was appended since; a machine crash loses at most
  about that interval of answered predictions (plus the sync's own duration).
* ``"always"``: ``fdatasync`` inside :meth:`~SegmentWriter.append`, before it returns:
  nothing answered is lost even on power loss, at the cost of one disk flush per request.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from mlflow_kpigate.core.records import Prediction, is_number
from mlflow_kpigate.metrics.collector_db import CollectorError
from mlflow_kpigate.metrics.collector_writer import check_predictions
from mlflow_kpigate.metrics.segment_format import encode_predictions

__all__ = ["FSYNC_POLICIES", "SEGMENT_SUFFIX", "SegmentWriter"]

logger = logging.getLogger(__name__)

#: What each ``fsync`` policy guarantees (every policy survives any process crash).
FSYNC_POLICIES: dict[str, str] = {
    "never": (
        "page cache only: no answered prediction is lost by a process crash (SIGKILL "
        "included); a machine crash or power loss can lose what the OS had not written "
        "back (typically up to ~30 s)"
    ),
    "interval": (
        "fdatasync every {interval} s when something was appended: no answered prediction "
        "is lost by a process crash; a machine crash loses at most about the last {interval} s"
    ),
    "always": (
        "fdatasync before each append returns: no answered prediction is lost by a process "
        "crash or a machine crash, at the cost of a disk flush per request"
    ),
}
#: File name suffix of a segment (a writer's temporary file is hidden and has another).
SEGMENT_SUFFIX = ".seg"
_WRITER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")


def _errno_name(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    return f"{code}: {exc.strerror or exc}"


class SegmentWriter:
    """Appends predictions to this process's current segment file (thread-safe)."""

    def __init__(
        self,
        directory: Path,
        writer: str,
        *,
        fsync: str = "interval",
        fsync_interval_s: float = 1.0,
        max_bytes: int = 64 * 2**20,
    ) -> None:
        if not isinstance(writer, str) or not _WRITER_NAME.fullmatch(writer):
            raise ValueError(
                f"writer must be a name of letters, digits, '_' and '.' (not starting with "
                f"'.'), such as 'w0'; got {writer!r}"
            )
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {sorted(FSYNC_POLICIES)}, got {fsync!r}")
        if not (is_number(fsync_interval_s) and math.isfinite(fsync_interval_s)
                and fsync_interval_s > 0):
            raise ValueError(f"fsync_interval_s must be a finite number > 0, "
                             f"got {fsync_interval_s!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.directory = Path(directory)
        self.writer = writer
        self.fsync = fsync
        self.fsync_interval_s = float(fsync_interval_s)
        self.max_bytes = max_bytes
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._last_ns = 0
        self._closed = False
        self._rotate = False  # set by a failed append: the next one starts a new file
        self._dirty = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd, self._path = self._open_segment()
        self._size = 0
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(
                target=self._sync_loop, name=f"kpigate-segment-sync:{writer}", daemon=True
            )
            self._syncer.start()

    @property
    def path(self) -> Path:
        """The current segment file."""
        return self._path

    def describe(self) -> str:
        """What this writer's ``fsync`` policy guarantees, in one sentence."""
        return FSYNC_POLICIES[self.fsync].format(interval=f"{self.fsync_interval_s:g}")

    def _open_segment(self) -> tuple[int, Path]:
        # Names sort by creation for one writer even if the clock repeats a value.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        name = f"{self.writer}-{self._last_ns:020d}-{self._pid}{SEGMENT_SUFFIX}"
        path = self.directory / name
        # Locked before it gets its visible name: an ingester must never see the file
        # unlocked (it would take it for a dead writer's empty segment and delete it).
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return fd, path

    def append(self, rows: Sequence[Prediction]) -> None:
        """Write ``rows`` to the current segment before returning (see the module doc).

        ``ValueError`` if an item is not a :class:`Prediction`; :class:`CollectorError`
        (one line: the file and the errno) if the write failed, in which case nothing of
        this append is left in the file.
        """
        items = list(rows)
        check_predictions(items)
        data = encode_predictions(items)
        with self._lock:
            if self._closed:
                raise CollectorError(f"the segment writer {self.writer!r} is closed")
            if os.getpid() != self._pid:
                raise CollectorError(
                    f"the segment writer {self.writer!r} was created in process "
                    f"{self._pid}; create one per process (after fork)"
                )
            if not data:
                return
            if self._rotate or self._size >= self.max_bytes:
                self._rotate_locked()
            self._write_locked(data, len(items))

    def _rotate_locked(self) -> None:
        try:
            new_fd, new_path = self._open_segment()
        except OSError as exc:
            raise CollectorError(
                f"cannot start a new prediction segment in {self.directory} "
                f"({_errno_name(exc)})"
            ) from exc
        old_fd, old_path = self._fd, self._path
        self._fd, self._path, self._size, self._rotate = new_fd, new_path, 0, False
        try:
            if self.fsync != "never" and self._dirty:
                os.fdatasync(old_fd)
        except OSError as exc:
            logger.warning("fdatasync of the rotated segment %s failed (%s)", old_path,
                           _errno_name(exc))
        finally:
            self._dirty = False
            os.close(old_fd)  # also releases its flock: the ingester may finish it

    def _write_locked(self, data: bytes, count: int) -> None:
        start = self._size
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self.fsync == "always":
                os.fdatasync(self._fd)
        except OSError as exc:
            # Later appends go to a new file: see the module docstring for why.
            self._rotate = True
            cut = f"the file was cut back to {start} bytes"
            try:
                os.ftruncate(self._fd, start)
            except OSError as trunc_exc:
                cut = f"cutting it back failed ({_errno_name(trunc_exc)})"
            raise CollectorError(
                f"could not append {count} predictions to {self._path} "
                f"({_errno_name(exc)}); {cut}"
            ) from exc
        self._size = start + len(data)
        self._dirty = True

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            with self._lock:
                if self._closed or not self._dirty:
                    continue
                self._dirty = False
                # A duplicate keeps the file open if a rotation closes it meanwhile, so
                # the flush below never runs on a closed (or reused) descriptor.
                fd, path = os.dup(self._fd), self._path
            try:
                os.fdatasync(fd)
            except OSError as exc:
                logger.warning("fdatasync of the prediction segment %s failed (%s)", path,
                               _errno_name(exc))
            finally:
                os.close(fd)

    def close(self) -> None:
        """Flush (unless ``fsync="never"``) and close the current segment. Idempotent.

        :class:`CollectorError` if the final ``fdatasync`` failed (the file is closed
        anyway).
        """
        self._stop.set()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self.fsync != "never" and self._dirty and os.getpid() == self._pid:
                    os.fdatasync(self._fd)
            except OSError as exc:
                raise CollectorError(
                    f"could not flush the prediction segment {self._path} "
                    f"({_errno_name(exc)})"
                ) from exc
            finally:
                os.close(self._fd)

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SegmentWriter({str(self.directory)!r}, {self.writer!r}, fsync={self.fsync!r})"
