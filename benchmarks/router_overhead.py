"""Router overhead and isolation: kpigate's router vs. `mlflow models serve`, in one run.

    .venv/bin/python benchmarks/router_overhead.py [--rounds 5] [--requests 2000]
        [--clients-list 1,8] [--warmup 200] [--isolation-clients 64]
        [--isolation-requests N] [--isolation-rate 100] [--skip-workers2]
        [--skip-isolation] [--json]

Overhead (`clients`): `mlflow models serve --env-manager local -w 1` serving the baseline
alone (the reference), and the kpigate router started by `mlflow deployments create -t
kpigate` machinery (LocalDeployer.create) serving baseline + candidate (5% split held by
the policy, sticky routing on `X-Kpigate-Routing-Key: user-{i % 997}`, prediction logging,
metrics), the same registered scikit-learn model, on 127.0.0.1. Both servers run for the
whole case and are loaded in alternating rounds (A B, B A, …) by a closed-loop generator
in this process (N threads, keep-alive http.client connections, one single-row
`dataframe_split` request at a time each), so drift on a shared machine falls on both;
absolute numbers include the generator, compare the ratios. Per client count:

* `ratio_rps`: kpigate req/s ÷ reference req/s, the median over rounds of the ratio of the
  two adjacent runs of a round;
* `added_p50_ms`, `added_p99_ms`: kpigate minus reference, quantiles of all rounds' latencies
  pooled per server;
* `cpu_ms_per_request_kpigate` / `_reference`: CPU (user + system, from /proc) of each
  server's whole process tree during its runs ÷ its requests, summed over rounds. The tree
  is every descendant of the top process: for kpigate the router (pid from `pids.json` in
  the deployment directory, key "router"; its workers or candidate processes if it has
  any), for the reference the `mlflow models serve` process (it runs uvicorn under it). A
  round in which the router's pid changed is left out of the CPU figure.

`workers2`: the same at 8 clients with 2 workers on both sides (`mlflow models serve -w 2`,
kpigate `-C workers=2`). A router without that config key (create fails with "unknown config
key") gives `ratio_rps: null` and a `note`.

Isolation (kpigate only; `--isolation-clients`, 64 by default; the candidate held at 25% of
live traffic), with candidates registered as MLflow PythonModels (a module written to the
temp dir, logged with `code_paths`). Requests follow a paced schedule, `--isolation-rate`
req/s over all clients (100; 0 for closed loop): closed-loop, a sleeping candidate parks
its callers and so lowers the load the baseline callers see, while 64 clients with a
healthy candidate saturate 2 cores; both would hide a router that blocks on its candidate.

* `candidate_sleeps`: a candidate whose predict sleeps 2 s. Two deployments, one with it and
  one with a healthy (instant) candidate, in alternating rounds. `baseline_p99_ratio`: p99
  of the baseline callers (responses with `X-Kpigate-Role: baseline` and no
  `X-Kpigate-Fallback`) with the sleeping candidate ÷ with the healthy one; 1.0 means the
  candidate's slowness does not reach them (the two deployments' names differ, so their
  salts and the keys routed to the candidate do too). `baseline_errors`: non-200 answers among those
  callers, plus every failed request whose route is unknown (no role header: connection
  error, 30 s client timeout).
* `candidate_exits`: a candidate whose predict calls os._exit(1). One run of
  `--isolation-requests`; `baseline_errors`: non-200 answers and connection errors among
  all callers (with a fallback to the baseline every caller gets 200), `baseline_requests`:
  requests sent. A router that runs the candidate in-process dies on the candidate's first
  request; its supervisor restarts it (`router_pids_seen`; `router_healthy_after_s`: once
  the load is over), and it dies again on the next candidate request.

Reading the numbers: on a shared 2-core machine the generator, router and model contend
for the same cores; closed-loop p99 at 8 clients swings by 100 ms and more from run to run,
so judge added latency at 1 client and cost by CPU per request. Everything started is
stopped by pid at the end (deployments through LocalDeployer.delete, `mlflow models serve`
with its process group).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _router_bench import (  # noqa: E402
    NAMES,
    baseline_callers,
    free_port,
    load,
    register_candidates,
    register_model,
    router_pid,
    start_serve,
    stop_serve,
    summarize,
    tree_cpu,
    wait_http,
)

# Kept for benchmarks/startup.py.
_free_port, _register_model, _wait_http = free_port, register_model, wait_http

HOLD_POLICY = ("stages: [{{traffic: {}, min_samples: {{requests: 100000000}}}}, 100]\n"
               "kpis: [{{name: err, kind: proportion, metric: error_rate, role: critical, "
               "margin: 0.01}}]\n")


class Fleet:
    """The servers this benchmark started; each is stopped by pid, all of them in close()."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        from mlflow_kpigate.deploy.local import LocalDeployer

        self.deployer = LocalDeployer()
        self.state_dir, self.env = state_dir, env
        self.deployments: list[str] = []
        self.serves: list[Any] = []

    def deploy(self, name: str, candidate: str, config: dict[str, str]) -> tuple[int, Path]:
        """Create deployment ``name``; its port and directory."""
        self.deployments.append(name)
        port = free_port()
        self.deployer.create(name, candidate, {**config, "port": str(port)})
        return port, self.state_dir / name

    def undeploy(self, name: str) -> None:
        if name in self.deployments:
            self.deployments.remove(name)
            if (self.state_dir / name).exists():  # not if create failed before making it
                self.deployer.delete(name)

    def serve(self, model: str, workers: int) -> tuple[Any, int]:
        port = free_port()
        proc = start_serve(model, port, workers, self.env)
        self.serves.append(proc)
        return proc, port

    def unserve(self, proc: Any) -> None:
        if proc in self.serves:
            self.serves.remove(proc)
            stop_serve(proc)

    def close(self) -> None:
        for proc in list(self.serves):
            self.unserve(proc)
        for name in list(self.deployments):
            try:
                self.undeploy(name)
            except Exception as exc:  # e.g. a create that failed before its directory
                print(f"router_overhead: delete {name}: {exc}", file=sys.stderr)


