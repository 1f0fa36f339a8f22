"""The operator's worker processes: one per ModelRollout with work to do.

Each rollout's controller runs in its own process (:mod:`.operator_worker`) rather than a
thread of the operator, for three reasons: MLflow reads its tracking URI and credentials
from the process environment, and every ModelRollout names its own (a Secret); a worker
that crashes or leaks takes no other rollout with it; and the worker is the very code path
of ``mlflow deployments create -t kpigate:/seldon/NS -C wait=true``, already proven to
resume from the cluster's state after any crash.

A worker dies with the operator (``PR_SET_PDEATHSIG``), so a killed operator never leaves
controllers behind that a new leader would duplicate. A worker that exits with a usage
error (exit code 2: a bad spec or policy) is not restarted for that generation of its
ModelRollout: the error is reported until the spec changes. Any other death is restarted
with an exponential backoff (1 s doubling to 60 s) and counted.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_kpigate.core.exit_codes import USAGE
from mlflow_kpigate.deploy.operator_worker import ERROR_FILE, WORKER_MODULE
from mlflow_kpigate.deploy.seldon_rollout import workdir

log = logging.getLogger("kpigate.operator")
Key = tuple[str, str]  # (namespace, name)
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the operator dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Worker:
    generation: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    not_before: float = 0.0
    backoff: float = BACKOFF_MIN_S
    failed: str | None = None  # the usage error that stopped this generation
    started: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerView:
    """What the reconciler needs to know of one worker."""

    running: bool
    restarts: int
    failed: str | None


class WorkerPool:
    """Start, watch and stop the workers (one per ``(namespace, name)``)."""

    def __init__(self, kube_args: list[str], state_dir: Path | None,
                 on_restart: Callable[[Key], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube_args = kube_args
        self.state_dir = state_dir
        self.on_restart = on_restart or (lambda _k: None)
        self.clock = clock
        self._workers: dict[Key, _Worker] = {}

    def tracked(self) -> list[Key]:
        """Rollouts with a worker entry (running, backing off or failed)."""
        return list(self._workers)

    def ensure(self, key: Key, generation: int, env: Mapping[str, str]) -> WorkerView:
        """Keep a worker running for ``key``: start one if none runs (after the backoff
        of a crashed one); a usage failure for this ``generation`` is not retried."""
        worker = self._workers.get(key)
        if worker is None or (worker.generation != generation and worker.failed):
            worker = self._workers[key] = _Worker(generation)
        worker.generation = generation
        if worker.proc is not None and worker.proc.poll() is None:
            return WorkerView(True, worker.restarts, None)
        if worker.proc is not None:
            self._reap(key, worker)
        if worker.failed is None and self.clock() >= worker.not_before:
            worker.proc = self._spawn(key, env)
            worker.started.append(self.clock())
        return WorkerView(worker.proc is not None and worker.proc.poll() is None,
                          worker.restarts, worker.failed)

    def _reap(self, key: Key, worker: _Worker) -> None:
        assert worker.proc is not None
        code = worker.proc.returncode
        worker.proc = None
        if code == USAGE:
            worker.failed = self._error_text(key) or "the worker stopped on a usage error"
            log.error("%s/%s: %s", *key, worker.failed)
            return
        if code == 0:
            # It finished what it found to do; if there is more, start again soon.
            worker.backoff = BACKOFF_MIN_S
            return
        worker.restarts += 1
        worker.not_before = self.clock() + worker.backoff
        log.warning("%s/%s: worker exited with %s; restarting in %.0fs", *key, code,
                    worker.backoff)
        worker.backoff = min(BACKOFF_MAX_S, worker.backoff * 2)
        self.on_restart(key)

    def _error_text(self, key: Key) -> str | None:
        path = workdir(key[0], key[1], self.state_dir) / ERROR_FILE
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return None
        return lines[1] if len(lines) > 1 else None

    def _spawn(self, key: Key, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        namespace, name = key
        args = [sys.executable, "-m", WORKER_MODULE, "--namespace", namespace,
                "--name", name, *self.kube_args]
        log.info("%s/%s: starting its worker", namespace, name)
        # stdout/stderr are the operator's: `kubectl logs` shows every rollout's log.
        return subprocess.Popen(args, env=dict(env), stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent, close_fds=True)

    def stop(self, key: Key, grace_s: float = 20.0) -> None:
        """Stop ``key``'s worker (SIGTERM, then SIGKILL after ``grace_s``) and forget it."""
        worker = self._workers.pop(key, None)
        if worker is not None and worker.proc is not None:
            _terminate([worker.proc], grace_s)

    def stop_all(self, grace_s: float = 20.0) -> None:
        """Stop every worker."""
        procs = [w.proc for w in self._workers.values() if w.proc is not None]
        self._workers.clear()
        _terminate(procs, grace_s)


def _terminate(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


def worker_env(base: Mapping[str, str], tracking_uri: str, credentials: Mapping[str, str],
               token_files: Mapping[str, Path]) -> dict[str, str]:
    """A worker's environment: the operator's, minus what is the operator's own, plus the
    rollout's tracking URI, MLflow credentials and collector token files."""
    from mlflow_kpigate.backends.seldon.collector_credentials import (
        INGEST_TOKEN_ENV,
        OPERATOR_TOKEN_ENV,
    )

    env = {k: v for k, v in base.items() if k not in ("KPIGATE_METRICS_PORT",)}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.update(credentials)
    # Without a tokenSecretRef the worker keeps the operator's own token files, if its
    # Deployment mounts the namespace's collector tokens.
    for scope, variable in (("operator", OPERATOR_TOKEN_ENV), ("ingest", INGEST_TOKEN_ENV)):
        if scope in token_files:
            env[variable] = str(token_files[scope])
    return env


def private_dir(path: Path) -> Path:
    """``path`` created readable by this user only (token files go there)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
