"""Running ``kpigate operator`` and its collector in end-to-end tests.

:func:`operator_process` starts a real operator process (the CLI) against the fake API
server with short Lease timings; :class:`CollectorProcess` a real ``kpigate collector`` on
127.0.0.1 with a token per scope. :class:`StatusRecorder` polls a ModelRollout's status in
a thread, so a test can assert on every phase and condition the resource went through.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from processes import free_port, stop_process_group

NS = "models"


@dataclass
class OperatorProcess:
    """One operator replica."""

    proc: subprocess.Popen[bytes]
    identity: str
    metrics_url: str
    log: Path

    def metrics(self) -> str:
        return requests.get(self.metrics_url, timeout=5).text

    def leads(self) -> bool:
        try:
            text = self.metrics()
        except requests.RequestException:
            return False
        return f'kpigate_operator_leader{{identity="{self.identity}"}} 1.0' in text

    def stop(self) -> None:
        stop_process_group(self.proc)

    def kill(self) -> None:
        """SIGKILL the operator alone (its workers die with it: PR_SET_PDEATHSIG)."""
        self.proc.kill()
        self.proc.wait(timeout=30)


def operator_process(fake: Any, tmp_path: Path, identity: str,
                     env: dict[str, str] | None = None) -> OperatorProcess:
    """Start ``kpigate operator --namespace models`` (3 s Lease, 1 s resync)."""
    port, health = free_port(), free_port()
    log = tmp_path / f"operator-{identity}-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "mlflow_kpigate.cli", "operator", "--namespace", NS,
           "--kubeconfig", str(fake.kubeconfig), "--state-dir", str(tmp_path / "opstate"),
           "--identity", identity, "--lease-duration", "3s", "--renew-deadline", "2s",
           "--retry-period", "1s", "--resync", "1s",
           "--metrics-bind", f"127.0.0.1:{port}", "--health-bind", f"127.0.0.1:{health}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    op = OperatorProcess(proc, identity, f"http://127.0.0.1:{port}/metrics", log)
    deadline = time.monotonic() + 60  # a ceiling for a wedged start, not a performance bound
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"operator exited {proc.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"http://127.0.0.1:{health}/healthz", timeout=2).ok:
                return op
        except requests.RequestException:
            pass
        time.sleep(0.1)
    op.stop()
    raise AssertionError(f"operator did not start:\n{log.read_text()}")


@dataclass
class CollectorProcess:
    """A ``kpigate collector`` for one deployment, with ingest/labels/operator tokens."""

    proc: subprocess.Popen[bytes]
    url: str
    token_files: dict[str, Path]

    def stop(self) -> None:
        stop_process_group(self.proc)


def collector_process(tmp_path: Path, deployment: str | None = None,
                      policy: Path | None = None) -> CollectorProcess:
    """Start a collector on a free 127.0.0.1 port: the namespace's shared one (``--shared``,
    what the operator's rollouts use), or one for ``deployment`` and its ``policy``."""
    label = deployment or "shared"
    tokens = tmp_path / f"tokens-{label}"
    tokens.mkdir()
    files = {}
    for scope in ("ingest", "labels", "operator"):
        files[scope] = tokens / scope
        files[scope].write_text(os.urandom(16).hex() + "\n")
    port = free_port()
    what = ["--shared"] if deployment is None else \
        ["--deployment", deployment, "--policy", str(policy)]
    cmd = [sys.executable, "-m", "mlflow_kpigate.cli", "collector", *what,
           "--data-dir", str(tmp_path / f"col-{label}"),
           "--host", "127.0.0.1", "--port", str(port),
           *[a for s, f in files.items() for a in ("--token-file", f"{s}={f}")]]
    log = (tmp_path / f"collector-{label}.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"collector exited {proc.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return CollectorProcess(proc, url, files)
        except requests.RequestException:
            pass
        time.sleep(0.1)
    stop_process_group(proc)
    raise AssertionError("collector did not start")


@dataclass
class StatusRecorder:
    """Every distinct (phase, stage, conditions) a ModelRollout's status showed."""

    fake: Any
    name: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last = None
        while not self.stop.wait(0.1):
            obj = self.fake.get_object("modelrollouts", NS, self.name)
            status = (obj or {}).get("status")
            if not status:
                continue
            view = {"phase": status["phase"], "stage": status["stage"]["index"],
                    "observedGeneration": status.get("observedGeneration"),
                    "conditions": {c["type"]: (c["status"], c["reason"])
                                   for c in status.get("conditions", [])}}
            if view != last:
                self.seen.append(view)
                last = view

    def close(self) -> list[dict[str, Any]]:
        self.stop.set()
        self.thread.join(timeout=5)
        return self.seen

