"""A new embedded rollout, before it serves: its settings, its port, its directory.

Everything here either checks or writes the new rollout's own directory; nothing touches
the rollout it may replace (:meth:`.local.LocalDeployer.create` hands over only once the
new router answers).

* :func:`carried_config`: ``update -m`` keeps the current rollout's frozen policy, baseline,
  port and router options (``routing_key``, ``threshold``, ``promote_alias``, ``workers``,
  ``candidate_timeout``, ``log_fsync``, ``max_body``, ``warm_candidate``) and where the
  controller serves its metrics (``metrics_port``, ``metrics_host``) unless its own
  ``-C`` gives them;
* :func:`choose_port`: ``-C port``, else the port of the rollout being replaced (stable
  across rollouts of one name), else a free one; a port the replaced rollout's router holds
  counts as free for its successor (the routers listen with ``SO_REUSEPORT``);
* :func:`prepare`: the frozen policy, registry baseline, rollout run and initial state in
  the new rollout's directory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.events import Created, traffic_percent
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.deploy import local_processes as procs
from mlflow_kpigate.deploy.config import DeploymentConfig
from mlflow_kpigate.deploy.deployer import Progress
from mlflow_kpigate.deploy.inputs import (
    POLICY_FILE,
    forecast_lines,
    freeze_policy,
    output_warnings,
    save_registry_baseline,
)
from mlflow_kpigate.notify import notifier_from_policy
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.ports import Registry


def frozen_policy_path(directory: Path, state: RolloutState) -> Path:
    """The frozen policy file of the rollout in ``directory``."""
    local = directory / POLICY_FILE
    return local if local.is_file() else Path(state.policy_file)


def carried_config(cfg: DeploymentConfig, raw: Mapping[str, Any], directory: Path,
                   state: RolloutState) -> DeploymentConfig:
    """``cfg`` (the update's own ``-C``) completed with the current rollout's settings.

    The baseline is kept unless the current rollout was promoted (its candidate now serves
    and carries the promote alias: the registry default baseline is then that version).
    ``-C stages`` alone applies to the kept policy.
    """
    kept: dict[str, Any] = {
        "policy": frozen_policy_path(directory, state), "port": state.port,
        "routing_key": state.routing_key, "promote_alias": state.promote_alias,
        "threshold": state.threshold, "workers": state.workers,
        "candidate_timeout": state.candidate_timeout_s, "log_fsync": state.log_fsync,
        "max_body": state.max_body_bytes, "warm_candidate": state.warm_candidate,
        "metrics_port": state.metrics_port, "metrics_host": state.metrics_host,
    }
    if state.phase is not Phase.PROMOTED:
        kept["baseline"] = state.baseline_uri
    return replace(cfg, **{k: v for k, v in kept.items() if k not in raw})


def choose_port(cfg: DeploymentConfig, name: str, old: RolloutState | None,
                old_serving: bool) -> int:
    """The new rollout's port (see the module docstring); ``UsageError`` if it is taken."""
    if cfg.port:
        port, what = cfg.port, f"-C port={cfg.port}: the port"
    elif old is not None:
        port = old.port
        what = f"port {port} (the port of the current rollout of {name!r})"
    else:
        return procs.free_port()
    if old is not None and old_serving and port == old.port:
        return port  # held by the rollout this one replaces: the new router shares it
    if not procs.port_free(port):
        raise UsageError(f"{what} is in use on 127.0.0.1 by another program; give a free "
                         "-C port=N")
    return port


def prepare(directory: Path, name: str, cfg: DeploymentConfig, registry: Registry,
            tracking_uri: str, refs: tuple[ModelRef, ModelRef], port: int,
            progress: Progress | None) -> tuple[RolloutState, Policy]:
    """Write the new rollout into its own ``directory``: policy, baseline, run, state."""
    candidate, baseline = refs
    policy, policy_file = freeze_policy(cfg, directory)
    notifier_from_policy(policy)  # its secrets and URLs, before anything starts
    lines = output_warnings(registry, policy, {"candidate": candidate, "baseline": baseline})
    baseline_kpis = registry.baseline_kpis(baseline, policy)
    save_registry_baseline(directory, baseline_kpis)
    lines += forecast_lines(policy, baseline_kpis, cfg)
    for line in lines:
        if progress:
            progress(line)
    run_id = registry.start_rollout_run(
        deployment=name, candidate=candidate, baseline=baseline, policy_file=policy_file,
        params={"stages": " -> ".join(s.describe() for s in policy.stages),
                "port": str(port), "routing_key": str(cfg.routing_key)})
    state = RolloutState(
        name=name, model_name=candidate.name, candidate_version=candidate.version,
        baseline_version=baseline.version, candidate_uri=candidate.uri,
        baseline_uri=baseline.uri, policy_file=str(policy_file), tracking_uri=tracking_uri,
        port=port, routing_key=cfg.routing_key, promote_alias=cfg.promote_alias,
        rollout_run_id=run_id, threshold=cfg.threshold, workers=cfg.workers,
        candidate_timeout_s=cfg.candidate_timeout, log_fsync=cfg.log_fsync,
        max_body_bytes=cfg.max_body, warm_candidate=cfg.warm_candidate,
        metrics_port=cfg.metrics_port, metrics_host=cfg.metrics_host)
    state = transitions.initial(state, policy, time.time()).evolve(effects_pending=True)
    state = RolloutStore(directory).save(state, Created(
        policy.stages[0].describe(), state.weights.describe(),
        traffic_percent(state.weights), candidate.uri, baseline.uri, port=port))
    return state, policy
