"""The router and controller a dead supervisor left running, and how they are retired.

When a supervisor is SIGKILLed its children live on (nothing ties them to it): the router
keeps serving, the controller keeps deciding, unsupervised. The next supervisor of that
deployment (:mod:`.local_supervisor`) finds them by their command line (``python -m
<router or controller module> <this deployment's directory>``, whose parent is no live
supervisor of the directory) and replaces them:

* the controller is sent SIGTERM at once and a new one starts only after it is gone, so
  two controllers never judge one rollout (SIGKILL after ``CONTROLLER_GRACE_S``);
* the router keeps serving while the new one loads (both listen on the port with
  ``SO_REUSEPORT``); once a worker of the new router listens, the old one is sent SIGTERM
  (it finishes its requests in flight) and, after ``ROUTER_GRACE_S``, SIGKILL with every
  process it started.

Each is checked again just before it is signalled: a pid alone may have been reused.
SIGCONT follows SIGTERM, so a stopped orphan handles it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from mlflow_kpigate.deploy import local_procfs as procfs

__all__ = ["CONTROLLER_MODULE", "ROUTER_MODULE", "SUPERVISOR_MODULE", "Orphans"]

ROUTER_MODULE = "mlflow_kpigate.backends.local.server"
CONTROLLER_MODULE = "mlflow_kpigate.deploy.local_controller"
SUPERVISOR_MODULE = "mlflow_kpigate.deploy.local_supervisor"
ROUTER_GRACE_S = 40.0  # the router's own shutdown grace is 35 s
CONTROLLER_GRACE_S = 10.0


class Orphans:
    """The processes of one deployment that no live supervisor owns."""

    def __init__(self, directory: Path, routers: list[int], controllers: list[int]) -> None:
        self.directory = directory
        self.routers, self.controllers = routers, controllers
        self._deadlines: dict[int, float] = {}
        self._module = {**{p: ROUTER_MODULE for p in routers},
                        **{p: CONTROLLER_MODULE for p in controllers}}

    @classmethod
    def find(cls, directory: Path) -> Orphans:
        """The routers and controllers running on ``directory`` without a supervisor."""

        def orphaned(pid: int) -> bool:
            ppid = procfs.parent(pid)
            return ppid is None or not procfs.runs(ppid, SUPERVISOR_MODULE, directory)

        return cls(directory,
                   [p for p in procfs.processes_running(ROUTER_MODULE, directory)
                    if orphaned(p)],
                   [p for p in procfs.processes_running(CONTROLLER_MODULE, directory)
                    if orphaned(p)])

    @property
    def pids(self) -> list[int]:
        """Every orphan found."""
        return [*self.routers, *self.controllers]

    def alive(self, pids: list[int]) -> bool:
        """Whether one of ``pids`` still runs (as the process it was)."""
        return any(self._ours(p) for p in pids)

    def _ours(self, pid: int) -> bool:
        return not procfs.gone(pid) and procfs.runs(pid, self._module[pid], self.directory)

    def retired(self, pids: list[int]) -> bool:
        """Whether each of ``pids`` was asked to stop."""
        return all(p in self._deadlines for p in pids)

    def retire(self, pids: list[int], grace_s: float) -> None:
        """SIGTERM (then SIGCONT) each of ``pids`` not yet asked; SIGKILL its process
        tree after ``grace_s`` (see :meth:`check`)."""
        now = time.monotonic()
        for pid in pids:
            if pid in self._deadlines or not self._ours(pid):
                continue
            self._deadlines[pid] = now + grace_s
            for sig in (signal.SIGTERM, signal.SIGCONT):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    def retire_controllers(self) -> None:
        """Stop the orphaned controllers (before a new controller starts)."""
        self.retire(self.controllers, CONTROLLER_GRACE_S)

    def retire_routers(self) -> None:
        """Stop the orphaned routers (once the new router listens)."""
        self.retire(self.routers, ROUTER_GRACE_S)

    def check(self) -> None:
        """SIGKILL, with its process tree, each retired orphan past its grace period."""
        now = time.monotonic()
        for pid, deadline in list(self._deadlines.items()):
            if not self._ours(pid):
                del self._deadlines[pid]
            elif now > deadline:
                procfs.kill_tree(pid)

    def stop(self, timeout_s: float = ROUTER_GRACE_S + 5) -> None:
        """Retire every orphan now and wait until all are gone (supervisor shutdown)."""
        self.retire_controllers()
        self.retire_routers()
        deadline = time.monotonic() + timeout_s
        while self._deadlines and time.monotonic() < deadline:
            self.check()
            time.sleep(0.1)
