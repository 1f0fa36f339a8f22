"""Start-up: `kpigate --version` / `--help`, and `mlflow deployments create` split into parts.

(a) The `kpigate` command: wall time of `kpigate --version` and `kpigate --help` in a fresh
    interpreter, the modules they leave in `sys.modules` and which heavy ones (scipy,
    numpy, pandas, mlflow, sklearn) among them; beside it `--version` after importing
    every command module first, which is what a group that registers its commands
    eagerly costs.
(b) `mlflow deployments create -t kpigate` against a real `mlflow server` (SQLite store,
    proxied artifacts) with a registered scikit-learn model (baseline v1, candidate v2),
    and its parts, each in a fresh process:
    - MLflow CLI import: `import mlflow.cli` (what `python -m mlflow` loads first);
    - kpigate import: the plugin and the embedded Deployer on top of it;
    - model load: `mlflow.pyfunc.load_model` of baseline and candidate (MLflow imported);
    - router start: spawn → first 200 on /health, of the router process alone and of the
      supervisor (which starts the router and the controller, as `create` does) on a
      prepared deployment;
    - create → router answers: the `mlflow deployments create` process started → first
      200 on /health (polled every 10 ms on the `-C port` this script passes), then until
      the CLI exits, and a POST /invocations that must answer 200.
    `mlflow deployments delete` after each create is timed too.

`--baseline-tree DIR` (a checkout of an earlier commit, e.g. from `git worktree add`)
measures that code beside this checkout's against the same server and models: child
processes run in their tree and import its package (working directory and PYTHONPATH).
Everything runs in alternating rounds (the order of parts and trees reversed every other
round), so drift on a shared machine falls on all alike; the table gives the median and
the range over rounds.

    .venv/bin/python benchmarks/startup.py [--rounds 5] [--baseline-tree DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from router_overhead import _free_port, _register_model, _wait_http  # noqa: E402

HEAVY = ("scipy", "numpy", "pandas", "mlflow", "sklearn")
HOLD_POLICY = ("stages: [{traffic: 5, min_samples: {requests: 100000000}}, 100]\n"
               "kpis: [{name: err, kind: proportion, metric: error_rate, role: critical, "
               "margin: 0.01}]\n")
ROW = {"dataframe_split": {"columns": [f"f{i}" for i in range(8)],
                           "data": [[0.1, -0.2, 0.3, 0.0, 1.0, -1.0, 0.5, 0.2]]}}
_REPORT = (f"import json, sys; print(json.dumps({{'modules': len(sys.modules), 'heavy': "
           f"[m for m in {HEAVY!r} if m in sys.modules]}}), file=sys.stderr)")
_CLI = ("import sys, runpy, atexit; atexit.register(lambda: exec({report!r})); {pre}"
        "sys.argv = ['kpigate', {arg!r}]; runpy.run_module('mlflow_kpigate.cli', "
        "run_name='__main__')")
_EAGER = ("import importlib, pkgutil, mlflow_kpigate.cli as c; "
          "[importlib.import_module(m.name) for m in pkgutil.iter_modules(c.__path__, "
          "'mlflow_kpigate.cli.') if m.name != 'mlflow_kpigate.cli.__main__']; ")
_IMPORTS = ("import time; t0 = time.perf_counter(); import mlflow.cli; "
            "t1 = time.perf_counter(); import mlflow_kpigate.plugin; "
            "from mlflow_kpigate.deploy.targets import deployer_for; deployer_for('kpigate'); "
            "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)")
_LOAD = ("import sys, time, mlflow; mlflow.set_tracking_uri(sys.argv[1]); "
         "t0 = time.perf_counter(); mlflow.pyfunc.load_model(sys.argv[2]); "
         "mlflow.pyfunc.load_model(sys.argv[3]); print(time.perf_counter() - t0)")


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _until_healthy(port: int, proc: subprocess.Popen[bytes], t0: float,
                   limit: float = 300) -> float:
    """Seconds from ``t0`` until ``port`` answers /health 200 (polled every 10 ms)."""
    while not _healthy(port):
        if proc.poll() is not None and proc.returncode != 0:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if time.perf_counter() - t0 > limit:
            raise RuntimeError(f"nothing healthy on 127.0.0.1:{port} after {limit}s")
        time.sleep(0.01)
    return time.perf_counter() - t0


def _stop_deployment(directory: Path) -> None:
    """SIGTERM the deployment's supervisor (it stops its children) and wait for them."""
    try:
        pids = json.loads((directory / "pids.json").read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pids["supervisor"], signal.SIGTERM)
    for pid in pids.values():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    (directory / "pids.json").unlink(missing_ok=True)


