"""The embedded deployment's controller process: the controller wired to its local parts.

``python -m mlflow_kpigate.deploy.local_controller DEPLOYMENT_DIR`` (started and restarted
by the supervisor) builds the :class:`~mlflow_kpigate.rollout.controller.Controller` of
the deployment in that directory — its SQLite state store, its prediction log as the
sample source, the embedded router as traffic backend, MLflow as registry, the policy's
alert channels — and runs it until the rollout ends or SIGTERM, serving its decision
metrics on ``/metrics`` meanwhile (:mod:`.local_metrics`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.local.evidence import RecordedEvidence
from mlflow_kpigate.backends.local.layout import segments_dir
from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.backends.local.traffic import LocalRouterTraffic
from mlflow_kpigate.core.records import PREDICTIONS_DB
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy.finish import finish_rollout
from mlflow_kpigate.deploy.inputs import load_registry_baseline
from mlflow_kpigate.deploy.local_metrics import LocalMetrics, linger_s
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.collector import Collector
from mlflow_kpigate.notify import notifier_from_policy
from mlflow_kpigate.policy import load_policy
from mlflow_kpigate.rollout.controller import Controller

log = logging.getLogger("kpigate.controller")


def controller_for(directory: Path,
                   observer: Callable[[RolloutState, Any], None] | None = None) -> Controller:
    """The controller of the deployment in ``directory``, wired to MLflow and alerts."""
    from mlflow_kpigate.registry import Registry  # MLflow: only in the process that needs it

    store = RolloutStore(directory)
    state = store.require()
    registry = Registry(state.tracking_uri)
    policy = load_policy(state.policy_file)
    # Reading ingests the router's log segments first, so each evaluation sees every
    # prediction answered until then.
    log = Collector(directory / PREDICTIONS_DB, AggregateSpec.from_policy(policy),
                    segments=segments_dir(directory))
    # ... and holds while the router reports predictions it could not record.
    source = RecordedEvidence(log, state.port)
    return Controller(store=store, source=source, traffic=LocalRouterTraffic(), policy=policy,
                      registry=registry, notifier=notifier_from_policy(policy),
                      registry_baseline=load_registry_baseline(directory), observer=observer,
                      on_terminal=lambda s: finish_rollout(directory, s, registry,
                                                           store=store, policy=policy))


def main(argv: list[str] | None = None) -> int:
    """Process entry point used by the supervisor."""
    parser = argparse.ArgumentParser(prog="kpigate-controller")
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    directory = Path(args.directory)
    metrics = LocalMetrics(directory, RolloutStore(directory).require())
    controller = controller_for(directory, observer=metrics.observe)
    metrics.start()
    try:
        state = controller.run(stop)
        if state.phase.terminal:
            # Serve the final phase a while: the alert rules tell an ended rollout from a
            # dead controller by it.
            metrics.observe(state, None)
            stop.wait(linger_s())
    finally:
        metrics.stop()
    log.info("controller stopping: rollout %s (%s)", state.phase.value, state.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
