"""Supervising the candidate's worker process from the router's main process.

:class:`CandidateProcess` starts ``python -m mlflow_kpigate.backends.local.candidate_worker``
(its output appended to a log file), tells when it answers (:meth:`~CandidateProcess.
wait_ready`) and keeps it running: :meth:`~CandidateProcess.check`, called about once a
second, restarts a worker that exited (a crashing model, the hang watchdog) or that stops
answering pings within :data:`PING_TIMEOUT_S` (it is SIGKILLed first). Restarts back off
exponentially (1, 2, 4 … seconds, at most :data:`MAX_BACKOFF_S`); the backoff starts over
once a worker has run :data:`HEALTHY_AFTER_S` seconds. ``check`` never sleeps: it starts
a due restart and returns. Everything here is blocking, synchronous code.

The worker is started with this process's pid, so it dies with it (:mod:`.process_tie`).
Because Linux ties that to the *thread* that started it, call :meth:`~CandidateProcess.
start` and :meth:`~CandidateProcess.check` from a thread that lives as long as the
process (the main thread).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow_kpigate.backends.local.candidate_protocol import (
    EXIT_HUNG,
    PingRequest,
    Pong,
    ProtocolError,
    encode_frame,
    recv_frame,
)

__all__ = ["HEALTHY_AFTER_S", "MAX_BACKOFF_S", "PING_TIMEOUT_S", "CandidateProcess", "ping"]

logger = logging.getLogger(__name__)

PING_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0
#: How long a starting worker may take to load its model before it counts as stuck.
START_TIMEOUT_S = 300.0
_SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, one of them the terminating NUL
_WORKER = "mlflow_kpigate.backends.local.candidate_worker"


def ping(socket_path: str, timeout_s: float) -> bool:
    """Whether a worker answers a ping on ``socket_path`` within about ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(socket_path)
            sock.sendall(encode_frame(PingRequest().to_wire()))
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            Pong.from_wire(recv_frame(sock))
    except (OSError, ProtocolError):  # includes socket timeouts
        return False
    return True


class CandidateProcess:
    """One candidate worker process and its restarts (see module doc)."""

    def __init__(self, socket_path: str | os.PathLike[str], model_uri: str,
                 tracking_uri: str, version: str, threshold: float,
                 log_path: str | os.PathLike[str], *, threads: int = 1,
                 hang_after_s: float = 30.0) -> None:
        self.socket_path = os.fspath(socket_path)
        if len(os.fsencode(self.socket_path)) > _SOCKET_PATH_MAX:
            raise ValueError(f"socket path {self.socket_path} is longer than "
                             f"{_SOCKET_PATH_MAX} bytes, the limit of a Unix socket path")
        self.model_uri, self.tracking_uri = model_uri, tracking_uri
        self.version, self.threshold = version, threshold
        self.log_path = Path(log_path)
        self.threads, self.hang_after_s = threads, hang_after_s
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._ready = False
        self._failures = 0  # consecutive short-lived workers: the backoff's exponent
        self._restart_at: float | None = None
        self._restarts = 0
        self._stopped = True

    @property
    def pid(self) -> int | None:
        """The running worker's pid (``None`` while none runs)."""
        return self._process.pid if self._process is not None else None

    @property
    def restarts(self) -> int:
        """How many times a worker was started again after one failed."""
        return self._restarts

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", _WORKER, "--socket", self.socket_path,
            "--model-uri", self.model_uri, "--tracking-uri", self.tracking_uri,
            "--version", self.version, "--threshold", repr(float(self.threshold)),
            "--threads", str(self.threads), "--hang-after", repr(float(self.hang_after_s)),
            "--parent-pid", str(os.getpid()),
        ]

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, close_fds=True)
        self._started_at = time.monotonic()
        self._ready = False
        self._restart_at = None
        logger.info("candidate %s worker started (pid %d, log %s)", self.version,
                    self._process.pid, self.log_path)

    def start(self) -> None:
        """Start the worker (no-op if one runs)."""
        self._stopped = False
        if self._process is None or self._process.poll() is not None:
            self._spawn()

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the worker answers a ping (True), exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                return False
            if ping(self.socket_path, min(1.0, max(deadline - time.monotonic(), 1e-3))):
                self._ready = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def check(self) -> None:
        """Restart the worker if it exited or stopped answering (call about once a
        second; returns at once, a restart that is not due yet waits for a later call)."""
        if self._stopped:
            return
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self._restarts += 1
                self._spawn()
            return
        process = self._process
        if process is None:
            return
        code = process.poll()
        if code is not None:
            self._failed(f"exited with {_describe_exit(code)}")
            return
        if ping(self.socket_path, PING_TIMEOUT_S):
            self._ready = True
            return
        try:
            # A dying process closes its sockets before it can be waited for.
            code = process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        else:
            self._failed(f"exited with {_describe_exit(code)}")
            return
        if self._ready:
            reason = f"did not answer a ping within {PING_TIMEOUT_S:g} s"
        elif now - self._started_at > START_TIMEOUT_S:
            reason = f"did not start answering within {START_TIMEOUT_S:g} s"
        else:
            return  # still loading its model
        self._kill(process)
        self._failed(f"{reason}; killed it")

    def _failed(self, reason: str) -> None:
        assert self._process is not None
        ran = time.monotonic() - self._started_at
        if ran >= HEALTHY_AFTER_S:
            self._failures = 0
        delay = min(2.0 ** self._failures, MAX_BACKOFF_S)
        self._failures += 1
        logger.error("candidate %s worker (pid %d) %s after %.1f s; restarting in %g s "
                     "(log: %s)", self.version, self._process.pid, reason, ran, delay,
                     self.log_path)
        self._process = None
        self._restart_at = time.monotonic() + delay

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a kernel-stuck process (D state)
            logger.error("candidate worker %d did not die after SIGKILL", process.pid)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the worker, SIGKILL it after ``grace_s``; no restarts after this."""
        self._stopped = True
        self._restart_at = None
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("candidate worker %d did not stop within %g s; killing it",
                           process.pid, grace_s)
            self._kill(process)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    if code == EXIT_HUNG:
        return f"code {code} (a predict hung)"
    return f"code {code}"
