"""``python -m mlflow deployments …`` as a process, without paying MLflow's import each time.

Importing MLflow's command line takes seconds of CPU (``import mlflow.cli``: about 2.3 s;
a whole ``mlflow deployments`` command about 3.5 s), and the end-to-end tests run such a
command over a hundred times. :func:`mlflow_deployments` forks each command from a helper
process that has imported ``mlflow.cli`` once, and nothing of kpigate (the plugin is
imported by each command, as in a fresh process). The forked child is a process of its
own with the test's argv, environment (and ``PYTHONPATH``), working directory, stdin
``/dev/null``, stdout and stderr; it runs MLflow's real entry point (``mlflow.cli:cli``,
what ``python -m mlflow`` runs) and ends through the interpreter's normal exit, atexit
handlers included. So a test sees the exit status and output ``subprocess.run`` would give
it. Tests of start-up itself (which modules a command imports), of signals sent to the
command and of concurrent commands still start a fresh interpreter with ``subprocess``.

The helper is started on first use in each test process (one per xdist worker) and ends
when that process exits. It serves one command at a time.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Runs in the helper: import MLflow's CLI once, then fork one child per request line.
_HELPER = r'''
import json, os, sys
import mlflow
import mlflow.cli  # the expensive part, done once

requests, replies = sys.stdin, sys.stdout
while True:
    line = requests.readline()
    if not line:
        break
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the command's own process
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            for fd, target in ((null, 0), (out, 1), (err, 2)):
                os.dup2(fd, target)
                os.close(fd)
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
            sys.path[1:1] = [p for p in extra if p not in sys.path]
            # what `python -m mlflow` puts in sys.argv[0]
            sys.argv = [os.path.join(os.path.dirname(mlflow.__file__), "__main__.py"),
                        *req["argv"]]
        except BaseException:
            os._exit(120)
        mlflow.cli.cli.main(args=req["argv"], prog_name="python -m mlflow")
        sys.exit(0)  # not reached: click's main exits
    replies.write(json.dumps({"pid": pid}) + "\n")
    replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
'''

_lock = threading.Lock()
_helper: subprocess.Popen[bytes] | None = None
_pending = bytearray()  # reply bytes read from the helper but not yet used


def _start() -> subprocess.Popen[bytes]:
    global _helper
    if _helper is None or _helper.poll() is not None:
        _pending.clear()
        # The helper imports MLflow without the tests' MLFLOW_* settings; each command
        # gets the environment its test gives it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        _helper = subprocess.Popen([sys.executable, "-c", _HELPER], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, env=env)
    return _helper


@atexit.register
def _stop() -> None:
    if _helper is not None and _helper.poll() is None:
        assert _helper.stdin is not None
        _helper.stdin.close()
        try:
            _helper.wait(30)
        except subprocess.TimeoutExpired:
            _helper.kill()
            _helper.wait()


def _read_reply(fd: int, deadline: float | None) -> dict[str, Any] | None:
    """The helper's next reply line, or None when ``deadline`` passes first."""
    while b"\n" not in _pending:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError("the mlflow command helper exited")
        _pending.extend(chunk)
    line, _, rest = bytes(_pending).partition(b"\n")
    _pending[:] = rest
    reply: dict[str, Any] = json.loads(line)
    return reply


def mlflow_deployments(args: Sequence[str], *, env: Mapping[str, str] | None = None,
                       cwd: str | Path | None = None, timeout: float | None = None
                       ) -> subprocess.CompletedProcess[str]:
    """``python -m mlflow deployments *args`` in a process of its own; like
    ``subprocess.run(…, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)``,
    including :class:`subprocess.TimeoutExpired` (the command killed) on a timeout."""
    argv = ["deployments", *map(str, args)]
    with _lock, tempfile.TemporaryDirectory(prefix="mlflow-cli-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        helper = _start()
        assert helper.stdin is not None
        assert helper.stdout is not None
        helper.stdin.write(json.dumps({
            "argv": argv, "env": dict(os.environ if env is None else env),
            "cwd": str(cwd or os.getcwd()), "stdout": str(out),
            "stderr": str(err)}).encode() + b"\n")
        helper.stdin.flush()
        replies = helper.stdout.fileno()
        started = _read_reply(replies, None)
        assert started is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        done = _read_reply(replies, deadline)
        if done is None:  # timed out: kill the command, as subprocess.run does
            os.kill(started["pid"], signal.SIGKILL)
            _read_reply(replies, None)
            raise subprocess.TimeoutExpired([sys.executable, "-m", "mlflow", *argv],
                                            timeout or 0.0, out.read_text(), err.read_text())
        return subprocess.CompletedProcess([sys.executable, "-m", "mlflow", *argv],
                                           done["returncode"], out.read_text(),
                                           err.read_text())
