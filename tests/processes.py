"""Small helpers for tests that start servers: free loopback ports, stopping process groups,
waiting for a condition."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import suppress
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the group ``process`` leads (started with ``start_new_session=True``), wait,
    SIGKILL if it lingers, then SIGKILL anything a killed parent left behind. Idempotent."""
    if process.poll() is not None:
        return
    pgid = os.getpgid(process.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=timeout)
    with suppress(ProcessLookupError):  # workers left behind by a killed parent
        os.killpg(pgid, signal.SIGKILL)


def wait_for(predicate: Any, what: str, limit: float = 180.0) -> Any:
    """Poll ``predicate`` until truthy and return its value (``limit`` bounds a wedged run,
    not performance); ``AssertionError`` naming ``what`` after it."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
