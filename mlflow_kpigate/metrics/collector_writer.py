"""The collector's write path: a queue of predictions and the one thread that commits it.

**Writes are queued.** :meth:`PredictionWriter.log` only appends to an in-memory queue;
one writer thread commits batches (of up to ``batch_size``, waiting up to
``flush_interval_s`` for a fuller one unless someone flushes). Nothing is dropped:
:meth:`~PredictionWriter.stop` lets the thread drain the queue, and if the thread fails the
unwritten rows stay queued, every later :meth:`~PredictionWriter.log`,
:meth:`~PredictionWriter.flush` and :meth:`~PredictionWriter.log_atomically` raises
:class:`CollectorError` naming the cause, and :meth:`~PredictionWriter.stop` reports them.

:meth:`PredictionWriter.log_atomically` is the synchronous alternative: it writes
predictions in one transaction with a caller's own statements on the same file (the
collector service's pending CloudEvent halves), so neither can be committed without the
other.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from mlflow_kpigate.core.records import Prediction
from mlflow_kpigate.metrics.collector_db import CollectorError, Connections, transaction
from mlflow_kpigate.metrics.collector_rows import insert_predictions
from mlflow_kpigate.metrics.collector_schema import Layout

__all__ = ["PredictionWriter", "check_predictions"]


def check_predictions(items: Sequence[object]) -> None:
    """``ValueError`` naming the first item that is not a :class:`Prediction`."""
    for i, item in enumerate(items):
        if not isinstance(item, Prediction):
            raise ValueError(f"predictions[{i}] must be a Prediction, not "
                             f"{type(item).__name__}")


class PredictionWriter:
    """Queues predictions and commits them from one thread, started on the first row."""

    def __init__(
        self,
        connections: Connections,
        layout: Layout,
        *,
        store_features: bool,
        flush_interval_s: float,
        batch_size: int,
    ) -> None:
        self._connections = connections
        self._layout = layout
        self._store_features = store_features
        self._flush_interval_s = flush_interval_s
        self._batch_size = batch_size
        self._cond = threading.Condition()
        self._queue: deque[Prediction] = deque()
        self._enqueued = 0
        self._committed = 0
        self._flush_requested = False
        self._closing = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _check_usable(self) -> None:
        db_path = self._connections.db_path
        if self._error is not None:
            raise CollectorError(
                f"the collector's writer failed ({type(self._error).__name__}: {self._error}); "
                f"{len(self._queue)} predictions are queued but not written to {db_path}"
            ) from self._error
        if self._closing:
            raise CollectorError(f"the collector for {db_path} is closed")

    def log(self, predictions: Sequence[Prediction]) -> None:
        """Queue predictions for writing (returns at once; the thread commits them)."""
        items = list(predictions)
        check_predictions(items)
        if not items:
            with self._cond:
                self._check_usable()
            return
        with self._cond:
            self._check_usable()
            self._queue.extend(items)
            self._enqueued += len(items)
            if self._thread is None:
                # Started lazily: a reader-only instance (the controller) needs no thread.
                name = f"kpigate-collector:{self._connections.db_path.name}"
                self._thread = threading.Thread(target=self._run, name=name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Block until every prediction logged so far is committed."""
        with self._cond:
            self._check_usable()
            target = self._enqueued
            if self._committed >= target:
                return
            self._flush_requested = True
            self._cond.notify_all()
            while self._committed < target:
                if self._error is not None:
                    self._check_usable()
                self._cond.wait()

    def pending(self) -> int:
        """Predictions queued but not yet committed."""
        with self._cond:
            return self._enqueued - self._committed

    def _run(self) -> None:
        conn = self._connections.open()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                # Wait a little for a fuller batch, unless someone is waiting for it.
                deadline = time.monotonic() + self._flush_interval_s
                while (
                    len(self._queue) < self._batch_size
                    and not self._flush_requested
                    and not self._closing
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                take = min(self._batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(take)]
                if not self._queue:
                    self._flush_requested = False
            try:
                with transaction(conn):
                    self._insert(conn, batch)
            except BaseException as exc:
                with self._cond:
                    # Back at the front, in order: nothing logged is dropped.
                    self._queue.extendleft(reversed(batch))
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._committed += len(batch)
                self._cond.notify_all()

    def _insert(self, conn: sqlite3.Connection, batch: Sequence[Prediction]) -> None:
        insert_predictions(conn, self._layout, batch, store_features=self._store_features)

    def log_atomically(
        self, decide: Callable[[sqlite3.Connection], Sequence[Prediction]]
    ) -> int:
        """Write the predictions ``decide`` returns in one transaction with its own SQL
        (see :meth:`mlflow_kpigate.metrics.Collector.log_atomically`)."""
        with self._cond:
            self._check_usable()
        conn = self._connections.this_thread()
        with transaction(conn):
            items = list(decide(conn))
            check_predictions(items)
            if items:
                self._insert(conn, items)
        return len(items)

    def stop(self) -> tuple[BaseException | None, int]:
        """Refuse new rows, let the thread commit what is queued, and wait for it to end.

        Returns the thread's error if it failed, and how many rows are left unwritten.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._cond:
            return self._error, len(self._queue)
