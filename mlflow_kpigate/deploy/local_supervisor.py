"""Keeps a deployment's router and controller processes running.

``python -m mlflow_kpigate.deploy.local_supervisor DEPLOYMENT_DIR`` starts

* the router (``mlflow_kpigate.backends.local.server``): serves traffic; restarted if it
  dies, it resumes from the committed weights;
* the controller (``mlflow_kpigate.deploy.local_controller``): restarted if it dies before the
  rollout is over (SIGKILL included); it resumes at the committed stage.

Their process ids are in ``pids.json``; their output in ``router.log`` and
``controller.log``. SIGTERM stops both children (TERM, then KILL after a grace period)
and then the supervisor.

Start-up order: ``mlflow deployments create`` waits until the router answers, and the
router's start is mostly loading the models, so nothing else competes with it for the
CPU. The router is started first, before the supervisor imports the state store (which it
needs only to record a restart; its imports, the policy model and numpy, would otherwise
come first); the controller is started once the router answers HTTP (any status), or
after ``KPIGATE_START_TIMEOUT`` seconds (180) if it never does. The controller has nothing
to judge before the router serves: its first act, the rollout's pending side effects
(model-version tags, the rollout run, alerts), follows the router's start by the
controller's own start-up, a few seconds. Restarts of either child do not wait.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_S = 10.0
RESTART_BACKOFF_S = 1.0
TICK_S = 0.2
CONTROLLER_WAIT_S = float(os.environ.get("KPIGATE_START_TIMEOUT", "180"))


class _Child:
    def __init__(self, name: str, module: str, directory: Path) -> None:
        self.name = name
        self.module = module
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        log = (self.dir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, str(self.dir)],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, close_fds=True)
        log.close()

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _write_pids(directory: Path, children: list[_Child]) -> None:
    pids = {"supervisor": os.getpid()}
    pids.update({c.name: c.proc.pid for c in children if c.proc is not None})
    tmp = directory / "pids.json.tmp"
    tmp.write_text(json.dumps(pids))
    tmp.replace(directory / "pids.json")


def _answers(port: int) -> bool:
    """Whether something answers HTTP on 127.0.0.1:``port`` (the router, once it serves)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def supervise(directory: Path) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    router = _Child("router", "mlflow_kpigate.backends.local.server", directory)
    controller = _Child("controller", "mlflow_kpigate.deploy.local_controller", directory)
    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    router.start()
    _write_pids(directory, [router])
    from mlflow_kpigate.backends.local.state_store import RolloutStore
    from mlflow_kpigate.core.events import ControllerRestarted, RouterRestarted

    store = RolloutStore(directory)
    state = store.load()
    port = state.port if state is not None else None
    controller_done = False
    while not stopping:
        time.sleep(TICK_S)
        code = router.exit_code()
        if code is not None and not stopping:
            store.append(RouterRestarted(code))
            time.sleep(RESTART_BACKOFF_S)
            router.restarts += 1
            router.start()
            _write_pids(directory, [router, controller])
        if controller.proc is None:
            if not stopping and (port is None or _answers(port)
                                 or time.monotonic() - started > CONTROLLER_WAIT_S):
                controller.start()
                _write_pids(directory, [router, controller])
            continue
        code = controller.exit_code()
        if code is not None and not controller_done and not stopping:
            state = store.load()
            if code == 0 and state is not None and state.phase.terminal \
                    and not state.effects_pending:
                controller_done = True  # the rollout is over; the router keeps serving
                continue
            store.append(ControllerRestarted(code))
            time.sleep(RESTART_BACKOFF_S)
            controller.restarts += 1
            controller.start()
            _write_pids(directory, [router, controller])
    controller.stop()
    router.stop()
    (directory / "pids.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
