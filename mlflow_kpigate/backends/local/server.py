"""Run the embedded router for one deployment directory: the router's main process.

``python -m mlflow_kpigate.backends.local.server DEPLOYMENT_DIR`` reads the rollout state
saved there, reserves ``127.0.0.1:<port>`` and starts, for each of the state's ``workers``
(``-C workers``, default 1):

* a router worker (:mod:`.worker`) listening on that port (``SO_REUSEPORT``): HTTP,
  routing, the baseline, the prediction log's segment, metrics;
* the worker's candidate process (:mod:`.candidate_worker`): the candidate model alone,
  reached over a Unix socket, so a candidate that hangs or exits costs the baseline's
  callers nothing.

It restarts a worker or candidate process that dies (backoff 1 s doubling to 30 s; a
candidate that stops answering pings is killed and restarted), stops the candidate
processes while the state has the candidate detached, and ingests the workers' segments
into ``predictions.db`` every 0.1 s (idempotently: a crash anywhere neither loses nor
doubles a row; see :mod:`mlflow_kpigate.metrics.segment_log`). Rows past the collector's
retention are purged at start and hourly. Children die with this process. SIGTERM or
SIGINT: workers finish their requests in flight, then the candidate processes stop, the
segments are ingested a last time, and the process exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.multiprocess import mark_process_dead

from mlflow_kpigate.backends.local.candidate_process import CandidateProcess
from mlflow_kpigate.backends.local.layout import candidate_socket, load_rollout, segments_dir
from mlflow_kpigate.backends.local.routing import RoutingKey
from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.records import PREDICTIONS_DB
from mlflow_kpigate.core.state import RolloutState

if TYPE_CHECKING:
    from mlflow_kpigate.metrics import Collector

__all__ = ["PREDICTIONS_DB", "main", "metrics_path", "serve"]

logger = logging.getLogger("mlflow_kpigate.router")

HOST = "127.0.0.1"
_PURGE_EVERY_S = 3600.0
_INGEST_EVERY_S = 0.1
_GRACE_S = 35.0  # the workers' graceful shutdown is 30 s
_BACKOFF_MAX_S = 30.0


class _Worker:
    """One worker process, restarted with backoff when it dies."""

    def __init__(self, directory: Path, index: int, metrics_dir: Path | None) -> None:
        self.directory, self.index = directory, index
        self.metrics_dir = metrics_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.backoff_s = 1.0
        self.next_start = 0.0
        self.started_at = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow_kpigate.backends.local.worker",
             str(self.directory), "--index", str(self.index),
             "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL,
            env=_worker_env(self.metrics_dir))
        self.started_at = time.monotonic()

    def check(self, now: float) -> None:
        if self.proc is None or self.proc.poll() is None:
            if self.proc is not None and now - self.started_at > 60:
                self.backoff_s = 1.0  # a minute of health forgives earlier crashes
            return
        if self.next_start == 0.0:
            # Its live gauges go; its counters stay in the sums (they never go back).
            if self.metrics_dir is not None:
                mark_process_dead(self.proc.pid, str(self.metrics_dir))
            logger.error("router worker %d exited with %s; restarting in %.0f s", self.index,
                         self.proc.returncode, self.backoff_s)
            self.next_start = now + self.backoff_s
            self.backoff_s = min(self.backoff_s * 2, _BACKOFF_MAX_S)
        elif now >= self.next_start:
            self.next_start = 0.0
            self.start()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _reserve(port: int) -> socket.socket:
    """Bind the port (``SO_REUSEPORT``, not listening): fails at once, with the reason, if
    another program holds it; the workers then listen on it with sockets of their own."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # A restarted router binds while the workers of the one that died may still be
    # finishing their requests on their sockets.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise KpigateError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
    return sock


def _worker_env(metrics_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def metrics_path(directory: Path) -> Path:
    """The workers' metric files of the deployment in ``directory`` (see below)."""
    digest = hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:16]
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / f"kpigate-{os.getuid()}-{digest}-metrics"


def _metrics_dir(directory: Path, workers: int) -> Path | None:
    """Where several workers keep their metric values (``None`` for one worker).

    prometheus_client's multiprocess files are memory-mapped: a worker that touches a new
    page of one on a full file system dies of SIGBUS. They live in ``/dev/shm`` (memory),
    not in the deployment directory, so that a full state disk costs predictions, which
    the router handles, and never the workers; emptied at start (an earlier run's files).
    """
    if workers == 1:
        return None
    path = metrics_path(directory)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    return path


