"""``kpigate operator``: reconcile ModelRollouts in-cluster, one leader at a time.

Why the ``kubernetes`` client's watch and leader election rather than an operator
framework such as kopf: kpigate already reaches the cluster through that client (its
ConfigMap state store, Seldon objects, error translation); kopf brings its own asyncio and
aiohttp stack and its own API access, and its "peering" (not Lease-based leader election)
needs cluster-wide CRDs of its own. The reconcile here is small — a work queue of rollout
keys fed by two watches, one idempotent :class:`~.operator_sync.RolloutSync` — and every
rollout's long-running work is a worker process (:mod:`.operator_workers`), so the
operator itself never blocks on MLflow or Prometheus.

Leader election uses a ``coordination.k8s.io/v1`` Lease through the client's
``LeaderElection``/``LeaseLock``: replicas that do not lead only renew their candidacy and
answer probes. A leader that fails to renew stops every worker and exits (code 1), so
the Deployment restarts it as a candidate: a deposed leader never acts beside the new one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.seldon.cluster import api_client_from
from mlflow_kpigate.backends.seldon.kinds import MODEL_ROLLOUT
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.deploy.operator_events import EventRecorder
from mlflow_kpigate.deploy.operator_metrics import OperatorMetrics
from mlflow_kpigate.deploy.operator_sync import RolloutSync
from mlflow_kpigate.deploy.operator_watch import (
    Key,
    Watcher,
    WatchTarget,
    WorkQueue,
    resync_forever,
    targets_for,
)
from mlflow_kpigate.deploy.operator_workers import WorkerPool

log = logging.getLogger("kpigate.operator")
LOST_LEADERSHIP = 1


@dataclass(frozen=True)
class OperatorOptions:
    """``kpigate operator``'s settings (validated by :meth:`check`)."""

    namespaces: tuple[str, ...] | None  # None: every namespace
    lease_namespace: str
    lease_name: str = "kpigate-operator"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    metrics_bind: tuple[str, int] | None = ("0.0.0.0", 9102)
    health_bind: tuple[str, int] | None = ("0.0.0.0", 8081)
    kubeconfig: str | None = None
    context: str | None = None
    state_dir: Path | None = None
    identity: str = ""
    resync_s: float = 30.0

    def check(self) -> None:
        """``UsageError`` naming the option when the lease timings cannot work."""
        for option, value in (("--lease-duration", self.lease_duration_s),
                              ("--renew-deadline", self.renew_deadline_s),
                              ("--retry-period", self.retry_period_s)):
            if value != round(value):
                raise UsageError(f"{option}: whole seconds (a Lease stores seconds), e.g. 15s")
        if self.retry_period_s < 1:
            raise UsageError("--retry-period: at least 1s (the Lease is renewed that often)")
        if self.renew_deadline_s <= 1.2 * self.retry_period_s:
            raise UsageError("--renew-deadline: must exceed 1.2 x --retry-period, so a renewal "
                             "can be retried before it is given up")
        if self.lease_duration_s <= self.renew_deadline_s:
            raise UsageError("--lease-duration: must exceed --renew-deadline (a leader gives "
                             "up before anyone else may take over)")
        if self.resync_s <= 0:
            raise UsageError("--resync: must be a positive duration, e.g. 30s")


