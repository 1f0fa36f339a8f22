"""The fraud case study end to end: train, register, roll out with the kpigate target.

1. trains an XGBoost baseline and a LightGBM candidate (and a degraded candidate) on
   synthetic transactions and registers them in a local MLflow store
   (``sqlite:///<workdir>/mlflow.db``; the baseline gets the ``champion`` alias);
2. starts a staged rollout with ``mlflow deployments create -t kpigate`` (the real MLflow
   CLI) using the time-compressed policy ``examples/policies/fraud_demo.yaml``;
3. replays transactions through the kpigate router and posts their labels 2 s later,
   while printing the rollout's progress from its audit log, through the bake after
   promotion (the previous version scores a shadow copy while a change detector watches);
4. ends with the decision, the tags on the candidate's model version, the alias, the
   rollout run and the report path.

    .venv/bin/python examples/fraud/rollout.py              # the LightGBM candidate
    .venv/bin/python examples/fraud/rollout.py --degraded   # a worse candidate: rolled back
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
from traffic import run_traffic  # noqa: E402
from train import train_and_register  # noqa: E402

from mlflow_kpigate.backends.local.state_store import RolloutStore  # noqa: E402
from mlflow_kpigate.core.history import History  # noqa: E402
from mlflow_kpigate.deploy.local_processes import stop_processes  # noqa: E402
from mlflow_kpigate.policy import load_policy  # noqa: E402
from mlflow_kpigate.rollout.replay import Outcome, replay  # noqa: E402

MODEL = "fraud-detector"
NAME = "fraud"
SHOWN = ("created", "promote", "rollback", "operator_rollback", "aborted", "alias_moved",
         "alias_restored", "report_written", "controller_restarted", "router_restarted")


def _say(message: str) -> None:
    print(message, flush=True)


def _mlflow_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlflow", "deployments", *args,
                           "-t", "kpigate"], capture_output=True, text=True, env=os.environ)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degraded", action="store_true",
                        help="roll out the deliberately degraded candidate instead")
    parser.add_argument("--workdir", default=str(ROOT / ".demo"),
                        help="where the MLflow store and the rollout state live")
    parser.add_argument("--rate", type=float, default=250.0, help="requests per second")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="give up after this many seconds")
    parser.add_argument("--n", type=int, default=200_000, help="training transactions")
    args = parser.parse_args(argv)

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{work}/mlflow.db"
    os.environ.update({"MLFLOW_TRACKING_URI": tracking,
                       "KPIGATE_STATE_DIR": str(work / "state"),
                       "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"})
    os.chdir(work)  # MLflow's local artifact root (./mlruns) lands in the workdir
    mlflow.set_tracking_uri(tracking)

    _say(f"[1/4] training and registering models in {tracking}")
    versions = train_and_register(tracking, MODEL, n=args.n, degraded=True, log=False)
    by_role = {v.role: v for v in versions}
    candidate = by_role["degraded" if args.degraded else "candidate"]
    baseline = by_role["baseline"]
    for v in versions:
        _say(f"      {v.role:<9} {v.uri}")

    _say(f"[2/4] mlflow deployments create -t kpigate --name {NAME} -m {candidate.uri}")
    _mlflow_cli("delete", "--name", NAME)  # a previous demo run, if any
    created = _mlflow_cli("create", "--name", NAME, "-m", candidate.uri,
                          "-C", f"baseline={baseline.uri}",
                          "-C", f"policy={ROOT / 'examples/policies/fraud_demo.yaml'}")
    if created.returncode != 0:
        _say(created.stderr.strip())
        return created.returncode
    store = RolloutStore(work / "state" / NAME)
    state = store.require()
    url = f"http://127.0.0.1:{state.port}"
    _say(f"      router on {url}; state in {store.dir}")

    _say(f"[3/4] replaying transactions at {args.rate:.0f}/s; labels follow 2 s later")
    stop = threading.Event()
    stats_box: dict[str, object] = {}
    traffic = threading.Thread(target=lambda: stats_box.update(stats=run_traffic(
        url, rate=args.rate, duration_s=args.timeout, label_delay_s=2.0, clients=8,
        seed=7, stop_event=stop)), daemon=True)
    traffic.start()
    deadline = time.monotonic() + args.timeout
    seen = 0
    started = time.monotonic()
    last_line = 0.0
    try:
        while time.monotonic() < deadline:
            for rec in store.events(seen):
                seen = rec.seq
                if rec.kind in SHOWN:
                    body = rec.event.body()
                    what = body.get("reason") or body.get("weights") or body.get("path") or (
                        f"{body['alias']} -> version {body['to_version']}" if "alias" in body
                        else "")
                    _say(f"      +{time.monotonic() - started:5.0f}s {rec.kind:<12} "
                         f"{body.get('stage', ''):<7} {what}"[:220])
            state = store.require()
            if state.phase.terminal and not state.effects_pending and any(
                    e.kind == "report_written" for e in store.events()):
                break
            if time.monotonic() - last_line > 15:
                last_line = time.monotonic()
                _say(f"      +{time.monotonic() - started:5.0f}s {state.phase.value:<12} "
                     f"{state.weights.describe()}; {state.reason}"[:220])
            time.sleep(1.0)
    finally:
        stop.set()
        traffic.join(30)
    state = store.require()
    _say(f"[4/4] outcome: {state.status.upper()} — {state.reason}")
    client = mlflow.MlflowClient()
    tags = client.get_model_version(MODEL, candidate.version).tags
    _say(f"      model-version tags on {candidate.uri}:")
    for key in sorted(k for k in tags if k == "kpigate" or k.startswith("kpigate.")):
        _say(f"        {key} = {tags[key][:150]}")
    _say(f"      aliases: {client.get_registered_model(MODEL).aliases}")
    _say(f"      rollout run: {state.rollout_run_id} (experiment kpigate-rollouts)")
    _say(f"      report: {store.dir / 'report' / 'report.md'} and report.html")
    evaluations = [e.evaluation for e in History.of(store.events()).evaluations()]
    if evaluations:
        again = replay(evaluations, load_policy(store.dir / "policy.yaml"))
        _say(f"      replay: {again.count(Outcome.IDENTICAL)} of {len(evaluations)} recorded "
             f"decisions reproduced exactly from their kept inputs (kpigate replay {NAME} "
             f"--state-dir {work / 'state'} [--policy OTHER.yaml])")
    stats = stats_box.get("stats")
    if stats is not None:
        _say(f"      traffic: {stats.summary()}")  # type: ignore[attr-defined]
    _say(f"      MLflow UI: mlflow ui --backend-store-uri {tracking}")
    stop_processes(store.dir)  # stop the router; the state, audit log and report stay
    if not state.phase.terminal:
        _say("the rollout did not finish within --timeout")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
