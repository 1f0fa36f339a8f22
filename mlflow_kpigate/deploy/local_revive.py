"""Bring back an embedded deployment whose supervisor died.

A supervisor that is SIGKILLed, crashes or goes down with the machine leaves
``pids.json`` behind (a supervisor that stops on purpose removes it), and its router and
controller, if they still run, unsupervised. Then:

* :func:`revive` — called by every command that reads the deployment (``mlflow
  deployments get|list|predict|update``, ``kpigate status|watch|report|feedback|…``
  through :class:`~.local.LocalDeployer`) — notices it (no supervisor holds the lock and
  ``pids.json`` names one) and starts a new supervisor without waiting for it. The new
  supervisor records ``supervisor_restarted``, alerts, and takes over at the committed
  stage (:mod:`.local_supervisor`, :mod:`.local_orphans`); the rollout is not aborted.
* :func:`resume` (``kpigate resume NAME``) does the same explicitly, also for a
  deployment without ``pids.json``, and waits until the router answers.
* :func:`resume_all` (``kpigate resume --all``, e.g. at boot from a systemd unit) does it
  for every deployment under the state directory that was running.

Two commands noticing at once may both start a supervisor: only one gets the lock, the
other exits at once.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.deploy import local_processes as procs
from mlflow_kpigate.deploy.config import state_dir

__all__ = ["Resumed", "resume", "resume_all", "revive"]

log = logging.getLogger("kpigate.revive")


#: How long :func:`revive` waits for the supervisor it started to take its lock.
LOCK_WAIT_S = 10.0


def _command() -> str:
    """How this process was started, for the audit log (``kpigate status``...)."""
    argv = sys.argv or ["?"]
    prog = Path(argv[0]).name
    if prog == "__main__.py":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name.removesuffix(".__main__") if spec else Path(argv[0]).parent.name
        prog = f"python -m {module}"
    return " ".join([prog, *argv[1:3]])


def _spawn(directory: Path, restarted: str) -> None:
    """Start a supervisor and wait (briefly) until it holds the lock, so that the next
    look at the deployment sees it running rather than starting another."""
    proc = procs.spawn_supervisor(directory, restarted=restarted)
    deadline = time.monotonic() + LOCK_WAIT_S
    while not procs.running(directory) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)


def revive(directory: Path) -> bool:
    """Whether the deployment in ``directory`` is supervised, after starting a new
    supervisor if its last one died (see the module doc); does not wait for the router."""
    if procs.running(directory):
        return True
    previous = procs.pids(directory).get("supervisor")
    if not previous:
        return False  # stopped on purpose, or not started yet
    try:
        _spawn(directory, f"supervisor {previous} was gone; noticed by `{_command()}`")
    except OSError as exc:  # e.g. a full disk: reading the deployment must still work
        log.error("%s: cannot start its supervisor again: %s", directory.name, exc)
        return False
    return True


@dataclass(frozen=True)
class Resumed:
    """What :func:`resume` did for one deployment."""

    name: str
    restarted: bool
    endpoint: str


def _port(directory: Path) -> int:
    from mlflow_kpigate.backends.local.state_store import RolloutStore

    try:
        return RolloutStore(directory).require().port
    except UsageError:
        raise
    except Exception as exc:
        raise KpigateError(f"{directory.name}: the state in {directory} cannot be read "
                           f"({type(exc).__name__}: {exc})") from None


def _start(directory: Path, force: bool) -> bool:
    """Start a supervisor unless one runs; whether one was started."""
    if procs.running(directory):
        return False
    previous = procs.pids(directory).get("supervisor")
    if not previous and not force:
        return False
    why = f"supervisor {previous} was gone" if previous else "no supervisor was running"
    _spawn(directory, f"{why}; `{_command()}`")
    return True


def _wait_serving(directory: Path, port: int) -> None:
    """Block until the router answers ``/health`` with 200 (``KpigateError`` on timeout or
    when no supervisor runs any more)."""
    deadline = time.monotonic() + procs.HEALTH_TIMEOUT_S
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if not procs.running(directory):
            time.sleep(1.0)  # a supervisor that lost the lock race exits; the winner holds it
            if not procs.running(directory):
                raise KpigateError(f"{directory.name}: the supervisor exited (see "
                                   f"{directory / 'supervisor.log'})")
        time.sleep(0.2)
    raise KpigateError(f"{directory.name}: the router did not answer on 127.0.0.1:{port} "
                       f"within {procs.HEALTH_TIMEOUT_S:.0f}s (see {directory / 'router.log'})")


def resume(directory: Path) -> Resumed:
    """Start the supervisor of ``directory`` if none runs and wait until it serves."""
    if not (directory / "state.db").is_file():
        raise UsageError(f"no deployment named {directory.name!r} in {directory.parent}")
    port = _port(directory)
    restarted = _start(directory, force=True)
    _wait_serving(directory, port)
    return Resumed(directory.name, restarted, f"http://127.0.0.1:{port}")


def resume_all(root: Path | None = None) -> tuple[list[Resumed], list[str]]:
    """Resume every deployment under the state directory whose supervisor died (one that
    was stopped on purpose has no ``pids.json`` and stays stopped); the deployments
    resumed or found running, and one line per deployment that could not be."""
    base = state_dir(root)
    dirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and (d / "state.db").is_file()) if base.is_dir() else []
    started: list[tuple[Path, int, bool]] = []
    problems: list[str] = []
    for d in dirs:
        try:
            port = _port(d)
            if procs.running(d) or procs.pids(d).get("supervisor"):
                started.append((d, port, _start(d, force=False)))
        except KpigateError as exc:
            problems.append(str(exc).splitlines()[0])
    done: list[Resumed] = []
    for d, port, restarted in started:  # all start at once; then wait for each
        try:
            _wait_serving(d, port)
        except KpigateError as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        done.append(Resumed(d.name, restarted, f"http://127.0.0.1:{port}"))
    return done, problems
