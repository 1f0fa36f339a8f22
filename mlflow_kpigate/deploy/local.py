"""The embedded backend's Deployer: rollouts served by a router process on this machine.

A deployment is a name under the state directory (``-C state_dir``, ``$KPIGATE_STATE_DIR``
or ``~/.kpigate``) linked to its rollout's directory, which holds its SQLite state store,
audit log, frozen policy, registry baseline and prediction log, plus a supervisor process
that keeps its router and controller running (:mod:`.local_layout`,
:mod:`.local_processes`, :mod:`.local_supervisor`, :mod:`.local_controller`).

Create, update and delete of one name hold its lock (:func:`.local_layout.name_lock`).
A new rollout (``create`` over a finished one, ``update -m``) is checked completely and
prepared in a directory of its own before anything of the current one is touched
(:mod:`.local_rollout`); its router starts beside the current one on the same port
(``SO_REUSEPORT``), and only once it answers ``/health`` (as this rollout: the
``X-Kpigate-Rollout`` header) does the name move to it and the old rollout stop, so
callers see no outage; a failure at any point before leaves the current rollout as it
was. An old rollout that did not end is recorded as ``aborted`` with the reason
``superseded by models:/M/V``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.backends.local.traffic import LocalRouterTraffic
from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.errors import KpigateError, UsageError, WaitStopped
from mlflow_kpigate.core.events import Aborted, Recorded, traffic_percent
from mlflow_kpigate.core.refs import ModelRef
from mlflow_kpigate.core.state import Phase, RolloutState
from mlflow_kpigate.deploy import local_follow
from mlflow_kpigate.deploy import local_processes as procs
from mlflow_kpigate.deploy.config import (
    DeploymentConfig,
    deployment_dir,
    parse_config,
    state_dir,
    writable_state_dir,
)
from mlflow_kpigate.deploy.deployer import Observe, Progress, Rollout
from mlflow_kpigate.deploy.finish import finish_rollout
from mlflow_kpigate.deploy.follow import Poll, last_decision
from mlflow_kpigate.deploy.inputs import resolve_versions, tracking_uri
from mlflow_kpigate.deploy.local_info import FLAVOR, deployment_info, frozen_policy
from mlflow_kpigate.deploy.local_layout import (
    archive_dir,
    is_legacy,
    live_dir,
    name_lock,
    new_rollout_dir,
    point,
    unlink_if_points_to,
)
from mlflow_kpigate.deploy.local_revive import revive
from mlflow_kpigate.deploy.local_rollout import (
    carried_config,
    choose_port,
    frozen_policy_path,
    prepare,
)
from mlflow_kpigate.deploy.operator import commit_operator_action
from mlflow_kpigate.policy import Policy, load_policy
from mlflow_kpigate.rollout import transitions
from mlflow_kpigate.rollout.effects import Effects
from mlflow_kpigate.rollout.ports import Registry

#: Audit event kinds shown while waiting for a rollout.
PROGRESS_KINDS = ("created", "promote", "hold", "rollback", "aborted", "operator_promote",
                  "operator_rollback", "operator_pause", "operator_resume", "forecast_warning")


def mlflow_registry(uri: str) -> Registry:
    """The MLflow registry at ``uri`` (imported late: MLflow is slow to import)."""
    from mlflow_kpigate.registry import Registry as MlflowRegistry

    return MlflowRegistry(uri)


def progress_line(rec: Recorded) -> str:
    """One progress line for an audit record (``kpigate: [promote] 25% reason``)."""
    body = rec.event.body()
    what = body.get("reason") or body.get("weights") or ""
    return f"kpigate: [{rec.kind}] {body.get('stage', '')} {what}".rstrip()


def _root(config: Mapping[str, Any] | None) -> Path | None:
    return parse_config({k: v for k, v in (config or {}).items() if k == "state_dir"}).state_dir


class LocalDeployer:
    """Rollouts on the embedded router (``kpigate``, ``kpigate:/local``)."""

    def __init__(self, target_uri: str = "kpigate") -> None:
        self.target_uri = target_uri

    # -- create ----------------------------------------------------------------------------
    def create(self, name: str, model_uri: str, config: Mapping[str, Any] | None = None,
               progress: Progress | None = None, *, observe: Observe | None = None
               ) -> dict[str, Any]:
        """Start a staged rollout of ``model_uri`` against its baseline; see ``config.KEYS``.

        A *finished* rollout of ``name`` keeps serving until the new one answers, and its
        port is kept unless ``-C port`` is given (see :meth:`_roll_out`).
        """
        name = procs.valid_name(name)
        cfg = parse_config(config)
        writable_state_dir(cfg.state_dir)
        with name_lock(state_dir(cfg.state_dir), name):
            old = _live(deployment_dir(name, cfg.state_dir))
            if old is not None and not old[1].phase.terminal:
                raise UsageError(f"deployment {name!r} already exists ({old[1].phase.value});"
                                 " use `mlflow deployments update` or delete it first")
            self._roll_out(name, model_uri, cfg, old, progress)
        return self._created(name, cfg, progress, observe)

    def replace(self, name: str, model_uri: str, config: Mapping[str, Any] | None = None,
                progress: Progress | None = None, *, observe: Observe | None = None
                ) -> dict[str, Any]:
        """A new rollout of ``model_uri`` under ``name`` (``update -m``): the current
        rollout's policy, baseline, port and router options unless ``config`` gives them;
        the current one serves until the new one answers, then ends as superseded."""
        name = procs.valid_name(name)
        raw = dict(config or {})
        cfg = parse_config(raw)
        with name_lock(state_dir(cfg.state_dir), name):
            old = _live(deployment_dir(name, cfg.state_dir))
            if old is None:
                raise UsageError(f"no deployment named {name!r} in {state_dir(cfg.state_dir)}")
            cfg = carried_config(cfg, raw, *old)
            self._roll_out(name, model_uri, cfg, old, progress)
        return self._created(name, cfg, progress, observe)

    def _roll_out(self, name: str, model_uri: str, cfg: DeploymentConfig,
                  old: tuple[Path, RolloutState] | None, progress: Progress | None) -> None:
        """Check everything, prepare the new rollout in a directory of its own, start it
        beside the one serving, and only once it answers switch the name to it and end
        the old one (called with the name's lock held)."""
        base = state_dir(cfg.state_dir)
        link = base / name
        uri = tracking_uri()
        registry = mlflow_registry(uri)
        refs = resolve_versions(registry, model_uri, cfg.baseline)
        old_dir = old[0] if old else None
        # Its router holds the port (the supervisor may be gone, the router not).
        serving = old_dir is not None and any(procs.alive(p) for p in
                                              procs.pids(old_dir).values())
        port = choose_port(cfg, name, old[1] if old else None, serving)
        directory = new_rollout_dir(base, name)
        try:
            state, policy = prepare(directory, name, cfg, registry, uri, refs, port, progress)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)  # this command's own directory only
            raise
        if old_dir is None:
            point(link, directory)
        proc = procs.spawn_supervisor(directory)
        try:
            procs.wait_healthy(directory, port, proc, rollout=state.rollout_run_id)
        except KpigateError:
            self._abort_start(directory, policy, old[1] if old else None)
            if old_dir is not None:  # the old rollout serves on, untouched
                archive_dir(directory, base, name)
            raise
        if old_dir is not None:
            if is_legacy(link):  # a directory of the old layout: it moves before the link
                self._retire(old_dir, link, refs[0])
                point(link, directory)
            else:
                point(link, directory)
                self._retire(old_dir, link, refs[0])
        if progress:
            progress(f"kpigate: {name} serving on http://127.0.0.1:{port} "
                     f"({policy.stages[0].describe()}); state in {directory}")

    def _abort_start(self, directory: Path, policy: Policy, old: RolloutState | None
                     ) -> None:
        """Record a rollout whose router did not start as aborted; stop what it started."""
        procs.stop_processes(directory)
        store = RolloutStore(directory)
        st = transitions.rollback(store.require(), "aborted: the router did not start",
                                  Phase.ABORTED)
        saved = store.save(st.evolve(effects_pending=True), Aborted(
            policy.stages[st.stage_index].describe(), st.weights.describe(), 0.0, "router"))
        tags = old is None or _version(old) != _version(saved)
        self._effects(directory, store, policy, saved, tags=tags).apply(saved, None, "aborted")

    def _retire(self, directory: Path, link: Path, by: ModelRef | None) -> None:
        """Stop the rollout in ``directory``, record it as ended (aborted: superseded
        ``by`` a new rollout, or deleted) if it was not, and archive its directory."""
        procs.stop_processes(directory)
        store = RolloutStore(directory)
        state = store.require()  # the controller may have saved until it was stopped
        if not state.phase.terminal:
            policy = load_policy(frozen_policy_path(directory, state))
            reason, why = ((f"superseded by {by.uri}", "superseded") if by is not None
                           else ("deployment deleted", "deleted"))
            ended = transitions.rollback(state, reason, Phase.ABORTED)
            saved = store.save(ended.evolve(effects_pending=True), Aborted(
                policy.stages[ended.stage_index].describe(), ended.weights.describe(),
                traffic_percent(ended.weights), why))
            # The same version rolled out again: its tags are the new rollout's now.
            tags = by is None or (by.name, by.version) != _version(saved)
            self._effects(directory, store, policy, saved, tags=tags).apply(
                saved, None, "aborted")
        unlink_if_points_to(link, directory)
        archive_dir(directory, link.parent, link.name)

    def _created(self, name: str, cfg: DeploymentConfig, progress: Progress | None,
                 observe: Observe | None = None) -> dict[str, Any]:
        if cfg.wait:
            ended = self._wait(name, cfg.state_dir, cfg.wait_timeout, progress, observe)
            # archived, if deleted meanwhile
            return deployment_info(ended.state,
                                   ended.directory or deployment_dir(name, cfg.state_dir))
        return self.describe(name, {"state_dir": cfg.state_dir} if cfg.state_dir else None)

    def wait(self, name: str, root: Path | None = None, timeout_s: float | None = None,
             progress: Progress | None = None) -> RolloutState:
        """Block until the rollout reaches a terminal phase (``WaitStopped`` on timeout).

        A ``delete`` from elsewhere ends the wait with the rollout ``aborted``.
        """
        return self._wait(name, root, timeout_s, progress).state

    def _wait(self, name: str, root: Path | None, timeout_s: float | None,
              progress: Progress | None, observe: Observe | None = None) -> Poll:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for poll in local_follow.follow(deployment_dir(name, root)):
            for rec in poll.records:
                if progress and rec.kind in PROGRESS_KINDS:
                    progress(progress_line(rec))
            if observe is not None:
                observe(poll.state)
            if poll.ended:
                return poll
            if deadline is not None and time.monotonic() > deadline:
                raise WaitStopped(f"deployment {name!r} still {poll.state.status} after "
                                  f"{timeout_s:.0f}s; it keeps running (kpigate status {name})")
        raise AssertionError("follow() never ends")  # pragma: no cover

    def follow(self, name: str, config: Mapping[str, Any] | None = None,
               interval_s: float = 1.0) -> Iterator[Poll]:
        """Poll rollout ``name``'s new audit records and state (see :mod:`.local_follow`)."""
        return local_follow.follow(deployment_dir(name, _root(config)), interval_s)

    # -- inspect ---------------------------------------------------------------------------
    def describe(self, name: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The deployment as ``get_deployment`` returns it."""
        root = _root(config)
        directory = deployment_dir(name, root)
        state = RolloutStore(directory).load() if directory.exists() else None
        if state is None:
            raise UsageError(f"no deployment named {name!r} in {state_dir(root)}")
        revive(directory)  # a dead supervisor is restarted by the command that notices
        return deployment_info(state, directory)

    def list_all(self, config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every deployment under the state directory."""
        base = state_dir(_root(config))
        if not base.is_dir():
            return []
        out = []
        for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (d / "state.db").exists():
                continue
            try:
                if RolloutStore(d).load() is not None:
                    out.append(self.describe(d.name, config))
            except KpigateError as exc:
                # One damaged deployment must not hide the others.
                out.append({"name": d.name, "flavor": FLAVOR, "status": "unreadable",
                            "error": str(exc), "state_dir": str(d)})
        return out

    def open(self, name: str, config: Mapping[str, Any] | None = None) -> Rollout:
        """The deployment's store, frozen policy and directory."""
        directory = _existing(name, config)
        store = RolloutStore(directory)
        revive(directory)
        return Rollout(name, store, frozen_policy(directory, store.require()), directory)

    def last_decision(self, name: str, config: Mapping[str, Any] | None = None
                      ) -> Decision | None:
        """The most recent gate decision of ``name``."""
        return last_decision(RolloutStore(deployment_dir(name, _root(config))))

    # -- change ----------------------------------------------------------------------------
    def steer(self, name: str, action: str, config: Mapping[str, Any] | None = None,
              who: str = "operator") -> dict[str, Any]:
        """promote / rollback / pause / resume the running rollout of ``name``."""
        directory = _existing(name, config)  # (a store would create the directory)
        store = RolloutStore(directory)
        policy = load_policy(store.require().policy_file)
        saved = commit_operator_action(store, policy, name, action, who)
        self._effects(directory, store, policy, saved).apply(saved, None, f"operator_{action}")
        return self.describe(name, config)

    def delete(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        """Stop everything the deployment started, close its rollout, archive its directory."""
        root = _root(config)
        link = deployment_dir(name, root)
        with name_lock(state_dir(root), procs.valid_name(name)):
            live = _live(link)
            if live is None:
                raise UsageError(f"no deployment named {name!r} in {state_dir(root)}")
            self._retire(live[0], link, None)

    @staticmethod
    def _effects(directory: Path, store: RolloutStore, policy: Policy, state: RolloutState,
                 *, tags: bool = True) -> Effects:
        """The effects of ``state``; without ``tags`` its model version's tags stay."""
        registry = mlflow_registry(state.tracking_uri)
        return Effects(store, policy, LocalRouterTraffic(),
                       registry=registry if tags else None,
                       on_terminal=lambda s: finish_rollout(directory, s, registry,
                                                            store=store, policy=policy))

    # -- serve -----------------------------------------------------------------------------
    def predict(self, name: str, inputs: Any, config: Mapping[str, Any] | None = None
                ) -> Any:
        """Score ``inputs`` (a DataFrame or an MLflow JSON payload) through the router."""
        from mlflow.deployments import PredictionsResponse

        info = self.describe(name, config)
        if hasattr(inputs, "to_dict"):
            body = {"dataframe_split": inputs.to_dict(orient="split")}
            body["dataframe_split"].pop("index", None)
        elif isinstance(inputs, dict):
            body = inputs
        else:
            raise UsageError("predict: give a pandas DataFrame or an MLflow JSON payload dict")
        try:
            resp = requests.post(f"{info['endpoint']}/invocations",
                                 data=json.dumps(body, default=str).encode(),
                                 headers={"Content-Type": "application/json"}, timeout=60)
        except requests.RequestException as exc:
            raise KpigateError(f"{name}: the router at {info['endpoint']} is not reachable "
                               f"({exc}); is the deployment running? (kpigate status {name})"
                               ) from None
        if resp.status_code >= 400:
            raise UsageError(f"{name}: the router rejected the input (HTTP "
                             f"{resp.status_code}): {resp.text[:300]}")
        return PredictionsResponse.from_json(resp.text)


def _existing(name: str, config: Mapping[str, Any] | None) -> Path:
    """The directory of the existing deployment ``name`` (``UsageError`` if there is none)."""
    root = _root(config)
    directory = deployment_dir(name, root)
    if not (directory / "state.db").is_file():
        raise UsageError(f"no deployment named {name!r} in {state_dir(root)}; give the "
                         "name used with `mlflow deployments create` and the same "
                         "--state-dir / KPIGATE_STATE_DIR")
    return directory


def _version(state: RolloutState) -> tuple[str, str]:
    return state.model_name, state.candidate_version


def _live(link: Path) -> tuple[Path, RolloutState] | None:
    """The live rollout named by ``link``: its real directory and its state."""
    directory = live_dir(link)
    if directory is None or not (directory / "state.db").is_file():
        return None
    state = RolloutStore(directory).load()
    return None if state is None else (directory, state)
