"""Router overhead: kpigate's router vs. `mlflow models serve`, side by side in one run.

(a) `mlflow models serve --env-manager local` serving the model alone;
(b) the kpigate router serving baseline + candidate (5% split, sticky routing, prediction
    logging to SQLite, Prometheus metrics), started by `mlflow deployments create -t kpigate`
    machinery exactly as users run it.

Both serve the same registered scikit-learn model with one worker, on 127.0.0.1, and are
driven by the same closed-loop load generator (N client threads with keep-alive
connections, one single-row `dataframe_split` request at a time each). The generator runs
in this process, so absolute numbers depend on it; compare the ratio.

Both servers run for the whole benchmark and are loaded in alternating rounds (A B, B A,
…), so drift on a shared 2-core machine (other processes, CPU frequency, caches) falls on
both alike; the table gives the median throughput over rounds and the latency quantiles
of all rounds pooled, with the range of the per-round p99.

    .venv/bin/python benchmarks/router_overhead.py [--clients 8] [--requests 2000]
        [--rounds 5] [--json]
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
            "p99_ms": float(np.percentile(lat, 99) * 1e3), "latencies": lat}


def _summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Median throughput over rounds; latency quantiles of all rounds pooled."""
    lat = np.concatenate([r["latencies"] for r in rounds])
    p99s = [r["p99_ms"] for r in rounds]
    return {"rounds": float(len(rounds)), "requests": float(lat.size),
            "errors": float(sum(r["errors"] for r in rounds)),
            "throughput_rps": float(np.median([r["throughput_rps"] for r in rounds])),
            "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "p99_min_ms": float(min(p99s)), "p99_max_ms": float(max(p99s))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="per server and round")
    parser.add_argument("--rounds", type=int, default=5)
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
    from mlflow_kpigate.deploy.local import LocalDeployer

    deployer = LocalDeployer()

    serve = None
    names = ("mlflow models serve", "kpigate router (split + logging + metrics)")
    rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    policy = work / "hold.yaml"
    policy.write_text("stages: [{traffic: 5, min_samples: {requests: 100000000}}, 100]\n"
                      "kpis: [{name: err, kind: proportion, metric: error_rate, "
                      "role: critical, margin: 0.01}]\n")
    try:
        serve_port = _free_port()
        serve = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", baseline, "-h",
             "127.0.0.1", "-p", str(serve_port), "--env-manager", "local", "-w", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        router_port = _free_port()
        deployer.create("bench", candidate, {"baseline": baseline, "port": str(router_port),
                                             "policy": str(policy)})
        _wait_http(serve_port, "/health")
        ports = dict(zip(names, (serve_port, router_port), strict=True))
        for port in ports.values():
            _load(port, args.clients, args.warmup, body)
        for i in range(args.rounds):
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                rounds[name].append(_load(ports[name], args.clients, args.requests, body))
    finally:
        try:
            if serve is not None:
                serve.terminate()
                serve.wait(30)
            deployer.delete("bench")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    results = {name: _summary(rounds[name]) for name in names}

    ref = results["mlflow models serve"]
    for r in results.values():
        r["throughput_ratio"] = r["throughput_rps"] / ref["throughput_rps"]
        r["added_p50_ms"] = r["p50_ms"] - ref["p50_ms"]
        r["added_p99_ms"] = r["p99_ms"] - ref["p99_ms"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"router overhead: {args.rounds} alternating rounds of {args.requests} single-row "
          f"requests per server, {args.clients} clients, 1 server worker, loopback")
    header = f"{'server':<44}{'req/s':>9}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}" \
             f"{'+p99 ms':>9}{'round p99 range':>18}{'errors':>8}"
    print(header)
    for name, r in results.items():
        spread = f"{r['p99_min_ms']:.1f}-{r['p99_max_ms']:.1f}"
        print(f"{name:<44}{r['throughput_rps']:>9.0f}{r['throughput_ratio']:>8.2f}"
              f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['added_p99_ms']:>9.2f}"
              f"{spread:>18}{r['errors']:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
