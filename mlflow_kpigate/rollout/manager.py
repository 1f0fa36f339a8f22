"""Deployments on the embedded backend: create, steer, inspect and delete rollouts.

The MLflow plugin and the ``kpigate`` CLI are thin adapters over these functions. A
deployment is a directory under the state directory (its SQLite state store) plus
a supervisor process that keeps its router and controller running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mlflow_kpigate.backends.local.state_store import (
    RolloutStore,
    StateConflict,
    deployment_dir,
    state_dir,
)
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.deploy.config import DeploymentConfig, parse_config
from mlflow_kpigate.gate import Decision
from mlflow_kpigate.policy import Policy, load_policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.controller import save_registry_baseline
from mlflow_kpigate.rollout.effects import Effects

HEALTH_TIMEOUT_S = float(os.environ.get("KPIGATE_START_TIMEOUT", "180"))
FLAVOR = "python_function"


def _valid_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise UsageError(f"--name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def default_policy_path() -> Path:
    """The packaged label-free default policy."""
    return Path(str(resources.files("mlflow_kpigate") / "policies" / "default.yaml"))


def _effective_policy(cfg: DeploymentConfig, directory: Path) -> tuple[Policy, Path]:
    """Load the user's policy (with ``-C stages`` applied) and freeze a copy in ``directory``."""
    source = cfg.policy or default_policy_path()

    def override(doc: dict[str, Any]) -> None:
        if cfg.stages:
            doc["stages"] = cfg.stages

    policy = load_policy(source, override=override)
    target = directory / "policy.yaml"
    target.write_text(f"# frozen copy of {source} for this rollout\n"
                      + yaml.safe_dump(dict(policy.raw), sort_keys=False))
    return load_policy(target), target


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _registry(tracking_uri: str) -> Any:
    from mlflow_kpigate.registry import Registry

    return Registry(tracking_uri)


