"""The controller of a Seldon rollout: wired to the cluster, Prometheus and MLflow.

The controller runs where ``create`` runs: in the calling process with ``-C wait=true``
(the Kubernetes Job of examples/k8s, which serves the decision metrics on
``$KPIGATE_METRICS_PORT``), otherwise as a background process on this machine
(``python -m mlflow_kpigate.deploy.seldon_controller --namespace NS --name NAME``).
Every controller reads the rollout's frozen policy, baseline and settings from its
ConfigMaps, so a restarted one decides exactly as the one before it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.history import History
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy.config import DeploymentConfig, parse_config
from mlflow_kpigate.deploy.finish import finish_rollout
from mlflow_kpigate.deploy.inputs import load_registry_baseline
from mlflow_kpigate.deploy.seldon_rollout import ClusterRollout, connect, workdir
from mlflow_kpigate.rollout.controller import Controller

log = logging.getLogger("kpigate.seldon")
CONTROLLER_MODULE = "mlflow_kpigate.deploy.seldon_controller"


def metrics_port_from_env() -> int | None:
    value = os.environ.get("KPIGATE_METRICS_PORT", "").strip()
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise UsageError(f"KPIGATE_METRICS_PORT={value}: must be a port number (e.g. 9102)")
    return int(value)


def _metrics_linger() -> float:
    value = os.environ.get("KPIGATE_METRICS_LINGER", "90").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        raise UsageError(f"KPIGATE_METRICS_LINGER={value}: must be seconds, e.g. 90") from None


def controller_for(namespace: str, name: str, cfg: DeploymentConfig,
                   observer: Callable[[RolloutState, Any], None] | None = None,
                   directory: Path | None = None) -> Controller:
    """A controller for a cluster rollout, wired to the cluster, Prometheus and MLflow."""
    from mlflow_kpigate.metrics.prometheus import PrometheusSource
    from mlflow_kpigate.notify import notifier_from_policy
    from mlflow_kpigate.registry import Registry

    cluster = connect(namespace, cfg)
    rollout = ClusterRollout(cluster, name)
    directory = directory or workdir(namespace, name, cfg.state_dir)
    policy, settings = rollout.materialize(directory)
    state = rollout.store.require()
    registry = Registry(state.tracking_uri)
    store = rollout.store
    source = PrometheusSource(
        cfg.prometheus_url or settings.get("prometheus_url"), name, namespace, policy,
        seldon_version=int(settings["target"]["seldon_version"]),
        windows=lambda: History.of(store.events()).stage_windows())
    return Controller(
        store=store, source=source, traffic=rollout.traffic(settings), policy=policy,
        registry=registry, notifier=notifier_from_policy(policy),
        registry_baseline=load_registry_baseline(directory), observer=observer,
        on_terminal=lambda s: finish_rollout(directory, s, registry, store=store,
                                             policy=policy))


def run_controller(namespace: str, name: str, cfg: DeploymentConfig, *,
                   progress: Callable[[str], None] | None = None,
                   observe: Callable[[RolloutState], None] | None = None,
                   metrics_port: int | None = None,
                   stop: threading.Event | None = None) -> RolloutState:
    """Drive the rollout until it ends (or ``stop`` is set); serves metrics if asked.
    ``observe`` gets the state first and after every evaluation."""
    from mlflow_kpigate.rollout.exposition import DecisionMetrics

    metrics = DecisionMetrics(name)
    say = progress or (lambda _m: None)

    def watched(state: RolloutState, decision: Any) -> None:
        metrics.observe(state, decision)
        if decision is not None:
            say(f"kpigate: [{decision.action.value}] {decision.reason}")
        if observe is not None:
            observe(state)

    controller = controller_for(namespace, name, cfg, observer=watched)
    first = controller.store.require()
    metrics.observe(first, None)
    if observe is not None:
        observe(first)
    linger = _metrics_linger()
    # In a pod, Prometheus scrapes the pod IP: all interfaces, as for any exporter.
    stop_serving = metrics.serve("0.0.0.0", metrics_port) if metrics_port else None
    try:
        state = controller.run(stop)
        if stop_serving is not None:
            metrics.observe(state, None)
            # Stay up a few scrape intervals so the terminal phase reaches Prometheus (the
            # alert rules rely on seeing it) before the Job's pod goes away.
            (stop or threading.Event()).wait(linger)
        return state
    finally:
        if stop_serving is not None:
            stop_serving()


def _background_alive(directory: Path) -> bool:
    try:
        pid = int((directory / "controller.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def spawn_controller(namespace: str, name: str, cfg: DeploymentConfig,
                      directory: Path) -> None:
    if _background_alive(directory):
        return  # one controller per rollout and machine; the state's CAS guards the rest
    args = [sys.executable, "-m", CONTROLLER_MODULE,
            "--namespace", namespace, "--name", name]
    for flag, value in (("--kubeconfig", cfg.kubeconfig), ("--context", cfg.kube_context),
                        ("--prometheus-url", cfg.prometheus_url),
                        ("--state-dir", cfg.state_dir)):
        if value:
            args += [flag, str(value)]
    with (directory / "controller.log").open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True)
    (directory / "controller.pid").write_text(str(proc.pid))


def stop_background_controller(namespace: str, name: str, root: Path | None = None) -> None:
    """Stop a controller that ``create`` started on this machine (if any)."""
    pid_file = workdir(namespace, name, root) / "controller.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m mlflow_kpigate.deploy.seldon_controller --namespace NS --name NAME``."""
    parser = argparse.ArgumentParser(prog="kpigate-seldon-controller")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    parser.add_argument("--prometheus-url")
    parser.add_argument("--state-dir")
    parser.add_argument("--metrics-port", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raw = {k: v for k, v in (("kubeconfig", args.kubeconfig),
                             ("kube_context", args.context),
                             ("prometheus_url", args.prometheus_url),
                             ("state_dir", args.state_dir)) if v}
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        state = run_controller(args.namespace, args.name, parse_config(raw),
                               metrics_port=args.metrics_port, stop=stop,
                               progress=lambda m: log.info("%s", m))
    except KpigateError as exc:
        log.error("%s", exc)
        return exc.exit_code
    log.info("controller stopping: rollout %s (%s)", state.phase.value, state.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
