"""Run the embedded router for one deployment directory.

``python -m mlflow_kpigate.backends.local.server DEPLOYMENT_DIR`` reads the rollout state
saved there (:class:`.state_store.RolloutStore`), points MLflow at the state's
tracking URI, loads the baseline and candidate with ``mlflow.pyfunc.load_model``, opens the
prediction log ``DEPLOYMENT_DIR/predictions.db`` and serves on ``127.0.0.1:<port>`` with
one uvicorn worker (one process owns the prediction log's writer). SIGTERM or SIGINT shut
it down gracefully: in-flight requests and shadow copies finish and every logged
prediction is written before the process exits 0.

The traffic weights are re-read from the store at most every 0.5 s (``POST
/admin/reload`` re-reads at once). If the saved state names another candidate version
than the one this process loaded (a new rollout was started), the router serves the
baseline only until it is restarted: it never sends traffic to a model the state did not
approve. Rows past the collector's retention are purged at start and hourly.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.routes import create_app
from mlflow_kpigate.backends.local.routing import CachedWeights, RoutingKey
from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.records import PREDICTIONS_DB
from mlflow_kpigate.core.signals import signals_end_the_server
from mlflow_kpigate.core.state import RolloutState, Weights
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics import Collector
from mlflow_kpigate.policy import Policy, load_policy

__all__ = ["PREDICTIONS_DB", "load_models", "main", "serve"]

logger = logging.getLogger("mlflow_kpigate.router")

HOST = "127.0.0.1"
_PURGE_EVERY_S = 3600.0


def _policy(state: RolloutState, directory: Path) -> Policy:
    path = Path(state.policy_file).expanduser()
    if not path.is_absolute() and not path.exists() and (directory / path).exists():
        path = directory / path
    return load_policy(path)


def load_models(state: RolloutState) -> tuple[Any, Any | None]:
    """``(baseline, candidate)`` pyfunc models from the state's URIs and tracking URI.

    A candidate that fails to load is tolerated (``None``) only when the state has already
    detached it; otherwise the error propagates, since the rollout cannot proceed.
    """
    import mlflow

    mlflow.set_tracking_uri(state.tracking_uri)
    baseline = mlflow.pyfunc.load_model(state.baseline_uri)
    try:
        candidate = mlflow.pyfunc.load_model(state.candidate_uri)
    except Exception:
        if state.weights.candidate_attached:
            raise
        logger.warning("candidate %s could not be loaded; it is detached, serving the "
                       "baseline only", state.candidate_uri, exc_info=True)
        candidate = None
    return baseline, candidate


def _weights_loader(store: RolloutStore, candidate_version: str
                    ) -> Callable[[], tuple[Weights, int]]:
    def load() -> tuple[Weights, int]:
        state = store.require()
        if state.candidate_version != candidate_version:
            return Weights.baseline_only(), state.stage_index
        return state.weights, state.stage_index

    return load


def _purge_loop(collector: Collector, stop: threading.Event) -> None:
    while True:
        try:
            removed = collector.purge(time.time())
            if removed:
                logger.info("purged %d predictions past the retention period", removed)
        except Exception:
            logger.warning("purging old predictions failed", exc_info=True)
        if stop.wait(_PURGE_EVERY_S):
            return


def serve(directory: Path) -> None:
    """Serve deployment ``directory`` until SIGTERM/SIGINT (blocks; see module doc)."""
    import uvicorn

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UsageError(f"deployment directory {directory} does not exist")
    store = RolloutStore(directory)
    state = store.require()
    policy = _policy(state, directory)
    try:
        RoutingKey.parse(state.routing_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    baseline, candidate = load_models(state)
    collector = Collector(directory / PREDICTIONS_DB, AggregateSpec.from_policy(policy))
    stop = threading.Event()
    try:
        config = RouterConfig(
            deployment=state.name,
            baseline_version=state.baseline_version,
            candidate_version=state.candidate_version,
            baseline_model=baseline,
            candidate_model=candidate,
            routing_key=state.routing_key,
            segment_fields=policy.segment_fields,
            threshold=state.threshold,
        )
        weights = CachedWeights(_weights_loader(store, state.candidate_version))
        app = create_app(config, collector, weights)
        purger = threading.Thread(target=_purge_loop, args=(collector, stop),
                                  name="kpigate-purge", daemon=True)
        purger.start()
        server = uvicorn.Server(uvicorn.Config(
            app, host=HOST, port=int(state.port), workers=1, log_level="warning",
            access_log=False, lifespan="on", timeout_graceful_shutdown=30,
        ))
        logger.info("router for %s on http://%s:%d (baseline %s, candidate %s)",
                    state.name, HOST, state.port, state.baseline_version,
                    state.candidate_version)
        with signals_end_the_server():
            server.run()
    finally:
        stop.set()
        collector.close()
    logger.info("router for %s stopped; prediction log flushed", state.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_kpigate.backends.local.server",
        description="Serve a kpigate deployment's baseline and candidate on 127.0.0.1.",
    )
    parser.add_argument("directory", type=Path, help="the deployment directory (state.db)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        serve(args.directory)
    except KpigateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
