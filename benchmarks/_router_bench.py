"""Helpers of benchmarks/router_overhead.py: models, servers, load generator, /proc CPU.

Also imported by benchmarks/startup.py (through router_overhead: ``_free_port``,
``_register_model``, ``_wait_http``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = [f"f{i}" for i in range(8)]
ROW = {"dataframe_split": {"columns": COLUMNS,
                           "data": [[0.1, -0.2, 0.3, 0.0, 1.0, -1.0, 0.5, 0.2]]}}
BODY = json.dumps(ROW).encode()
NAMES = ("reference", "kpigate")
CLIENT_TIMEOUT_S = 30.0
#: After a connection error a client waits this long before its next request, so a dead
#: router's refused connections do not turn the generator into a busy loop.
ERROR_BACKOFF_S = 0.05
_TICK = os.sysconf("SC_CLK_TCK")

#: Candidates for the isolation cases, written into the benchmark's temp dir and logged
#: with ``code_paths`` so the server processes can import them.
MODELS_MODULE = "kpigate_bench_models"
MODELS_SOURCE = '''"""Candidates of benchmarks/router_overhead.py's isolation cases."""
import os
import time

import mlflow.pyfunc
import numpy as np


class Healthy(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return np.tile([0.6, 0.4], (len(model_input), 1))


class Sleeps(Healthy):
    def predict(self, context, model_input, params=None):
        time.sleep(2.0)
        return super().predict(context, model_input, params)


class Exits(Healthy):
    def predict(self, context, model_input, params=None):
        os._exit(1)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _frame() -> tuple[Any, np.ndarray]:
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=2000) > 1.5).astype(int)
    return pd.DataFrame(x, columns=COLUMNS), y


