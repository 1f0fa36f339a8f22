"""``kpigate operator``: run the in-cluster operator that reconciles ModelRollouts.

Thin: parses the options into :class:`~mlflow_kpigate.deploy.operator_main.OperatorOptions`
and runs :class:`~mlflow_kpigate.deploy.operator_main.Operator` (see there for what it does
and why it is built on the ``kubernetes`` client's watch and leader election).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from mlflow_kpigate.core import extras
from mlflow_kpigate.core.durations import parse_duration
from mlflow_kpigate.core.errors import UsageError


def _duration(option: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _bind(option: str, text: str) -> tuple[str, int] | None:
    if text.strip().lower() == "off":
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{option}={text}: give HOST:PORT (e.g. 0.0.0.0:9102) or off")
    return host or "0.0.0.0", int(port)


@click.command("operator")
@click.option("--namespace", "namespaces", multiple=True, metavar="NS",
              help="Watch ModelRollouts in NS (repeat for more).")
@click.option("--all-namespaces", is_flag=True, default=False,
              help="Watch ModelRollouts in every namespace (needs the cluster-wide RBAC).")
@click.option("--lease-namespace", default=None,
              help="Namespace of the leader-election Lease (default $POD_NAMESPACE, else the "
                   "first --namespace).")
@click.option("--lease-name", default="kpigate-operator", show_default=True,
              help="Name of the leader-election Lease.")
@click.option("--lease-duration", default="15s", show_default=True,
              help="How long a leader's Lease lasts without renewal.")
@click.option("--renew-deadline", default="10s", show_default=True,
              help="How long a leader keeps trying to renew before it gives up and exits.")
@click.option("--retry-period", default="2s", show_default=True,
              help="How often the Lease is renewed or tried.")
@click.option("--resync", default="30s", show_default=True,
              help="How often every ModelRollout is reconciled even without a change.")
@click.option("--metrics-bind", default="0.0.0.0:9102", show_default=True,
              help="HOST:PORT of the Prometheus exposition (/metrics), or off.")
@click.option("--health-bind", default="0.0.0.0:8081", show_default=True,
              help="HOST:PORT of the probes (/healthz, /readyz), or off.")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False),
              help="Kubeconfig file (default: the pod's service account in a cluster).")
@click.option("--context", default=None, help="Kubeconfig context.")
@click.option("--state-dir", default=None, type=click.Path(file_okay=False),
              help="Scratch directory for workers (default $KPIGATE_STATE_DIR or ~/.kpigate).")
@click.option("--identity", default=None,
              help="This replica's name in the Lease (default $POD_NAME, else host-pid).")
def operator_command(namespaces: tuple[str, ...], all_namespaces: bool,
                     lease_namespace: str | None, lease_name: str, lease_duration: str,
                     renew_deadline: str, retry_period: str, resync: str, metrics_bind: str,
                     health_bind: str, kubeconfig: str | None, context: str | None,
                     state_dir: str | None, identity: str | None) -> None:
    """Reconcile ModelRollouts: run each rollout's stages in-cluster, one leader at a time.

    Exit codes: 0 after SIGTERM, 1 after losing the leader Lease (restart it: it stands
    again as a candidate), 2 for bad options.
    """
    extras.require(extras.SELDON, "kpigate operator")
    from mlflow_kpigate.deploy.operator_main import Operator, OperatorOptions

    if bool(namespaces) == all_namespaces:
        raise UsageError("--namespace/--all-namespaces: give one or more --namespace NS, or "
                         "--all-namespaces")
    lease_ns = lease_namespace or os.environ.get("POD_NAMESPACE") or \
        (namespaces[0] if namespaces else None)
    if not lease_ns:
        raise UsageError("--lease-namespace: needed with --all-namespaces outside a pod "
                         "(where $POD_NAMESPACE says it)")
    options = OperatorOptions(
        namespaces=tuple(namespaces) or None, lease_namespace=lease_ns,
        lease_name=lease_name, lease_duration_s=_duration("--lease-duration", lease_duration),
        renew_deadline_s=_duration("--renew-deadline", renew_deadline),
        retry_period_s=_duration("--retry-period", retry_period),
        resync_s=_duration("--resync", resync),
        metrics_bind=_bind("--metrics-bind", metrics_bind),
        health_bind=_bind("--health-bind", health_bind),
        kubeconfig=kubeconfig, context=context,
        state_dir=Path(state_dir).expanduser() if state_dir else None,
        identity=identity or "")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The client's elector logs every renewal at INFO; its warnings and errors still show.
    logging.getLogger("leaderelection").setLevel(logging.WARNING)
    raise click.exceptions.Exit(Operator(options).run())
