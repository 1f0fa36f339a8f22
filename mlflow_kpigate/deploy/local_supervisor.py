"""Keeps a deployment's router and controller processes running, and heals them.

``python -m mlflow_kpigate.deploy.local_supervisor DEPLOYMENT_DIR [--restarted REASON]``
starts

* the router (``mlflow_kpigate.backends.local.server``): serves traffic; restarted if it
  exits, or if it hangs (:mod:`.local_probe`: no answer to ``GET /health`` for 15 s, or
  its main process stopped), when it is killed with every process it started first; it
  resumes from the committed weights;
* the controller (``mlflow_kpigate.deploy.local_controller``): restarted if it dies before
  the rollout is over (SIGKILL included); it resumes at the committed stage.

Restarts back off (1 s, doubling up to 30 s while a child keeps dying within a minute of
its start). Each is an audit event (``router_restarted`` with its reason,
``controller_restarted``) and an alert through the policy's notifier
(:mod:`.local_incidents`). A failing state store (SQLite errors, a corrupted or
unreadable ``state.db``) never ends the supervisor: it logs, keeps its processes alive,
and records the events once the store works again.

Only one supervisor runs per directory (it holds ``supervisor.lock``, see
:mod:`.local_processes`); a second one exits at once. A supervisor that finds
``pids.json`` naming a predecessor, or ``--restarted``, is a restart: the predecessor died
(SIGKILL, a crash, a reboot) and its router and controller may still run, orphaned. It
records ``supervisor_restarted`` (and alerts), then replaces them as
:mod:`.local_orphans` describes: the old controller is stopped before a new one starts,
and the old router serves until the new one listens. Such restarts are started by
:mod:`.local_revive` (any command that reads the deployment, ``kpigate resume``).

Their process ids are in ``pids.json``; their output in ``router.log`` and
``controller.log``. SIGTERM stops both children (TERM, then KILL after a grace period)
and any orphans, and then the supervisor.

Start-up order: ``mlflow deployments create`` waits until the router answers, and the
router's start is mostly loading the models, so nothing else competes with it for the
CPU. The router is started first, before the supervisor imports the state store; the
controller is started once the router answers HTTP (any status), or after
``KPIGATE_START_TIMEOUT`` seconds (180) if it never does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_kpigate.deploy import local_procfs as procfs
from mlflow_kpigate.deploy.local_orphans import CONTROLLER_MODULE, ROUTER_MODULE, Orphans
from mlflow_kpigate.deploy.local_probe import PROBE_TIMEOUT_S, RouterProbe, answers
from mlflow_kpigate.deploy.local_processes import pids, take_supervisor_lock

if TYPE_CHECKING:
    from mlflow_kpigate.deploy.local_incidents import Incidents

log = logging.getLogger("kpigate.supervisor")

GRACE_S = 10.0
RESTART_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0
TICK_S = 0.2
CONTROLLER_WAIT_S = float(os.environ.get("KPIGATE_START_TIMEOUT", "180"))


class _Child:
    def __init__(self, name: str, module: str, directory: Path) -> None:
        self.name = name
        self.module = module
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.started_at = 0.0
        self.backoff_s = RESTART_BACKOFF_S
        self.restart_at: float | None = None  # an exit was handled; start again then

    def start(self) -> None:
        log_file = (self.dir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, str(self.dir)],
                                     stdout=log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, close_fds=True)
        log_file.close()
        self.started_at = time.monotonic()
        self.restart_at = None

    def exit_code(self) -> int | None:
        """The exit code of a child that ended and was not handled yet."""
        if self.proc is None or self.restart_at is not None:
            return None
        return self.proc.poll()

    def schedule_restart(self, now: float) -> None:
        """Start again after the back-off (doubling while it keeps dying young)."""
        if now - self.started_at >= HEALTHY_AFTER_S:
            self.backoff_s = RESTART_BACKOFF_S
        self.restart_at = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)

    def restart_due(self, now: float) -> bool:
        return self.restart_at is not None and now >= self.restart_at

    def kill(self) -> None:
        """SIGKILL the child with every process it started (a hung router)."""
        if self.proc is not None and self.proc.poll() is None:
            procfs.kill_tree(self.proc.pid)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        with contextlib.suppress(ProcessLookupError):  # a stopped child handles TERM too
            os.kill(self.proc.pid, signal.SIGCONT)
        try:
            self.proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()


def _exit_text(code: int) -> str:
    if code < 0:
        with_name = signal.Signals(-code).name if -code in signal.valid_signals() else ""
        return f"was killed by signal {-code} {with_name}".rstrip()
    return f"exited with code {code}"


class Supervisor:
    """One deployment's supervisor (see the module doc)."""

    def __init__(self, directory: Path, restarted: str | None = None) -> None:
        self.dir = directory
        self.restarted = restarted
        self.router = _Child("router", ROUTER_MODULE, directory)
        self.controller = _Child("controller", CONTROLLER_MODULE, directory)
        self.probe = RouterProbe()
        self.orphans = Orphans(directory, [], [])
        self.incidents: Incidents | None = None
        self.port: int | None = None
        self.controller_done = False
        self.stopping = False
        self.started = time.monotonic()

    def on_signal(self, *_: object) -> None:
        self.stopping = True

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        previous = pids(self.dir).get("supervisor")
        self.orphans = Orphans.find(self.dir)
        self.orphans.retire_controllers()  # never two controllers
        self.router.start()
        self.probe.reset(time.monotonic())
        self._write_pids()
        from mlflow_kpigate.deploy.local_incidents import Incidents  # the store: after

        self.incidents = Incidents(self.dir)
        if self.restarted or previous or self.orphans.pids:
            self._record_restart(previous or 0)
        while not self.stopping:
            if self.port is None:  # known once the state can be read
                state = self.incidents.state()
                self.port = state.port if state is not None else None
            time.sleep(TICK_S)
            self.orphans.check()
            self.incidents.retry(time.monotonic())
            if not self.stopping:
                self._check_router()
            if not self.stopping:
                self._check_controller()
        self.orphans.retire_controllers()
        self.orphans.retire_routers()
        self.controller.stop()
        self.router.stop()
        self.orphans.stop()
        (self.dir / "pids.json").unlink(missing_ok=True)
        return 0

    def _record_restart(self, previous: int) -> None:
        from mlflow_kpigate.core.events import SupervisorRestarted

        assert self.incidents is not None
        reason = self.restarted or f"supervisor {previous} was gone"
        left = [f"{what} {pid}" for what, pids_ in (("router", self.orphans.routers),
                                                     ("controller", self.orphans.controllers))
                for pid in pids_]
        found = f"; replacing what it left running: {', '.join(left)}" if left else ""
        log.warning("supervisor restarted: %s%s", reason, found)
        self.incidents.record(SupervisorRestarted(previous, reason, tuple(self.orphans.pids)),
                              f"supervisor restarted: {reason}{found}")

    def _write_pids(self) -> None:
        known = {"supervisor": os.getpid()}
        known.update({c.name: c.proc.pid for c in (self.router, self.controller)
                      if c.proc is not None})
        tmp = self.dir / "pids.json.tmp"
        try:
            tmp.write_text(json.dumps(known))
            tmp.replace(self.dir / "pids.json")
        except OSError as exc:  # a full disk: the processes matter more than the file
            log.error("cannot write pids.json: %s", exc)

    # -- the router ------------------------------------------------------------------------
    def _check_router(self) -> None:
        from mlflow_kpigate.core.events import RouterRestarted

        assert self.incidents is not None
        assert self.router.proc is not None
        now = time.monotonic()
        if self.router.restart_due(now):
            self.router.restarts += 1
            self.router.start()
            self.probe.reset(self.router.started_at)
            self._write_pids()
            return
        code = self.router.exit_code()
        if code is not None:
            reason = _exit_text(code)
            self.incidents.record(RouterRestarted(code, reason),
                                  f"router restarted: it {reason}")
            self.router.schedule_restart(now)
            return
        if self.router.restart_at is not None or self.port is None:
            return
        if self.orphans.alive(self.orphans.routers):
            # The old router serves until a worker of the new one listens on the port.
            if not self.orphans.retired(self.orphans.routers) and \
                    procfs.listens(procfs.descendants(self.router.proc.pid), self.port):
                log.info("the new router listens: stopping the orphaned router %s",
                         self.orphans.routers)
                self.orphans.retire_routers()
            return
        if not self.probe.due(now):
            return
        if not self.probe.answered and \
                procfs.listens(procfs.descendants(self.router.proc.pid), self.port):
            self.probe.up()  # a hang from now on counts, even before a first answer
        problem: str | None = None
        if procfs.stopped(self.router.proc.pid):
            problem = "had its main process stopped"
        elif not answers(self.port, PROBE_TIMEOUT_S):
            problem = "did not answer /health"
        hung = self.probe.observe(now, time.monotonic(), problem)
        if hung is not None:
            log.error("the router %s; killing it and its children", hung)
            self.router.kill()
            self.incidents.record(RouterRestarted(self.router.proc.returncode, f"{hung}; killed"),
                                  f"router restarted: it {hung}; killed it")
            self.router.restart_at = time.monotonic() + RESTART_BACKOFF_S

    # -- the controller --------------------------------------------------------------------
    def _check_controller(self) -> None:
        from mlflow_kpigate.core.events import ControllerRestarted

        assert self.incidents is not None
        now = time.monotonic()
        if self.controller.proc is None:
            if self.port is None or self.orphans.alive(self.orphans.controllers):
                return  # the state is not readable yet, or the old controller still runs
            if answers(self.port) or now - self.started > CONTROLLER_WAIT_S:
                self.controller.start()
                self._write_pids()
            return
        if self.controller.restart_due(now):
            self.controller.restarts += 1
            self.controller.start()
            self._write_pids()
            return
        code = self.controller.exit_code()
        if code is None or self.controller_done:
            return
        state = self.incidents.state()
        if code == 0 and state is not None and state.phase.terminal \
                and not state.effects_pending:
            self.controller_done = True  # the rollout is over; the router keeps serving
            return
        self.incidents.record(ControllerRestarted(code),
                              f"controller restarted: it {_exit_text(code)}")
        self.controller.schedule_restart(now)


def supervise(directory: Path, restarted: str | None = None) -> int:
    """Supervise ``directory`` until SIGTERM/SIGINT; returns the exit code (0, also when
    another supervisor already runs there)."""
    lock = take_supervisor_lock(directory)
    if lock is None:
        log.info("another supervisor runs %s; exiting", directory)
        return 0
    supervisor = Supervisor(directory, restarted)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    try:
        return supervisor.run()
    finally:
        os.close(lock)


def main(argv: list[str] | None = None) -> int:
    """Process entry point (started by :mod:`.local_processes`)."""
    parser = argparse.ArgumentParser(prog="kpigate-supervisor")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--restarted", default=None,
                        help="why a supervisor of this deployment is started again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return supervise(args.directory, args.restarted)


if __name__ == "__main__":
    sys.exit(main())