def _http_json(url: str, timeout: float = 2.0, data: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def _pids(directory: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads((directory / "pids.json").read_text()).items()}
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn(directory: Path) -> subprocess.Popen[bytes]:
    log = (directory / "supervisor.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_kpigate.rollout.supervisor",
                             str(directory)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    log.close()
    return proc


def _wait_healthy(directory: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            _http_json(f"http://127.0.0.1:{port}/health")
            return
        except (OSError, ValueError):
            time.sleep(0.3)
    tail = ""
    log = directory / "router.log"
    if log.exists():
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        tail = f": {lines[-1][:300]}" if lines else ""
    raise KpigateError(f"the router did not become healthy on 127.0.0.1:{port} within "
                       f"{HEALTH_TIMEOUT_S:.0f}s (see {log}){tail}")


def stop_processes(directory: Path) -> None:
    """Stop the supervisor (and so the router and controller) of a deployment."""
    pids = _pids(directory)
    sup = pids.get("supervisor")
    if sup and _alive(sup):
        os.kill(sup, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(sup) and time.monotonic() < deadline:
            time.sleep(0.1)
    for pid in pids.values():  # anything the supervisor could not stop
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    (directory / "pids.json").unlink(missing_ok=True)


def _archive(directory: Path) -> Path:
    history = directory.parent / ".history"
    history.mkdir(exist_ok=True)
    target = history / f"{directory.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    shutil.move(str(directory), target)
    return target


def resolve_versions(registry: Any, model_uri: str, baseline_uri: str | None
                     ) -> tuple[Any, Any]:
    """(candidate, baseline) registry refs; the baseline defaults to the champion alias."""
    candidate = registry.resolve(model_uri)
    baseline = (registry.resolve(baseline_uri) if baseline_uri
                else registry.default_baseline(candidate.name))
    if (baseline.name, baseline.version) == (candidate.name, candidate.version):
        raise UsageError(f"{model_uri}: the candidate is the baseline itself "
                         f"({baseline.uri}); give a different -C baseline")
    return candidate, baseline


def create(name: str, model_uri: str, config: Mapping[str, Any] | None = None,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start a staged rollout of ``model_uri`` against its baseline; see ``config.KEYS``."""
    name = _valid_name(name)
    cfg = parse_config(config)
    directory = deployment_dir(name, cfg.state_dir)
    if directory.exists():
        existing = RolloutStore(directory).load()
        if existing is not None and not existing.phase.terminal:
            raise UsageError(f"deployment {name!r} already exists ({existing.phase.value}); "
                             "use `mlflow deployments update` or delete it first")
        stop_processes(directory)
        _archive(directory)
    tracking_uri = _tracking_uri()
    registry = _registry(tracking_uri)
    candidate, baseline = resolve_versions(registry, model_uri, cfg.baseline)
    port = cfg.port or _free_port()
    if cfg.port and not _port_free(cfg.port):
        raise UsageError(f"-C port={cfg.port}: the port is in use on 127.0.0.1; pick another "
                         "or omit it for a free one")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        policy, policy_file = _effective_policy(cfg, directory)
        save_registry_baseline(directory, registry.baseline_kpis(baseline, policy))
        run_id = registry.start_rollout_run(
            deployment=name, candidate=candidate, baseline=baseline, policy_file=policy_file,
            params={"stages": " -> ".join(s.describe() for s in policy.stages),
                    "port": str(port), "routing_key": cfg.routing_key})
        now = time.time()
        state = RolloutState(
            name=name, model_name=candidate.name, candidate_version=candidate.version,
            baseline_version=baseline.version, candidate_uri=candidate.uri,
            baseline_uri=baseline.uri, policy_file=str(policy_file),
            tracking_uri=tracking_uri, port=port, routing_key=cfg.routing_key,
            promote_alias=cfg.promote_alias, rollout_run_id=run_id, threshold=cfg.threshold)
        state = transitions.initial(state, policy, now).evolve(effects_pending=True)
        RolloutStore(directory).save(state, "created", {
            "candidate": candidate.uri, "baseline": baseline.uri, "port": port,
            "weights": state.weights.describe(), "weights_percent": 0.0,
            "stage": policy.stages[0].describe()})
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    proc = _spawn(directory)
    try:
        _wait_healthy(directory, port, proc)
    except KpigateError:
        stop_processes(directory)
        store = RolloutStore(directory)
        st = store.require()
        store.save(transitions.rollback(st, "aborted: the router did not start",
                                        Phase.ABORTED), "aborted", {"reason": "router"})
        raise
    if progress:
        progress(f"kpigate: {name} serving on http://127.0.0.1:{port} "
                 f"({policy.stages[0].describe()}); state in {directory}")
    if cfg.wait:
        wait(name, cfg.state_dir, cfg.wait_timeout, progress)
    return describe(name, cfg.state_dir)


def wait(name: str, root: Path | None = None, timeout_s: float | None = None,
         progress: Callable[[str], None] | None = None) -> RolloutState:
    """Block until the rollout reaches a terminal phase (``KpigateError`` on timeout)."""
    store = RolloutStore(deployment_dir(name, root))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen = 0
    while True:
        for ev in store.events(seen):
            seen = ev["seq"]
            if progress and ev["kind"] in ("created", "promote", "hold", "rollback", "aborted",
                                           "operator_promote", "operator_rollback",
                                           "operator_pause", "operator_resume"):
                progress(f"kpigate: [{ev['kind']}] {ev.get('stage', '')} "
                         f"{ev.get('reason', ev.get('weights', ''))}".rstrip())
        state = store.require()
        if state.phase.terminal and not state.effects_pending:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise KpigateError(f"deployment {name!r} still {state.phase.value} after "
                               f"{timeout_s:.0f}s; it keeps running (kpigate status {name})")
        time.sleep(0.5)


def describe(name: str, root: Path | None = None) -> dict[str, Any]:
    """The deployment as ``get_deployment`` returns it."""
    directory = deployment_dir(name, root)
    state = RolloutStore(directory).load() if directory.exists() else None
    if state is None:
        raise UsageError(f"no deployment named {name!r} in {state_dir(root)}")
    policy = load_policy(state.policy_file)
    info: dict[str, Any] = {
        "name": state.name,
        "flavor": FLAVOR,
        "status": state.phase.value,
        "paused": state.paused,
        "stage": policy.stages[state.stage_index].describe(),
        "stage_index": state.stage_index,
        "weights": state.weights.describe(),
        "candidate": state.candidate_uri,
        "baseline": state.baseline_uri,
        "endpoint": f"http://127.0.0.1:{state.port}",
        "reason": state.reason,
        "evaluations": state.evaluations,
        "rollout_run_id": state.rollout_run_id,
        "state_dir": str(directory),
        "running": bool(_pids(directory).get("supervisor")) and _alive(
            _pids(directory).get("supervisor", 0)),
    }
    return info


def list_all(root: Path | None = None) -> list[dict[str, Any]]:
    """Every deployment under the state directory."""
    base = state_dir(root)
    if not base.is_dir():
        return []
    out = []
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (d / "state.db").exists() and RolloutStore(d).load() is not None:
            out.append(describe(d.name, root))
    return out


def commit_operator_action(store: Any, policy: Policy, name: str, action: str,
                           who: str = "operator") -> RolloutState:
    """Save an operator's promote / rollback / pause / resume on the latest state.

    ``store`` is a RolloutStore or anything with its methods (the Seldon backend's
    ConfigMap store). A concurrent controller save is not lost: the action is re-applied
    to the newer state. The saved state has ``effects_pending`` set; the caller runs them.
    """
    for attempt in range(10):
        state = store.require()
        try:
            new = transitions.operator_action(state, policy, action, time.time(), who)
        except ValueError as exc:
            raise UsageError(f"{name}: {exc}") from None
        new = new.evolve(effects_pending=True)
        try:
            return store.save(new, f"operator_{action}", {
                "action": action, "by": who, "reason": new.reason,
                "weights": new.weights.describe(),
                "weights_percent": 0.0 if new.weights.shadow
                or not new.weights.candidate_attached else new.weights.candidate_percent,
                "stage": policy.stages[new.stage_index].describe()})
        except StateConflict:
            # The controller saved an evaluation meanwhile: apply the action to that.
            time.sleep(0.05 * (attempt + 1))
    raise KpigateError(f"{name}: the rollout kept changing; try `{action}` again")


def steer(name: str, action: str, root: Path | None = None, who: str = "operator"
          ) -> dict[str, Any]:
    """promote / rollback / pause / resume the running rollout of ``name``."""
    directory = deployment_dir(name, root)
    store = RolloutStore(directory)
    policy = load_policy(store.require().policy_file)
    saved = commit_operator_action(store, policy, name, action, who)
    from mlflow_kpigate.rollout.wiring import finish_rollout

    registry = _registry(saved.tracking_uri)
    Effects(store, policy, registry=registry,
            on_terminal=lambda s: finish_rollout(directory, s, registry) and None
            ).apply(saved, None, f"operator_{action}")
    return describe(name, root)


def delete(name: str, root: Path | None = None) -> None:
    """Stop everything the deployment started, close its rollout, archive its directory."""
    directory = deployment_dir(name, root)
    store = RolloutStore(directory) if directory.exists() else None
    state = store.load() if store else None
    if state is None:
        raise UsageError(f"no deployment named {name!r} in {state_dir(root)}")
    stop_processes(directory)
    state = store.require()  # the controller may have saved until it was stopped
    if not state.phase.terminal:
        saved = store.save(transitions.rollback(state, "deployment deleted", Phase.ABORTED)  # type: ignore[union-attr]
                           .evolve(effects_pending=True), "aborted", {"reason": "deleted"})
        from mlflow_kpigate.rollout.wiring import finish_rollout

        registry = _registry(state.tracking_uri)
        policy = load_policy(state.policy_file)
        Effects(store, policy, registry=registry,  # type: ignore[arg-type]
                on_terminal=lambda s: finish_rollout(directory, s, registry) and None
                ).apply(saved, None, "aborted")
    _archive(directory)


def predict(name: str, inputs: Any, root: Path | None = None) -> Any:
    """Score ``inputs`` (a DataFrame or an MLflow JSON payload) through the router."""
    from mlflow.deployments import PredictionsResponse

    info = describe(name, root)
    if hasattr(inputs, "to_dict"):
        body = {"dataframe_split": inputs.to_dict(orient="split")}
        body["dataframe_split"].pop("index", None)
    elif isinstance(inputs, dict):
        body = inputs
    else:
        raise UsageError("predict: give a pandas DataFrame or an MLflow JSON payload dict")
    req = urllib.request.Request(f"{info['endpoint']}/invocations",
                                 data=json.dumps(body, default=str).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return PredictionsResponse.from_json(resp.read().decode())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise UsageError(f"{name}: the router rejected the input (HTTP {exc.code}): "
                         f"{detail}") from None
    except OSError as exc:
        raise KpigateError(f"{name}: the router at {info['endpoint']} is not reachable "
                           f"({exc}); is the deployment running? (kpigate status {name})"
                           ) from None


def last_decision(name: str, root: Path | None = None) -> Decision | None:
    """The most recent gate decision of ``name``."""
    state = RolloutStore(deployment_dir(name, root)).require()
    return Decision.from_dict(state.last_decision) if state.last_decision else None
