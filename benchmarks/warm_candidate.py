"""What keeping a canary candidate warm buys and costs (-C warm_candidate), in one run.

    .venv/bin/python benchmarks/warm_candidate.py [--rounds 5] [--requests 2000]
        [--rate 200] [--share 5] [--json]

Two embedded-router deployments of the same registered scikit-learn pair (baseline v1,
candidate v2: the same model class and size, so a fair comparison finds them equally
fast), each held at a ``--share`` % canary: one with the default ``warm_candidate=true``,
one with ``warm_candidate=false``. Both run for the whole benchmark and are loaded in
alternating rounds (A B, B A, …) by a paced generator in this process (``--rate`` req/s,
4 keep-alive clients, one single-row request each, sticky keys ``user-{i % 997}``), so
drift on a shared machine falls on both.

Per deployment, over all its rounds:

* ``candidate_to_baseline_p50`` / ``_p95``: the model latencies the router logged for the
  gate (``predictions.db``, live rows of the canary stage), candidate quantile ÷ baseline
  quantile. 1.0 is what two equally fast models should show;
* ``candidate_above_baseline_p95``: the share of the candidate's logged latencies above
  the baseline's 95th percentile — the exceedance the gate's latency_p95 KPI compares with
  the baseline's own 0.05 (docs/statistics.md, "Latency quantiles through exceedance");
* ``cpu_ms_per_request``: CPU (user + system, /proc) of the router's whole process tree
  (workers and candidate processes) during its runs ÷ its requests;
* ``client_p50_ms`` / ``client_p99_ms``: latency seen by the callers.

``warm_vs_cold``: the ratios warm ÷ cold of the CPU per request and the client p50.
Everything started is stopped at the end (LocalDeployer.delete).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _router_bench import (  # noqa: E402
    free_port,
    load,
    quantile_ms,
    register_model,
    router_pid,
    tree_cpu,
)

POLICY = ("stages: [{{traffic: {}, min_samples: {{requests: 100000000}}}}, 100]\n"
          "kpis: [{{name: err, kind: proportion, metric: error_rate, role: critical, "
          "margin: 0.01}}]\n")
CASES = ("warm", "cold")
CLIENTS = 4


def logged_latencies(directory: Path) -> dict[str, np.ndarray]:
    """The live rows' model latencies (s) by role, as the gate reads them."""
    with sqlite3.connect(directory / "predictions.db") as db:
        rows = db.execute("SELECT role, latency_s FROM predictions WHERE shadow = 0 "
                          "AND error = 0").fetchall()
    data = np.asarray(rows, dtype=float).reshape(-1, 2)
    return {"baseline": data[data[:, 0] == 0, 1], "candidate": data[data[:, 0] == 1, 1]}


