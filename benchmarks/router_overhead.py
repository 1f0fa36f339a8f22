"""Router overhead: kpigate's router vs. `mlflow models serve`, side by side in one run.

(a) `mlflow models serve --env-manager local` serving the model alone;
(b) the kpigate router serving baseline + candidate (5% split, sticky routing, prediction
    logging to SQLite, Prometheus metrics), started by `mlflow deployments create -t kpigate`
    machinery exactly as users run it.

Both serve the same registered scikit-learn model with one worker, on 127.0.0.1, and are
driven by the same closed-loop load generator (N client threads with keep-alive
connections, one single-row `dataframe_split` request at a time each). The generator runs
in this process, so absolute numbers depend on it; compare the ratio.

    .venv/bin/python benchmarks/router_overhead.py [--clients 8] [--requests 4000] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _register_model(tracking_uri: str) -> tuple[str, str]:
    """Train a small classifier, register it twice (baseline v1, candidate v2)."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=2000) > 1.5).astype(int)
    import pandas as pd

    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])
    for c in (0.5, 1.0):
        with mlflow.start_run():
            model = LogisticRegression(C=c).fit(frame, y)
            mlflow.sklearn.log_model(model, name="model", registered_model_name="bench",
                                     input_example=frame.head(2),
                                     pyfunc_predict_fn="predict_proba")
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("bench", "champion", "1")
    return "models:/bench/1", "models:/bench/2"


def _wait_http(port: int, path: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"nothing healthy on 127.0.0.1:{port}{path} after {timeout}s")


def _load(port: int, clients: int, total: int, body: bytes) -> dict[str, float]:
    """Closed-loop load: ``clients`` threads share ``total`` requests."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(total))

    def worker(idx: int) -> None:
        nonlocal errors
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local: list[float] = []
        bad = 0
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            headers = {"Content-Type": "application/json",
                       "X-Kpigate-Routing-Key": f"user-{i % 997}"}
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    bad += 1
            except OSError:
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)
            errors += bad

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies)
    return {"requests": float(len(lat)), "errors": float(errors), "seconds": wall,
            "throughput_rps": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kpigate-bench-"))
    tracking = f"sqlite:///{work}/mlflow.db"
    # `mlflow models serve` runs `uvicorn` from PATH: make it this interpreter's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "KPIGATE_STATE_DIR": str(work / "st"),
           "PATH": path}
    os.environ.update({"MLFLOW_TRACKING_URI": tracking, "KPIGATE_STATE_DIR": str(work / "st")})
    baseline, candidate = _register_model(tracking)
    row = {"dataframe_split": {"columns": [f"f{i}" for i in range(8)],
                               "data": [[0.1, -0.2, 0.3, 0.0, 1.0, -1.0, 0.5, 0.2]]}}
    body = json.dumps(row).encode()
    results: dict[str, Any] = {}
    serve = None
    try:
        port = _free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", baseline, "-h",
             "127.0.0.1", "-p", str(port), "--env-manager", "local", "-w", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        _wait_http(port, "/health")
        _load(port, args.clients, args.warmup, body)
        results["mlflow models serve"] = _load(port, args.clients, args.requests, body)
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(30)

    from mlflow_kpigate.rollout import manager

    port = _free_port()
    policy = work / "hold.yaml"
    policy.write_text("stages: [{traffic: 5, min_samples: {requests: 100000000}}, 100]\n"
                      "kpis: [{name: err, kind: proportion, metric: error_rate, "
                      "role: critical, margin: 0.01}]\n")
    try:
        manager.create("bench", candidate, {"baseline": baseline, "port": str(port),
                                            "policy": str(policy)})
        _load(port, args.clients, args.warmup, body)
        results["kpigate router (split + logging + metrics)"] = _load(
            port, args.clients, args.requests, body)
    finally:
        try:
            manager.delete("bench")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    ref = results["mlflow models serve"]
    for r in results.values():
        r["throughput_ratio"] = r["throughput_rps"] / ref["throughput_rps"]
        r["added_p50_ms"] = r["p50_ms"] - ref["p50_ms"]
        r["added_p99_ms"] = r["p99_ms"] - ref["p99_ms"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"router overhead: {args.requests} single-row requests, {args.clients} clients, "
          f"1 server worker, loopback")
    header = f"{'server':<44}{'req/s':>9}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}" \
             f"{'+p99 ms':>9}{'errors':>8}"
    print(header)
    for name, r in results.items():
        print(f"{name:<44}{r['throughput_rps']:>9.0f}{r['throughput_ratio']:>8.2f}"
              f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['added_p99_ms']:>9.2f}"
              f"{r['errors']:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