# -- overhead ------------------------------------------------------------------------------
def compare(servers: dict[str, tuple[int, Callable[[], int | None]]], clients_list: list[int],
            args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Alternating rounds of reference and kpigate for each client count; per-count figures.

    ``servers`` maps each of NAMES to its port and a function giving its top pid now.
    """
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {
        c: {n: [] for n in NAMES} for c in clients_list}
    for c in clients_list:
        for port, _ in servers.values():
            load(port, c, args.warmup)
    for i in range(args.rounds):
        for j, c in enumerate(clients_list):
            for name in NAMES if (i + j) % 2 == 0 else NAMES[::-1]:
                port, top = servers[name]
                pid = top()
                before = tree_cpu(pid)
                run = load(port, c, args.requests)
                after = tree_cpu(pid) if top() == pid else None
                run["cpu"] = None if before is None or after is None else after - before
                runs[c][name].append(run)
    return {str(c): summarize(runs[c]) for c in clients_list}


def case_overhead(fleet: Fleet, models: dict[str, str], policy: Path, workers: int,
                  clients_list: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Reference and kpigate with ``workers`` workers each, stopped again at the end."""
    name = f"overhead-w{workers}"
    config = {"baseline": models["baseline"], "policy": str(policy)}
    if workers > 1:
        config["workers"] = str(workers)
    from mlflow_kpigate.core.errors import UsageError

    proc, serve_port = fleet.serve(models["baseline"], workers)
    try:
        try:
            port, directory = fleet.deploy(name, models["candidate"], config)
        except UsageError as exc:
            if "unknown config key" not in str(exc):
                raise
            return {"skipped": f"this router has no workers config key ({exc})"}
        wait_http(serve_port, "/health")
        servers = {"reference": (serve_port, lambda: proc.pid),
                   "kpigate": (port, lambda: router_pid(directory))}
        return compare(servers, clients_list, args)
    finally:
        fleet.unserve(proc)
        fleet.undeploy(name)


# -- isolation -----------------------------------------------------------------------------
def case_sleeps(fleet: Fleet, models: dict[str, str], policy: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    kinds = ("healthy", "sleeps")
    ports = {}
    try:
        for kind in kinds:
            ports[kind], _ = fleet.deploy(f"iso-{kind}", models[kind],
                                          {"baseline": models["baseline"], "policy": str(policy)})
        for kind in kinds:
            load(ports[kind], args.isolation_clients, min(args.warmup, args.isolation_requests))
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for i in range(args.rounds):
            for kind in kinds if i % 2 == 0 else kinds[::-1]:
                runs[kind].append(load(ports[kind], args.isolation_clients,
                                       args.isolation_requests, rate=args.isolation_rate))
    finally:
        for kind in kinds:
            fleet.undeploy(f"iso-{kind}")
    healthy, sleeps = baseline_callers(runs["healthy"]), baseline_callers(runs["sleeps"])
    ratio = None
    if sleeps["p99_ms"] is not None and healthy["p99_ms"]:
        ratio = sleeps["p99_ms"] / healthy["p99_ms"]
    return {"baseline_p99_ratio": ratio, "baseline_errors": sleeps["errors"],
            "sleeping_candidate": sleeps, "healthy_candidate": healthy,
            "rps_sleeping": float(np.median([r["rps"] for r in runs["sleeps"]])),
            "rps_healthy": float(np.median([r["rps"] for r in runs["healthy"]]))}


def case_exits(fleet: Fleet, models: dict[str, str], policy: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    name = "iso-exits"
    seen: set[int] = set()
    done = threading.Event()
    try:
        port, directory = fleet.deploy(name, models["exits"],
                                       {"baseline": models["baseline"], "policy": str(policy)})

        def watch() -> None:
            while not done.is_set():
                pid = router_pid(directory)
                if pid is not None:
                    seen.add(pid)
                done.wait(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        run = load(port, args.isolation_clients, args.isolation_requests,
                   rate=args.isolation_rate)
        back = time.monotonic()
        try:  # no more traffic: a restarted router stays up
            wait_http(port, "/health", timeout=60)
            run["back_s"] = time.monotonic() - back
        except RuntimeError:
            run["back_s"] = None
        done.set()
        watcher.join()
    finally:
        done.set()
        fleet.undeploy(name)
    ok = run["status"] == 200
    return {"baseline_errors": int((~ok).sum()), "baseline_requests": run["requests"],
            "connection_errors": int((run["status"] == 0).sum()),
            "answered_by_baseline": int((ok & (run["role"] == "baseline")).sum()),
            "fallbacks": int(run["fallback"].sum()), "router_pids_seen": len(seen),
            "seconds": run["seconds"], "router_healthy_after_s": run["back_s"]}


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="per server and round")
    parser.add_argument("--clients-list", default="1,8", help="client counts (default 1,8)")
    parser.add_argument("--warmup", type=int, default=200, help="requests per server first")
    parser.add_argument("--isolation-clients", type=int, default=64)
    parser.add_argument("--isolation-requests", type=int,
                        help="per deployment and round (default: --requests)")
    parser.add_argument("--isolation-rate", type=float, default=100.0,
                        help="isolation cases: req/s schedule over all clients (0: closed "
                             "loop; default 100)")
    parser.add_argument("--skip-workers2", action="store_true")
    parser.add_argument("--skip-isolation", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        clients_list = [int(c) for c in args.clients_list.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients-list {args.clients_list}: give client counts like 1,8")
    if args.isolation_requests is None:
        args.isolation_requests = args.requests

    work = Path(tempfile.mkdtemp(prefix="kpigate-bench-"))
    tracking = f"sqlite:///{work}/mlflow.db"
    # `mlflow models serve` runs `uvicorn` from PATH: make it this interpreter's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    own = {"MLFLOW_TRACKING_URI": tracking, "KPIGATE_STATE_DIR": str(work / "st")}
    os.environ.update(own)
    env = {**os.environ, "PATH": path}
    results: dict[str, Any] = {"settings": {
        "rounds": args.rounds, "requests": args.requests, "clients_list": clients_list,
        "warmup": args.warmup, "isolation_clients": args.isolation_clients,
        "isolation_requests": args.isolation_requests,
        "isolation_rate": args.isolation_rate, "cpus": os.cpu_count()}}
    fleet = None
    try:
        models = dict(zip(("baseline", "candidate"), register_model(tracking), strict=True))
        hold5, hold25 = work / "hold5.yaml", work / "hold25.yaml"
        hold5.write_text(HOLD_POLICY.format(5))
        hold25.write_text(HOLD_POLICY.format(25))
        if not args.skip_isolation:
            models.update(register_candidates(work))
        fleet = Fleet(work / "st", env)
        results["clients"] = case_overhead(fleet, models, hold5, 1, clients_list, args)
        if args.skip_workers2:
            results["workers2"] = {"ratio_rps": None, "note": "skipped (--skip-workers2)"}
        else:
            two = case_overhead(fleet, models, hold5, 2, [8], args)
            results["workers2"] = two.get("8") or {"ratio_rps": None, "note": two["skipped"]}
        if args.skip_isolation:
            results["isolation"] = {"candidate_sleeps": None, "candidate_exits": None,
                                    "note": "skipped (--skip-isolation)"}
        else:
            results["isolation"] = {
                "candidate_sleeps": case_sleeps(fleet, models, hold25, args),
                "candidate_exits": case_exits(fleet, models, hold25, args)}
    finally:
        if fleet is not None:
            fleet.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_tables(results)
    return 0


def _f(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def print_tables(results: dict[str, Any]) -> None:
    s = results["settings"]
    print(f"router overhead: {s['rounds']} alternating rounds of {s['requests']} single-row "
          f"requests per server, loopback, {s['cpus']} CPUs; kpigate vs mlflow models serve")
    print(f"{'case':<12}{'ref req/s':>10}{'kg req/s':>10}{'ratio':>7}{'+p50 ms':>9}"
          f"{'+p99 ms':>9}{'CPU ms/req ref':>16}{'kg':>7}{'errors':>8}")
    cases = [(f"{c} client{'s' * (c != '1')}", r) for c, r in results["clients"].items()]
    cases.append(("2 workers, 8", results["workers2"]))
    for label, r in cases:
        if r.get("ratio_rps") is None:
            print(f"{label:<12}  {r.get('note', 'n/a')}")
            continue
        ref, kg = r["reference"], r["kpigate"]
        print(f"{label:<12}{ref['rps']:>10.0f}{kg['rps']:>10.0f}{r['ratio_rps']:>7.2f}"
              f"{r['added_p50_ms']:>9.2f}{r['added_p99_ms']:>9.2f}"
              f"{_f(r['cpu_ms_per_request_reference'], '.2f'):>16}"
              f"{_f(r['cpu_ms_per_request_kpigate'], '.2f'):>7}"
              f"{ref['errors'] + kg['errors']:>8}")
    iso = results["isolation"]
    if iso.get("candidate_sleeps") is None:
        print(f"isolation: {iso.get('note', 'n/a')}")
        return
    sl, ex = iso["candidate_sleeps"], iso["candidate_exits"]
    print(f"\nisolation, kpigate only, {s['isolation_clients']} clients, candidate at 25%")
    print(f"candidate sleeps 2 s: baseline callers' p99 "
          f"{_f(sl['sleeping_candidate']['p99_ms'], '.1f')} ms vs "
          f"{_f(sl['healthy_candidate']['p99_ms'], '.1f')} ms with a healthy candidate "
          f"(ratio {_f(sl['baseline_p99_ratio'], '.2f')}), "
          f"{sl['baseline_errors']} errors among them")
    print(f"candidate exits: {ex['baseline_errors']} of {ex['baseline_requests']} requests "
          f"failed ({ex['connection_errors']} connection errors), {ex['fallbacks']} "
          f"fallbacks, {ex['router_pids_seen']} router pids seen")


if __name__ == "__main__":
    raise SystemExit(main())
