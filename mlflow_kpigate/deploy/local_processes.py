"""The processes of an embedded deployment: start its supervisor, check health, stop it.

A deployment's supervisor (:mod:`.local_supervisor`) keeps the router and the controller
running; their process ids are in ``pids.json`` in the deployment directory. The
supervisor holds an exclusive ``flock`` on ``supervisor.lock`` there for as long as it
lives (the kernel drops it when the process dies, SIGKILL included), so "is this
deployment supervised" has an answer that no reused pid can fake, and a second supervisor
of one directory gives up at once. A finished or deleted deployment's directory is
archived under ``<state_dir>/.history/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.deploy import local_procfs
from mlflow_kpigate.deploy.local_orphans import SUPERVISOR_MODULE

HEALTH_TIMEOUT_S = float(os.environ.get("KPIGATE_START_TIMEOUT", "180"))
#: How often ``wait_healthy`` asks: a refused connection costs well under a millisecond,
#: and every tick of waiting is added to ``mlflow deployments create``.
HEALTH_POLL_S = 0.05
SUPERVISOR_LOCK = "supervisor.lock"
#: The header naming the rollout (its MLflow run id) whose router answered ``/health``.
ROLLOUT_HEADER = "X-Kpigate-Rollout"


def valid_name(name: str) -> str:
    """``name`` if it can name a deployment directory; ``UsageError`` otherwise."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise UsageError(f"--name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pids(directory: Path) -> dict[str, int]:
    """Process ids of the deployment's supervisor, router and controller."""
    try:
        return {k: int(v) for k, v in json.loads((directory / "pids.json").read_text()).items()}
    except (OSError, ValueError):
        return {}


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(directory: Path) -> bool:
    """Whether the deployment's supervisor runs (it holds the supervisor lock; or, for a
    supervisor started before the lock existed, ``pids.json`` names a live one)."""
    if supervisor_locked(directory):
        return True
    sup = pids(directory).get("supervisor")
    return bool(sup) and local_procfs.runs(sup or 0, SUPERVISOR_MODULE, directory) \
        and not local_procfs.gone(sup or 0)


def supervisor_locked(directory: Path) -> bool:
    """Whether a live supervisor holds the lock of ``directory``."""
    try:
        fd = os.open(directory / SUPERVISOR_LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock just taken
    return False


def take_supervisor_lock(directory: Path, wait_s: float = 2.0) -> int | None:
    """Take the lock of ``directory``'s supervisor for this process's life: its file
    descriptor, or None when another supervisor holds it (waits ``wait_s`` for checks by
    :func:`supervisor_locked`, which hold it for an instant)."""
    fd = os.open(directory / SUPERVISOR_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.02)


def spawn_supervisor(directory: Path, restarted: str | None = None
                     ) -> subprocess.Popen[bytes]:
    """Start the supervisor of ``directory`` in its own session (it outlives the caller);
    ``restarted`` says why a supervisor is started again (recorded in the audit log).

    It is given the directory's real path (not the ``<state_dir>/<name>`` link), so its
    processes keep using their own rollout's files when the name moves to a new rollout.
    """
    directory = Path(directory).resolve()
    log = (directory / "supervisor.log").open("ab")
    extra = ["--restarted", restarted] if restarted else []
    proc = subprocess.Popen([sys.executable, "-m", SUPERVISOR_MODULE, str(directory), *extra],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    log.close()
    return proc


def wait_healthy(directory: Path, port: int, proc: subprocess.Popen[bytes],
                 rollout: str | None = None) -> None:
    """Block until the router answers ``/health``; ``KpigateError`` with its log's last line.

    With ``rollout`` (a rollout run id), only an answer from that rollout's router counts
    (its ``X-Kpigate-Rollout`` header): the router it replaces may serve the same port.
    """
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            resp = requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
            if not rollout or resp.headers.get(ROLLOUT_HEADER) == rollout:
                resp.raise_for_status()
                return
        except requests.RequestException:
            pass
        time.sleep(HEALTH_POLL_S)
    tail = ""
    log = directory / "router.log"
    if log.exists():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        tail = f": {lines[-1][:300]}" if lines else ""
    raise KpigateError(f"the router did not become healthy on 127.0.0.1:{port} within "
                       f"{HEALTH_TIMEOUT_S:.0f}s (see {log}){tail}")


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is a child of this process that ended.

    A supervisor started by ``create`` in this same process (the Python API, a benchmark)
    is its child: once it exits it stays a zombie, which ``alive`` sees, until reaped, so
    without this ``stop_processes`` would wait out its whole grace period.
    """
    with contextlib.suppress(ChildProcessError):  # not our child: its parent reaps it
        os.waitpid(pid, os.WNOHANG)


def stop_processes(directory: Path) -> None:
    """Stop the supervisor (and so the router and controller) of a deployment."""
    known = pids(directory)
    sup = known.get("supervisor")
    if sup and alive(sup):
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _reap(sup)
            if not alive(sup):
                break
            time.sleep(0.1)
    for pid in known.values():  # anything the supervisor could not stop
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    (directory / "pids.json").unlink(missing_ok=True)


def archive(directory: Path) -> Path:
    """Move a deployment directory under ``.history/`` (its name stamped with the time).

    For a ``<state_dir>/<name>`` link (:mod:`.local_layout`) the rollout directory it
    names moves, and the link is removed.
    """
    if directory.is_symlink():
        real = directory.resolve()
        directory.unlink()
        target = directory.parent / ".history" / real.name
        target.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.move(str(real), target)
        return target
    history = directory.parent / ".history"
    history.mkdir(exist_ok=True)
    target = history / f"{directory.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    shutil.move(str(directory), target)
    return target


def archives(directory: Path) -> list[Path]:
    """The archived copies of a deployment directory (:func:`archive`), newest first."""
    history = directory.parent / ".history"
    if not history.is_dir():
        return []
    return sorted((p for p in history.glob(f"{directory.name}-*") if p.is_dir()),
                  key=lambda p: p.name, reverse=True)
