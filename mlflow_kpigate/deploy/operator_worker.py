"""One ModelRollout's rollout, run by ``kpigate operator`` as a child process.

``python -m mlflow_kpigate.deploy.operator_worker --namespace NS --name NAME``

The operator starts one worker per ModelRollout that has work to do, with the environment
the rollout's Secrets give (``MLFLOW_TRACKING_URI`` and credentials, the collector's token
files), and starts it again if it dies. The worker

1. reads the ModelRollout and the rollout already in the namespace's ConfigMaps;
2. resumes that rollout if it has not ended or still owes side effects (whatever the
   spec says now: a running rollout is never replaced behind its back), or, when there is
   none or it ended and the spec asks for another
   (:func:`~.modelrollout_request.model_digest`), starts the rollout the spec asks for
   exactly as ``mlflow deployments create -t kpigate:/seldon/NS -C wait=true`` would
   (:func:`~.modelrollout_request.create_request`), saving the spec's digest with its
   settings;
3. runs its controller until it ends or the worker gets SIGTERM.

Everything durable is in the cluster (the rollout's ConfigMaps), so a worker killed at any
point is replaced by one that resumes where it was. A bad spec or policy is a usage error:
the worker writes the one-line message to ``worker.error`` in its scratch directory and
exits 2, and the operator reports it instead of restarting the worker.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from mlflow_kpigate.backends.modelrollout import ModelRollout
from mlflow_kpigate.backends.seldon.kinds import MODEL_ROLLOUT
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.deploy.config import parse_config
from mlflow_kpigate.deploy.modelrollout_request import (
    create_request,
    model_digest,
    policy_text,
    source_of,
)
from mlflow_kpigate.deploy.seldon_rollout import ClusterRollout, connect, workdir

log = logging.getLogger("kpigate.operator.worker")
WORKER_MODULE = "mlflow_kpigate.deploy.operator_worker"
ERROR_FILE = "worker.error"
#: The ``-C`` options of the worker's own connection to the cluster (not the rollout's).
_KUBE = ("kubeconfig", "kube_context", "state_dir")


def saved_digest(rollout: ClusterRollout) -> str | None:
    """The ModelRollout digest saved with the rollout in the ConfigMaps (None: none, or a
    rollout not started by the operator)."""
    try:
        source = rollout.settings()["settings"].get("source") or {}
    except UsageError:
        return None
    digest = source.get("digest")
    return str(digest) if digest else None


def run_worker(namespace: str, name: str, kube: dict[str, str],
               stop: threading.Event | None = None) -> int:
    """Start or resume the rollout of ModelRollout ``name``; returns an exit code."""
    from mlflow_kpigate.deploy.seldon import SeldonDeployer
    from mlflow_kpigate.deploy.seldon_controller import run_controller

    cfg = parse_config(kube)
    cluster = connect(namespace, cfg)
    obj = cluster.objects(MODEL_ROLLOUT).get(name)
    if obj is None:
        log.info("ModelRollout %s/%s is gone; nothing to do", namespace, name)
        return 0
    mr = ModelRollout.from_object(obj)
    rollout = ClusterRollout(cluster, name)
    state = rollout.store.load()
    say = lambda m: log.info("%s/%s: %s", namespace, name, m)  # noqa: E731
    if state is not None and (not state.phase.terminal or state.effects_pending):
        # An ended rollout whose side effects a killed worker left owed is resumed too:
        # the controller finishes them and returns.
        say(f"resuming the rollout at {state.phase.value} (stage {state.stage_index})")
        run_controller(namespace, name, cfg, progress=say, stop=stop)
        return 0
    if state is not None and saved_digest(rollout) == model_digest(mr.spec):
        say(f"the rollout asked for has ended ({state.phase.value}); nothing to do")
        return 0
    directory = workdir(namespace, name, cfg.state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    policy_file = directory / "modelrollout-policy.yaml"
    policy_file.write_text(policy_text(mr, rollout.configmaps.get))
    model_uri, raw = create_request(
        mr, policy_file, shared_collector=_shared_collector_supported(),
        **{k.replace("kube_context", "context"): v for k, v in kube.items()})
    SeldonDeployer(f"kpigate:/seldon/{namespace}").create(
        name, model_uri, raw, progress=say, source=source_of(mr, obj), stop=stop)
    return 0


def _shared_collector_supported() -> bool:
    from mlflow_kpigate.deploy.config import KEYS

    return "shared_collector" in KEYS


def main(argv: list[str] | None = None) -> int:
    """The worker's command line (the operator is its only caller)."""
    parser = argparse.ArgumentParser(prog="kpigate-operator-worker")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    parser.add_argument("--state-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker {args.namespace}/{args.name} "
                               "%(levelname)s %(message)s")
    kube = {k: v for k, v in (("kubeconfig", args.kubeconfig), ("kube_context", args.context),
                              ("state_dir", args.state_dir)) if v}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    error_file = workdir(args.namespace, args.name,
                         Path(args.state_dir) if args.state_dir else None) / ERROR_FILE
    error_file.unlink(missing_ok=True)
    try:
        return run_worker(args.namespace, args.name, kube, stop)
    except KpigateError as exc:
        log.error("%s", exc)
        error_file.parent.mkdir(parents=True, exist_ok=True)
        error_file.write_text(f"{exc.exit_code}\n{exc}\n")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