def figures(runs: list[dict[str, Any]], directory: Path) -> dict[str, Any]:
    lat = np.concatenate([r["lat"] for r in runs])
    cpu = [r for r in runs if r["cpu"] is not None]
    n_cpu = sum(r["requests"] for r in cpu)
    logged = logged_latencies(directory)
    base, cand = logged["baseline"], logged["candidate"]
    out: dict[str, Any] = {
        "requests": int(sum(r["requests"] for r in runs)),
        "errors": int(sum((r["status"] != 200).sum() for r in runs)),
        "client_p50_ms": quantile_ms(lat, 50), "client_p99_ms": quantile_ms(lat, 99),
        "cpu_ms_per_request": sum(r["cpu"] for r in cpu) * 1e3 / n_cpu if n_cpu else None,
        "logged": {"baseline": int(base.size), "candidate": int(cand.size)}}
    if base.size and cand.size:
        b50, b95 = np.percentile(base, [50, 95])
        c50, c95 = np.percentile(cand, [50, 95])
        out.update({
            "baseline_model_ms": {"p50": b50 * 1e3, "p95": b95 * 1e3},
            "candidate_model_ms": {"p50": c50 * 1e3, "p95": c95 * 1e3},
            "candidate_to_baseline_p50": c50 / b50, "candidate_to_baseline_p95": c95 / b95,
            "candidate_above_baseline_p95": float((cand > b95).mean())})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="per deployment and round")
    parser.add_argument("--rate", type=float, default=200.0, help="paced req/s")
    parser.add_argument("--share", type=float, default=5.0, help="candidate %% of traffic")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kpigate-warm-"))
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
                       "KPIGATE_STATE_DIR": str(work / "st")})
    from mlflow_kpigate.deploy.local import LocalDeployer

    deployer, created = LocalDeployer(), []
    results: dict[str, Any] = {"settings": {
        "rounds": args.rounds, "requests": args.requests, "rate": args.rate,
        "share": args.share, "clients": CLIENTS, "cpus": os.cpu_count()}}
    try:
        baseline, candidate = register_model(os.environ["MLFLOW_TRACKING_URI"])
        policy = work / "hold.yaml"
        policy.write_text(POLICY.format(args.share))
        ports: dict[str, int] = {}
        for case in CASES:
            ports[case] = free_port()
            created.append(case)
            deployer.create(case, candidate, {
                "baseline": baseline, "policy": str(policy), "port": str(ports[case]),
                "warm_candidate": str(case == "warm").lower()})
        for case in CASES:  # warm-up, not measured
            load(ports[case], CLIENTS, 300, rate=args.rate)
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CASES}
        for i in range(args.rounds):
            for case in CASES if i % 2 == 0 else CASES[::-1]:
                directory = work / "st" / case
                pid = router_pid(directory)
                before = tree_cpu(pid)
                run = load(ports[case], CLIENTS, args.requests, rate=args.rate)
                after = tree_cpu(pid) if router_pid(directory) == pid else None
                run["cpu"] = None if before is None or after is None else after - before
                runs[case].append(run)
        for case in CASES:
            deployer.delete(case)  # stops the router, which ingests the last segments
            created.remove(case)
            archived = sorted((work / "st" / ".history").glob(f"{case}*"))
            results[case] = figures(runs[case], archived[-1] if archived else
                                    work / "st" / case)
        warm, cold = results["warm"], results["cold"]
        results["warm_vs_cold"] = {
            "cpu_per_request": (warm["cpu_ms_per_request"] / cold["cpu_ms_per_request"]
                                if warm["cpu_ms_per_request"] and cold["cpu_ms_per_request"]
                                else None),
            "client_p50": warm["client_p50_ms"] / cold["client_p50_ms"]}
    finally:
        for case in created:
            try:
                deployer.delete(case)
            except Exception as exc:  # a create that failed before its directory
                print(f"warm_candidate: delete {case}: {exc}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    s = results["settings"]
    print(f"warm vs cold canary candidate: {s['rounds']} alternating rounds of "
          f"{s['requests']} requests at {s['rate']:.0f}/s, candidate at {s['share']:g}%, "
          f"{s['cpus']} CPUs")
    print(f"{'case':<6}{'cand/base p50':>14}{'p95':>7}{'cand > base p95':>17}"
          f"{'CPU ms/req':>12}{'client p50':>12}{'p99':>8}{'errors':>8}")
    for case in CASES:
        r = results[case]
        print(f"{case:<6}{r.get('candidate_to_baseline_p50', float('nan')):>14.2f}"
              f"{r.get('candidate_to_baseline_p95', float('nan')):>7.2f}"
              f"{r.get('candidate_above_baseline_p95', float('nan')):>17.3f}"
              f"{r['cpu_ms_per_request'] or float('nan'):>12.2f}"
              f"{r['client_p50_ms']:>12.2f}{r['client_p99_ms']:>8.2f}{r['errors']:>8}")
    ratio = results["warm_vs_cold"]
    print(f"warm / cold: CPU per request {ratio['cpu_per_request'] or float('nan'):.2f}, "
          f"client p50 {ratio['client_p50']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
