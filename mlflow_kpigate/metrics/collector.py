"""The embedded Metrics Collector: a prediction log and label join in SQLite.

The router logs one :class:`Prediction` per served (or shadow-scored) input row; labels
arrive later by request id (:meth:`Collector.add_labels`); the controller asks for
:meth:`Collector.stage_samples`, the per-stage :class:`~mlflow_kpigate.core.samples.StageSample`
the gate consumes. Router and controller are separate processes with separate
``Collector`` instances on the same file, which SQLite's WAL mode lets one read while the
other writes. :meth:`Collector.purge` deletes rows past the retention.

With ``segments=DIR`` the collector also ingests the router's segment files in ``DIR``
(each router process appends its predictions there before answering,
:mod:`.segment_log`): :meth:`Collector.ingest_segments` commits them exactly once, and
:meth:`Collector.flush` (so :meth:`~Collector.add_labels` and
:meth:`~Collector.stage_samples`) ingests first, so a label posted right after its
answer finds its prediction.

:class:`Collector` is the facade over one file; each part lives in its own module:

* :mod:`.collector_db`: connections, transactions, durability;
* :mod:`.collector_schema`: tables, binning check, the columns of the policy's fields
  (and what a row keeps: never the request's features unless ``store_features=True``);
* :mod:`.collector_writer`: the queue and writer thread behind :meth:`Collector.log`, and
  :meth:`Collector.log_atomically`;
* :mod:`.collector_rows`: how predictions become rows (binning at insert time, unknown
  latencies, labels copied onto late rows);
* :mod:`.collector_labels`: the label join (the first label wins);
* :mod:`.collector_reader`: stage samples in SQL, and retention;
* :mod:`.segment_format`, :mod:`.segment_log`: the router's append-only segment files
  (one JSON line per prediction, written before the answer);
* :mod:`.segment_ingest`: committing segment files into the log exactly once, and
  :class:`~.segment_ingest.IngestLoop`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from mlflow_kpigate.core.records import Label, LabelResult, Prediction
from mlflow_kpigate.core.records import is_number as _is_number
from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.collector_db import CollectorError, Connections
from mlflow_kpigate.metrics.collector_labels import check_labels, join_labels
from mlflow_kpigate.metrics.collector_reader import LogReader
from mlflow_kpigate.metrics.collector_schema import open_schema
from mlflow_kpigate.metrics.collector_writer import PredictionWriter
from mlflow_kpigate.metrics.segment_ingest import IngestResult, ingest, pending_bytes

__all__ = ["Collector", "CollectorError", "IngestResult"]


class Collector:
    """Prediction log and label join for one deployment (a SQLite file, WAL mode).

    Thread-safe. ``spec`` fixes which segment fields and business values are kept and the
    score/latency binning; the binning must match the file's (``ValueError`` otherwise),
    while new segment fields or value names are added as columns (older rows read as
    ``"unknown"`` / no value). ``segments`` is the directory of the router's segment
    files (:mod:`.segment_log`) this instance ingests; ``None``: none.
    """

    def __init__(
        self,
        db_path: Path,
        spec: AggregateSpec,
        *,
        retention_s: float = 7 * 86400,
        store_features: bool = False,
        flush_interval_s: float = 0.1,
        batch_size: int = 500,
        segments: Path | None = None,
    ) -> None:
        if not isinstance(spec, AggregateSpec):
            raise ValueError(f"spec must be an AggregateSpec, not {type(spec).__name__}")
        if not (_is_number(retention_s) and retention_s > 0):
            raise ValueError(f"retention_s must be a number > 0, got {retention_s!r}")
        if not (_is_number(flush_interval_s) and flush_interval_s >= 0):
            raise ValueError(f"flush_interval_s must be a number >= 0, got {flush_interval_s!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.db_path = Path(db_path)
        self.spec = spec
        self.retention_s = float(retention_s)
        self.store_features = bool(store_features)
        self.flush_interval_s = float(flush_interval_s)
        self.batch_size = batch_size
        self.segments = None if segments is None else Path(segments)

        self._connections = Connections(self.db_path)
        self.db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Private to the user (SQLite gives its -wal and -shm files this file's mode).
        os.close(os.open(self.db_path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._layout = open_schema(self._connections.this_thread(), self.db_path, spec)
        self._writer = PredictionWriter(
            self._connections, self._layout, store_features=self.store_features,
            flush_interval_s=self.flush_interval_s, batch_size=batch_size,
        )
        self._reader = LogReader(self._connections, self._layout)

    # -- writing ------------------------------------------------------------------------

    def log(self, predictions: Sequence[Prediction]) -> None:
        """Queue predictions for writing (returns at once; a writer thread commits them).

        If the writer failed, this (and :meth:`flush`, :meth:`add_labels`, :meth:`close`)
        raises :class:`CollectorError` naming the cause; the unwritten rows stay queued.
        """
        self._writer.log(predictions)

    def flush(self) -> None:
        """Block until every prediction logged so far is committed (with ``segments``:
        and every complete line of the segment files, :meth:`ingest_segments`)."""
        self._writer.flush()
        if self.segments is not None:
            self.ingest_segments()

    def ingest_segments(self) -> IngestResult:
        """Commit what the segment files hold beyond the log, on this thread's connection,
        and delete finished files (nothing to do without ``segments``)."""
        if self.segments is None:
            return IngestResult()
        return ingest(self._connections.this_thread(), self._layout, self.segments,
                      store_features=self.store_features)

    def log_atomically(
        self, decide: Callable[[sqlite3.Connection], Sequence[Prediction]]
    ) -> int:
        """Write the predictions ``decide`` returns in one transaction with its own SQL.

        ``decide(conn)`` runs inside an immediate (write-locked) transaction on this
        thread's connection to the collector's file; it may read and write tables of its
        own there and returns the predictions to insert. Both commit together or, if
        anything raises, neither does. Unlike :meth:`log` this writes synchronously and
        bypasses the queue (predictions queued earlier by :meth:`log` may commit after).
        Returns the number of predictions written.
        """
        return self._writer.log_atomically(decide)

    def add_labels(self, labels: Sequence[Label]) -> LabelResult:
        """Join labels to logged predictions by request id.

        Flushes first, so a label for a request this instance just served is never
        "unknown". A label applies to every row with its id (the served row and, in
        shadow, the candidate's copy). Validates everything before writing anything
        (``ValueError`` naming the item). The first label of an id wins; later ones are
        counted as duplicates and ignored.
        """
        items = list(labels)
        checked = check_labels(items, self._layout.value_cols)
        self.flush()
        if not checked:
            return LabelResult(0, (), 0)
        return join_labels(self._connections.this_thread(), self._layout.value_cols, checked)

    # -- reading ------------------------------------------------------------------------

    def stage_samples(
        self, now: float, maturity_s: float, *, since: float | None = None
    ) -> list[StageSample]:
        """One :class:`StageSample` per stage index seen, in stage order.

        Requests, errors and latency count every row of a role (shadow copies count for
        the candidate); the labelled KPIs use rows with a label and a prediction that
        were served at or before ``now - maturity_s``. ``since`` (epoch seconds) ignores
        older rows, e.g. those of an earlier rollout in the same directory. Rows this
        instance has queued are written first.
        """
        self.flush()
        return self._reader.stage_samples(now, maturity_s, since)

    def stats(self) -> dict[str, int]:
        """Counts: ``predictions`` and ``labelled`` rows stored, ``unknown_labels``
        (cumulative, across processes), ``pending`` (queued in this instance); with
        ``segments``, ``segments_pending_bytes`` (in segment files, not yet ingested)."""
        predictions, labelled, unknown = self._reader.counts()
        out = {
            "predictions": predictions,
            "labelled": labelled,
            "unknown_labels": unknown,
            "pending": self._writer.pending(),
        }
        if self.segments is not None:
            out["segments_pending_bytes"] = pending_bytes(
                self._connections.this_thread(), self.segments)
        return out

    def purge(self, now: float) -> int:
        """Delete rows served more than ``retention_s`` before ``now``; returns how many."""
        return self._reader.purge(now, self.retention_s)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Write everything queued, stop the writer and close the database.

        Raises :class:`CollectorError` if the writer failed (the rows it could not write
        are reported, not silently dropped). Calling it again does nothing.
        """
        if self._connections.closed:
            return
        error, unwritten = self._writer.stop()
        self._connections.close()
        if error is not None:
            raise CollectorError(
                f"the collector's writer failed ({type(error).__name__}: {error}); "
                f"{unwritten} predictions were not written to {self.db_path}"
            ) from error

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Collector({str(self.db_path)!r})"