def _background(collector: Collector, stop: threading.Event) -> None:
    """Ingest the segments every 0.1 s and purge old rows hourly, until ``stop``."""
    next_purge = 0.0
    while not stop.is_set():
        try:
            collector.ingest_segments()
        except Exception:
            logger.warning("ingesting the prediction log's segments failed", exc_info=True)
        if time.monotonic() >= next_purge:
            next_purge = time.monotonic() + _PURGE_EVERY_S
            try:
                removed = collector.purge(time.time())
                if removed:
                    logger.info("purged %d predictions past the retention period", removed)
            except Exception:
                logger.warning("purging old predictions failed", exc_info=True)
        stop.wait(_INGEST_EVERY_S)


def _collector(directory: Path) -> Collector:
    """The prediction log, ingesting the workers' segments."""
    from mlflow_kpigate.kpis import AggregateSpec
    from mlflow_kpigate.metrics import Collector

    _, _, policy = load_rollout(directory)
    return Collector(directory / PREDICTIONS_DB, AggregateSpec.from_policy(policy),
                     segments=segments_dir(directory))


def _candidates(directory: Path, state: RolloutState) -> list[CandidateProcess]:
    return [
        CandidateProcess(candidate_socket(directory, i), state.candidate_uri,
                         state.tracking_uri, state.candidate_version, state.threshold,
                         directory / f"candidate-{i}.log")
        for i in range(state.workers)
    ]


def serve(directory: Path) -> None:
    """Serve deployment ``directory`` until SIGTERM/SIGINT (blocks; see module doc)."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UsageError(f"deployment directory {directory} does not exist")
    store = RolloutStore(directory)
    state = store.require()
    try:
        RoutingKey.parse(state.routing_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    sock = _reserve(int(state.port))
    stopping = threading.Event()

    def on_signal(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    candidates = _candidates(directory, state)
    metrics_dir = _metrics_dir(directory, state.workers)
    workers = [_Worker(directory, i, metrics_dir) for i in range(state.workers)]
    candidates_on = False
    collector: Collector | None = None
    background: threading.Thread | None = None
    try:
        # The children first: loading their models is most of the start-up, and this
        # process's own imports (the policy model, numpy) need not delay it.
        for worker in workers:
            worker.start()
        if _candidate_wanted(store, state):
            for c in candidates:
                c.start()
            candidates_on = True
        collector = _collector(directory)
        background = threading.Thread(target=_background, args=(collector, stopping),
                                      name="kpigate-ingest", daemon=True)
        background.start()
        logger.info("router for %s on http://%s:%d: %d worker(s) (baseline %s, candidate %s)",
                    state.name, HOST, state.port, state.workers, state.baseline_version,
                    state.candidate_version)
        next_state_check = time.monotonic() + 1.0
        while not stopping.is_set():
            now = time.monotonic()
            for worker in workers:
                worker.check(now)
            if now >= next_state_check:  # about once a second: a store read, pings
                next_state_check = now + 1.0
                wanted = _candidate_wanted(store, state)
                if wanted and not candidates_on:
                    for c in candidates:
                        c.start()
                elif not wanted and candidates_on:
                    logger.info("the candidate is detached: stopping its processes")
                    for c in candidates:
                        c.stop(5.0)
                elif wanted:
                    for c in candidates:
                        c.check()
                candidates_on = wanted
            stopping.wait(0.2)
    finally:
        deadline = time.monotonic() + _GRACE_S
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(deadline)
        for c in candidates:
            c.stop(5.0)
        sock.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        stopping.set()
        if background is not None:
            background.join()
        if collector is not None:
            try:
                collector.ingest_segments()
            finally:
                collector.close()
    logger.info("router for %s stopped; prediction log ingested", state.name)


def _candidate_wanted(store: RolloutStore, state: RolloutState) -> bool:
    """Whether the candidate's processes should run: the state has it attached."""
    try:
        current = store.require()
    except Exception:  # an unreadable state keeps what runs; the workers decide traffic
        return True
    return bool(current.candidate_version == state.candidate_version
                and current.weights.candidate_attached)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_kpigate.backends.local.server",
        description="Serve a kpigate deployment's baseline and candidate on 127.0.0.1.",
    )
    parser.add_argument("directory", type=Path, help="the deployment directory (state.db)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.directory)
    except KpigateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
