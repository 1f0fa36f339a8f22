"""One router worker: a process serving the deployment's port on a socket of its own.

``python -m mlflow_kpigate.backends.local.worker DIR --index I --parent PID`` is started
by the router's main process (:mod:`.server`). Every worker listens on the port with a
socket of its own (``SO_REUSEPORT``), so the kernel spreads new connections over the
workers and N workers use N cores. (With one listening socket shared by all, as in
gunicorn's pre-fork model, the worker whose event loop wakes first accepts every pending
connection at once: eight keep-alive clients all ended up on one worker here.) A worker

* scores the baseline itself, on its own scoring executor (:mod:`.routes`);
* reaches the candidate through its own candidate process (``DIR/run/candidate-I.sock``,
  started by the main process) with a timeout, a cap on calls in flight and the
  baseline's answer as the fallback (:mod:`.candidate_scorer`);
* appends every prediction to its own segment of the prediction log (``DIR/segments``)
  before the answer is sent; the main process ingests the segments into
  ``predictions.db`` (:mod:`mlflow_kpigate.metrics.segment_log`);
* reads the traffic weights from the rollout store at most every 0.5 s (one read per
  interval, whatever the load; ``POST /admin/reload`` re-reads at once in the worker that
  gets it, the others within the interval). If the saved state names another candidate
  than the one this rollout's processes serve (a new rollout was started), it serves the
  baseline only until restarted: it never sends traffic to a model the state did not
  approve.

The worker dies with the main process (:mod:`.process_tie`); on SIGTERM it stops
accepting, finishes the requests in flight and their shadow copies, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mlflow_kpigate.backends.local.candidate_scorer import ProcessScorer
from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.layout import candidate_socket, load_rollout, segments_dir
from mlflow_kpigate.backends.local.process_tie import tie_to_parent
from mlflow_kpigate.backends.local.routing import CachedWeights
from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.core.records import PREDICTIONS_DB
from mlflow_kpigate.core.signals import signals_end_the_server
from mlflow_kpigate.core.state import Weights
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics import Collector
from mlflow_kpigate.metrics.segment_log import SegmentWriter

__all__ = ["main", "run_worker"]

logger = logging.getLogger("mlflow_kpigate.router")

HOST = "127.0.0.1"


def _weights_loader(store: RolloutStore, candidate_version: str
                    ) -> Callable[[], tuple[Weights, int]]:
    def load() -> tuple[Weights, int]:
        state = store.require()
        if state.candidate_version != candidate_version:
            return Weights.baseline_only(), state.stage_index
        return state.weights, state.stage_index

    return load


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    return sock  # uvicorn's server calls listen() once the app has started


def run_worker(directory: Path, index: int) -> None:
    """Serve the deployment's port until SIGTERM (see module doc)."""
    import mlflow
    import uvicorn

    store, state, policy = load_rollout(directory)
    mlflow.set_tracking_uri(state.tracking_uri)
    baseline = mlflow.pyfunc.load_model(state.baseline_uri)
    collector = Collector(directory / PREDICTIONS_DB, AggregateSpec.from_policy(policy),
                          segments=segments_dir(directory))
    writer = SegmentWriter(segments_dir(directory), f"w{index}", fsync=state.log_fsync)
    config = RouterConfig(
        deployment=state.name, baseline_version=state.baseline_version,
        candidate_version=state.candidate_version, baseline_model=baseline,
        candidate_model=None, routing_key=state.routing_key,
        segment_fields=policy.segment_fields, threshold=state.threshold,
        candidate_timeout_s=state.candidate_timeout_s, max_body_bytes=state.max_body_bytes,
        warm_candidate=state.warm_candidate,
        rollout=state.rollout_run_id or "",
    )
    candidate = ProcessScorer(candidate_socket(directory, index),
                              version=state.candidate_version,
                              max_inflight=config.shadow_max_inflight)
    from mlflow_kpigate.backends.local.routes import create_app

    app = create_app(config, collector, CachedWeights(
        _weights_loader(store, state.candidate_version)), log=writer.append,
        candidate=candidate)
    sock = _listen(int(state.port))
    server = uvicorn.Server(uvicorn.Config(
        app, loop="uvloop", http="httptools", log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=30, backlog=2048,
    ))
    try:
        with signals_end_the_server():
            server.run(sockets=[sock])
    finally:
        writer.close()
        collector.close()
    logger.info("router worker %d for %s stopped", index, state.name)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m mlflow_kpigate.backends.local.worker",
                                     description="One worker of a kpigate router.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    tie_to_parent(args.parent)
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{args.index} %(name)s: "
                               "%(message)s")
    try:
        run_worker(args.directory, args.index)
    except KpigateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