def register_model(tracking_uri: str) -> tuple[str, str]:
    """Train a small classifier, register it twice (baseline v1, candidate v2)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    frame, y = _frame()
    for c in (0.5, 1.0):
        with mlflow.start_run():
            model = LogisticRegression(C=c).fit(frame, y)
            mlflow.sklearn.log_model(model, name="model", registered_model_name="bench",
                                     input_example=frame.head(2),
                                     pyfunc_predict_fn="predict_proba")
    mlflow.MlflowClient().set_registered_model_alias("bench", "champion", "1")
    return "models:/bench/1", "models:/bench/2"


def register_candidates(work: Path) -> dict[str, str]:
    """Register Healthy, Sleeps and Exits as further versions of ``bench``: their URIs.

    No input example: MLflow would call ``predict`` on it while logging (a 2 s sleep, and
    ``os._exit`` of this process); the signature is given instead.
    """
    import importlib

    import mlflow
    from mlflow.models import infer_signature

    module = work / f"{MODELS_MODULE}.py"
    module.write_text(MODELS_SOURCE)
    sys.path.insert(0, str(work))
    models = importlib.import_module(MODELS_MODULE)
    frame, _ = _frame()
    signature = infer_signature(frame.head(2), np.tile([0.6, 0.4], (2, 1)))
    uris = {}
    for cls in ("Healthy", "Sleeps", "Exits"):
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=getattr(models, cls)(),
                                           code_paths=[str(module)], signature=signature,
                                           registered_model_name="bench")
        uris[cls.lower()] = f"models:/bench/{info.registered_model_version}"
    return uris


def wait_http(port: int, path: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"nothing healthy on 127.0.0.1:{port}{path} after {timeout}s")


# -- servers ----------------------------------------------------------------------------------
def start_serve(model_uri: str, port: int, workers: int, env: dict[str, str]
                ) -> subprocess.Popen[bytes]:
    """`mlflow models serve` in its own process group (it runs uvicorn under it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "-h",
         "127.0.0.1", "-p", str(port), "--env-manager", "local", "-w", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process group led by ``proc`` (uvicorn and its workers included); KILL
    what is left after 30 s."""
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or the group never empties
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def router_pid(deployment_dir: Path) -> int | None:
    """The router's pid from the deployment's ``pids.json`` (None if absent)."""
    try:
        return int(json.loads((deployment_dir / "pids.json").read_text())["router"])
    except (OSError, ValueError, KeyError):
        return None


def tree_cpu(top: int | None) -> float | None:
    """CPU seconds (user + system) of ``top`` and all its descendants, from /proc.

    Each process counts utime + stime, plus cutime + cstime: the CPU of its children that
    already exited and were reaped (a worker that died mid-round still counts; a live
    child is counted once, by its own entry). None if ``top`` does not exist.
    """
    if top is None:
        return None
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICK)
    if top not in table:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [top]
    while todo:
        pid = todo.pop()
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


# -- load ---------------------------------------------------------------------------------------
def load(port: int, clients: int, total: int, body: bytes = BODY, rate: float = 0.0
         ) -> dict[str, Any]:
    """Closed-loop load: ``clients`` keep-alive threads share ``total`` requests.

    With ``rate`` > 0 request i is not sent before ``i / rate`` seconds from the start (a
    paced schedule; a server that falls behind it is loaded closed-loop by all clients).

    Per request: latency (s), status (0: connection error or timeout), the router's
    ``X-Kpigate-Role`` (``""`` if none) and whether ``X-Kpigate-Fallback`` was set.
    """
    lat = np.zeros(total)
    status = np.zeros(total, dtype=int)
    role = np.full(total, "", dtype=object)
    fallback = np.zeros(total, dtype=bool)
    lock = threading.Lock()
    counter = iter(range(total))

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)

    def worker() -> None:
        conn = connect()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            if rate > 0:
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            headers = {"Content-Type": "application/json",
                       "X-Kpigate-Routing-Key": f"user-{i % 997}"}
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                lat[i] = time.perf_counter() - t0
                status[i] = resp.status
                role[i] = resp.getheader("X-Kpigate-Role") or ""
                fallback[i] = resp.getheader("X-Kpigate-Fallback") is not None
            except (OSError, http.client.HTTPException):
                lat[i] = time.perf_counter() - t0
                conn.close()
                time.sleep(ERROR_BACKOFF_S)
                conn = connect()
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()  # read by the workers
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests": total, "seconds": wall, "rps": total / wall, "lat": lat,
            "status": status, "role": role, "fallback": fallback}


def quantile_ms(lat: np.ndarray, q: float) -> float | None:
    return float(np.percentile(lat, q) * 1e3) if lat.size else None


# -- figures -----------------------------------------------------------------------------------
def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The figures of one client count from its rounds of reference and kpigate."""
    out: dict[str, Any] = {}
    for name in NAMES:
        lat = np.concatenate([r["lat"] for r in runs[name]])
        with_cpu = [r for r in runs[name] if r["cpu"] is not None]
        cpu = sum(r["cpu"] for r in with_cpu)
        n_cpu = sum(r["requests"] for r in with_cpu)
        out[name] = {"rps": float(np.median([r["rps"] for r in runs[name]])),
                     "p50_ms": quantile_ms(lat, 50), "p99_ms": quantile_ms(lat, 99),
                     "errors": int(sum((r["status"] != 200).sum() for r in runs[name])),
                     "cpu_ms_per_request": cpu * 1e3 / n_cpu if n_cpu else None,
                     "cpu_rounds": len(with_cpu)}
    ref, kg = out["reference"], out["kpigate"]
    ratios = [k["rps"] / r["rps"] for k, r in zip(runs["kpigate"], runs["reference"],
                                                   strict=True)]
    return {"ratio_rps": float(np.median(ratios)),
            "added_p50_ms": kg["p50_ms"] - ref["p50_ms"],
            "added_p99_ms": kg["p99_ms"] - ref["p99_ms"],
            "cpu_ms_per_request_kpigate": kg["cpu_ms_per_request"],
            "cpu_ms_per_request_reference": ref["cpu_ms_per_request"],
            "ratio_rps_per_round": [round(x, 3) for x in ratios],
            "kpigate": kg, "reference": ref}


def baseline_callers(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency and errors of the callers the baseline answered (no fallback)."""
    lat = np.concatenate([r["lat"] for r in runs])
    status = np.concatenate([r["status"] for r in runs])
    role = np.concatenate([r["role"] for r in runs])
    fallback = np.concatenate([r["fallback"] for r in runs])
    mine = (role == "baseline") & ~fallback
    unknown = role == ""
    return {"p50_ms": quantile_ms(lat[mine], 50), "p99_ms": quantile_ms(lat[mine], 99),
            "requests": int(mine.sum()), "errors": int(((mine | unknown) & (status != 200)).sum()),
            "candidate_answers": int((role == "candidate").sum()),
            "fallbacks": int(fallback.sum())}