def default_identity() -> str:
    """``$POD_NAME``, else ``hostname-pid``."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class Operator:
    """One operator replica: candidate for the Lease; reconciles while it leads."""

    def __init__(self, options: OperatorOptions) -> None:
        options.check()
        self.options = options
        self.identity = options.identity or default_identity()
        self.api_client = api_client_from(options.kubeconfig, options.context)
        self.metrics = OperatorMetrics(self.identity)
        self.stop = threading.Event()
        self.leading = threading.Event()
        self.listed: set[WatchTarget] = set()
        self.targets = targets_for(options.namespaces)
        kube_args = [a for flag, value in (("--kubeconfig", options.kubeconfig),
                                           ("--context", options.context),
                                           ("--state-dir", options.state_dir))
                     if value for a in (flag, str(value))]
        self.pool = WorkerPool(kube_args, options.state_dir,
                               on_restart=lambda k: self.metrics.restarts.labels(*k).inc())
        self.sync = RolloutSync(self.api_client, self.pool,
                                EventRecorder(self.api_client, self.identity),
                                options.state_dir, observe=self.metrics.observe)
        self.queue = WorkQueue()
        self.exit_code = 0

    # -- readiness -----------------------------------------------------------------------------
    def ready(self) -> bool:
        """A candidate is ready; a leader once every watch has listed."""
        return not self.leading.is_set() or len(self.listed) == len(self.targets)

    # -- while leading -------------------------------------------------------------------------
    def _list_keys(self) -> list[Key]:
        from kubernetes import client

        api = client.CustomObjectsApi(self.api_client)
        k = MODEL_ROLLOUT
        items: list[dict[str, Any]] = []
        if self.options.namespaces is None:
            listed: Any = api.list_cluster_custom_object(k.group, k.version, k.plural,
                                                         _request_timeout=(10, 60))
            items = listed["items"]
        else:
            for ns in self.options.namespaces:
                listed = api.list_namespaced_custom_object(k.group, k.version, ns, k.plural,
                                                           _request_timeout=(10, 60))
                items += listed["items"]
        keys = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items]
        # Workers of ModelRollouts deleted while no watch saw it are stopped too.
        return keys + [key for key in self.pool.tracked() if key not in keys]

    def _reconcile_forever(self) -> None:
        while not self.stop.is_set():
            key = self.queue.take(timeout=0.5)
            if key is None:
                continue
            try:
                self.sync.sync(*key)
            except Exception as exc:
                self.metrics.errors.labels(key[0]).inc()
                log.warning("reconcile of %s/%s failed: %s", *key, str(exc)[:300])

    def lead(self) -> None:
        """Called once this replica holds the Lease: watch, reconcile, resync."""
        log.info("%s leads; watching %s", self.identity,
                 ", ".join(self.options.namespaces) if self.options.namespaces
                 else "every namespace")
        self.leading.set()
        self.metrics.leader.labels(self.identity).set(1)
        for target in self.targets:
            Watcher(self.api_client, target, self.queue, self.stop,
                    on_restart=lambda r: self.metrics.watch_restarts.labels(r).inc(),
                    on_listed=self.listed.add).thread.start()
        threading.Thread(target=resync_forever, daemon=True, name="resync",
                         args=(self._list_keys, self.queue, self.options.resync_s,
                               self.stop)).start()
        self._reconcile_forever()

    def lost(self) -> None:
        """Called when the Lease could not be renewed: stop acting at once."""
        if self.stop.is_set():
            return
        log.error("%s lost the lease; stopping every worker and exiting", self.identity)
        self.metrics.leader.labels(self.identity).set(0)
        self.exit_code = LOST_LEADERSHIP
        self.shutdown()

    def shutdown(self) -> None:
        """Stop reconciling and every worker (SIGTERM, then SIGKILL)."""
        self.stop.set()
        self.leading.clear()
        self.pool.stop_all()

    # -- the process ---------------------------------------------------------------------------
    def _elect(self) -> None:
        from kubernetes import client
        from kubernetes.leaderelection import electionconfig, leaderelection
        from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

        o = self.options
        lock = LeaseLock(o.lease_name, o.lease_namespace, self.identity)
        # The lock builds its API from the client's global default; use ours instead.
        lock.api_instance = client.CoordinationV1Api(self.api_client)
        # The client writes these into the Lease's integer fields: whole seconds.
        config = electionconfig.Config(lock, round(o.lease_duration_s),
                                       round(o.renew_deadline_s), round(o.retry_period_s),
                                       self.lead, self.lost)
        try:
            leaderelection.LeaderElection(config).run()
        except Exception as exc:
            # Without an election nothing may act: exit, and let the Deployment restart us.
            log.error("leader election failed: %s", str(exc)[:300])
            self.exit_code = LOST_LEADERSHIP
            self.shutdown()

    def run(self) -> int:
        """Serve probes and metrics, stand for leader, reconcile while leading; returns
        the exit code (0 after SIGTERM, 1 after losing the Lease)."""
        stoppers: list[Callable[[], None]] = []
        if self.options.metrics_bind is not None:
            stoppers.append(self.metrics.serve(*self.options.metrics_bind))
        if self.options.health_bind is not None:
            stoppers.append(_serve_health(self.options.health_bind, self.ready))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.shutdown())
        threading.Thread(target=self._elect, daemon=True, name="leader-election").start()
        try:
            self.stop.wait()
        finally:
            self.shutdown()
            for stop in stoppers:
                stop()
        return self.exit_code


def _serve_health(bind: tuple[str, int], ready: Callable[[], bool]) -> Callable[[], None]:
    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            ok = path == "/healthz" or (path == "/readyz" and ready())
            code = 200 if ok else (503 if path == "/readyz" else 404)
            body = b"ok\n" if ok else b"not ready\n" if code == 503 else b"not found\n"
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would drown the log

    server = ThreadingHTTPServer(bind, Probe)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="health")
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