class Bench:
    """The tracking server, the models and the state directory; measures one tree."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.server: subprocess.Popen[bytes] | None = None
        self.uri = ""
        self.models = ("", "")
        self.policy = work / "hold.yaml"
        self.state = work / "state"
        self.runs = 0

    def env(self, tree: Path) -> dict[str, str]:
        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "PYTHONPATH": str(tree),
                "KPIGATE_STATE_DIR": str(self.state)}

    # -- environment ---------------------------------------------------------------------
    def start(self, trees: list[Path]) -> None:
        root = self.work / "server"
        root.mkdir()
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with (root / "server.log").open("wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                 f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
                 str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        _wait_http(port, "/health")
        self.uri = f"http://127.0.0.1:{port}"
        os.environ["MLFLOW_TRACKING_URI"] = self.uri
        with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links
            self.models = _register_model(self.uri)
        self.policy.write_text(HOLD_POLICY)
        for i, tree in enumerate(trees):  # a deployment per tree, its processes stopped
            self._mlflow(tree, "create", "--name", f"prepared-{i}", "-m", self.models[1],
                         "-C", f"baseline={self.models[0]}", "-C", f"policy={self.policy}")
            _stop_deployment(self.state / f"prepared-{i}")

    def stop(self) -> None:
        for d in self.state.glob("*"):
            _stop_deployment(d)
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(30)

    def _mlflow(self, tree: Path, *args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "mlflow", "deployments", *args, "-t",
                                 "kpigate"], env=self.env(tree), cwd=tree, capture_output=True,
                                text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"mlflow deployments {args[0]}: {result.stderr[-2000:]}")

    def _python(self, tree: Path, code: str, *args: str) -> str:
        result = subprocess.run([sys.executable, "-c", code, *args], env=self.env(tree), cwd=tree,
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{code[:60]}…: {result.stderr[-2000:]}")
        return result.stdout

    # -- (a) the kpigate command -----------------------------------------------------------
    def cli(self, tree: Path, arg: str, eager: bool = False) -> dict[str, Any]:
        code = _CLI.format(report=_REPORT, pre=_EAGER if eager else "", arg=arg)
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", code], env=self.env(tree), cwd=tree,
                                capture_output=True, text=True, timeout=120)
        wall = time.perf_counter() - t0
        if result.returncode != 0:
            raise RuntimeError(f"kpigate {arg}: {result.stderr[-2000:]}")
        return {"s": wall, **json.loads(result.stderr.strip().splitlines()[-1])}

    # -- (b) create and its parts ----------------------------------------------------------
    def imports(self, tree: Path) -> dict[str, float]:
        mlflow_cli, kpigate = map(float, self._python(tree, _IMPORTS).split())
        return {"mlflow_cli_import": mlflow_cli, "kpigate_import": kpigate}

    def model_load(self, tree: Path) -> dict[str, float]:
        return {"model_load": float(self._python(tree, _LOAD, self.uri, *self.models))}

    def router_start(self, tree: Path, index: int) -> dict[str, float]:
        prepared = self.state / f"prepared-{index}"
        port = json.loads(self._python(tree, (
            "import sys; from mlflow_kpigate.backends.local.state_store import RolloutStore; "
            "from pathlib import Path; print(RolloutStore(Path(sys.argv[1])).require().port)"),
            str(prepared)))
        out: dict[str, float] = {}
        for key, module in (("router_start_alone", "mlflow_kpigate.backends.local.server"),
                            ("router_start_supervised",
                             "mlflow_kpigate.deploy.local_supervisor")):
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", module, str(prepared)],
                                    env=self.env(tree), cwd=tree, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            out[key] = _until_healthy(port, proc, t0)
            proc.terminate()
            proc.wait(120)
        return out

    def create(self, tree: Path) -> dict[str, float]:
        self.runs += 1
        name, port = f"bench-{self.runs}", _free_port()
        cmd = [sys.executable, "-m", "mlflow", "deployments", "create", "-t", "kpigate",
               "--name", name, "-m", self.models[1], "-C", f"baseline={self.models[0]}",
               "-C", f"policy={self.policy}", "-C", f"port={port}"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=self.env(tree), cwd=tree, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        answering = _until_healthy(port, proc, t0)
        _, err = proc.communicate(timeout=600)
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"create: {err.decode(errors='replace')[-2000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/invocations", body=json.dumps(ROW),
                     headers={"Content-Type": "application/json"})
        status = conn.getresponse().status
        if status != 200:
            raise RuntimeError(f"POST /invocations answered {status}")
        t1 = time.perf_counter()
        self._mlflow(tree, "delete", "--name", name)
        return {"create_until_answering": answering, "create_cli_exit": total,
                "delete": time.perf_counter() - t1}


ROWS = {
    "cli": [("kpigate --version", "version"), ("kpigate --help", "help"),
            ("kpigate --version, every command module imported", "version_eager")],
    "create": [
        ("MLflow CLI import (import mlflow.cli)", "mlflow_cli_import"),
        ("kpigate import on top (plugin + Deployer)", "kpigate_import"),
        ("model load (baseline + candidate)", "model_load"),
        ("router start, router process alone", "router_start_alone"),
        ("router start, supervisor (router + controller)", "router_start_supervised"),
        ("create → router answers /health", "create_until_answering"),
        ("create → CLI exits", "create_cli_exit"),
        ("delete (not a start-up figure)", "delete"),
    ],
}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def measure(rounds: int, trees: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Figures per tree label: median/min/max seconds per part (+ modules for the CLI)."""
    work = Path(tempfile.mkdtemp(prefix="kpigate-startup-"))
    bench = Bench(work)
    labels = list(trees)
    samples: dict[str, dict[str, list[float]]] = {label: {} for label in labels}
    reports: dict[str, dict[str, dict[str, Any]]] = {label: {} for label in labels}

    def parts(label: str) -> list[Callable[[], dict[str, float]]]:
        tree, index = trees[label], labels.index(label)
        return [lambda: {"version": bench.cli(tree, "--version")["s"]},
                lambda: {"help": bench.cli(tree, "--help")["s"]},
                lambda: {"version_eager": bench.cli(tree, "--version", eager=True)["s"]},
                lambda: bench.imports(tree), lambda: bench.model_load(tree),
                lambda: bench.router_start(tree, index), lambda: bench.create(tree)]

    try:
        bench.start([trees[label] for label in labels])
        for label in labels:
            for key, arg, eager in (("version", "--version", False),
                                    ("help", "--help", False),
                                    ("version_eager", "--version", True)):
                reports[label][key] = bench.cli(trees[label], arg, eager)
        for i in range(rounds):
            order = labels if i % 2 == 0 else labels[::-1]
            steps = [(label, part) for n in range(len(parts(labels[0])))
                     for label in order for part in [parts(label)[n]]]
            for label, part in steps if i % 2 == 0 else steps[::-1]:
                for key, value in part().items():
                    samples[label].setdefault(key, []).append(value)
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, dict[str, Any]] = {}
    for label in labels:
        figures[label] = {k: {"median_s": _median(v), "min_s": min(v), "max_s": max(v),
                              "rounds": len(v)} for k, v in samples[label].items()}
        for key, report in reports[label].items():
            figures[label][key].update(modules=report["modules"], heavy=report["heavy"])
    return figures


def _cell(f: dict[str, Any]) -> str:
    return f"{f['median_s']:.2f} [{f['min_s']:.2f}–{f['max_s']:.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="a checkout of an earlier commit to measure beside this one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    trees = {"this checkout": ROOT}
    if args.baseline_tree is not None:
        trees = {f"baseline ({args.baseline_tree})": args.baseline_tree.resolve(), **trees}
    figures = measure(args.rounds, trees)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"start-up: {args.rounds} alternating rounds; seconds, median [min–max]")
    for label in figures:
        print(f"  {label}")
    for section, rows in ROWS.items():
        print()
        head = "".join(f"{label[:24]:>26}" for label in figures)
        print(f"{'':<50}{head}")
        for text, key in rows:
            print(f"{text:<50}" + "".join(f"{_cell(figures[label][key]):>26}"
                                          for label in figures))
        if section == "cli":
            for label, figs in figures.items():
                print(f"  {label}: " + "; ".join(
                    f"{text.split(',')[0]}{' (eager)' if key.endswith('eager') else ''}: "
                    f"{figs[key]['modules']} modules, heavy: "
                    f"{', '.join(figs[key]['heavy']) or 'none'}" for text, key in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
