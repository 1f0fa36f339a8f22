"""Operators' commands: status, watch, report, steer (any target), serve (this machine).

Thin: each parses its options, picks the rollout's deployer from its target
(:mod:`.targeting`: ``-t``, ``--namespace``, ``--kubeconfig``, ``--context``) and calls it.
A cluster rollout shows its namespace and backend where a local one shows its endpoint
and processes; everything else is read the same way for both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import click

from mlflow_kpigate.cli.tables import evidence_table
from mlflow_kpigate.cli.targeting import STATE_DIR, Where, rollout_target
from mlflow_kpigate.core import exit_codes
from mlflow_kpigate.core.bake import bake_view
from mlflow_kpigate.core.durations import parse_duration
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.forecast import forecast_view
from mlflow_kpigate.deploy.config import parse_config
from mlflow_kpigate.deploy.deployer import Deployer
from mlflow_kpigate.deploy.finish import write_report
from mlflow_kpigate.deploy.local import LocalDeployer
from mlflow_kpigate.policy import Policy

__all__ = ["ENDED", "STATE_DIR", "forecast_lines", "stage_of"]


def _config(state_dir: str | None) -> dict[str, str] | None:
    return {"state_dir": state_dir} if state_dir else None


#: Phases whose forecast is history, not a forecast.
ENDED = ("promoted", "rolled_back", "aborted", "baking")
#: What a cluster rollout's status shows on its own lines; other keys ``describe`` gives
#: (e.g. the operator mode's) are printed as ``key: value``.
_SHOWN = frozenset({"name", "flavor", "status", "phase", "paused", "stage", "stage_index",
                    "stages", "weights", "candidate", "baseline", "endpoint", "reason",
                    "evaluations", "rollout_run_id", "namespace", "backend", "last_decision"})


def forecast_lines(decision: Any, indent: str = "  ") -> list[str]:
    """The forecast a decision carries, as ``kpigate status`` and ``watch`` show it."""
    fc = forecast_view(decision) if decision is not None else None
    if fc is None:
        return []
    lines = [f"{indent}forecast: {fc.line()}"]
    if len(fc.stages) > 1:
        lines.append(f"{indent}  stages: {fc.path()}")
    lines.append(f"{indent}  at {fc.basis_line()}")
    lines += [f"{indent}  not counted: {n}" for n in fc.notes]
    lines += [f"{indent}warning: {w}" for w in fc.warnings()]
    return lines


def stage_of(info: Mapping[str, Any], policy: Policy | None) -> str:
    """The stage ``describe`` names, else the policy's stage at ``stage_index``."""
    if info.get("stage"):
        return str(info["stage"])
    index = info.get("stage_index")
    if policy is not None and isinstance(index, int) and 0 <= index < len(policy.stages):
        return policy.stages[index].describe()
    return f"stage {index}"


def _cluster_lines(info: Mapping[str, Any]) -> list[str]:
    """Where a cluster rollout runs, and whatever else its ``describe`` says."""
    lines = [f"  namespace {info.get('namespace')}, backend {info.get('backend', 'seldon')}, "
             f"{info.get('evaluations')} evaluations, rollout run {info.get('rollout_run_id')}"]
    if info.get("endpoint"):
        lines.append(f"  gateway endpoint {info['endpoint']}")
    for key, value in info.items():
        if key not in _SHOWN and value not in (None, "", [], {}):
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            lines.append(f"  {key}: {text}"[:240])
    return lines


def _status_lines(name: str, where: Where) -> list[str]:
    deployer, config = where.deployer(), where.config()
    info = deployer.describe(name, config)
    policy = deployer.open(name, config).policy if where.cluster else None
    lines = [
        f"{info['name']}: {info['status']}{' (paused)' if info['paused'] else ''} at "
        f"{stage_of(info, policy)} — {info['weights']}",
        f"  candidate {info['candidate']}  baseline {info['baseline']}",
    ]
    if where.cluster:
        lines += _cluster_lines(info)
    else:
        lines.append(
            f"  endpoint {info['endpoint']} ({'running' if info['running'] else 'not running'}"
            f"), {info['evaluations']} evaluations, rollout run {info['rollout_run_id']}")
        if info.get("metrics_endpoint"):
            lines.append(f"  controller metrics {info['metrics_endpoint']}")
    lines.append(f"  last: {info['reason']}")
    decision = deployer.last_decision(name, config)
    view = bake_view(decision) if info["phase"] == "baking" else None
    if view is not None:
        lines.append(f"  bake: {view.line()}")
    if info["phase"] not in ENDED:
        lines += forecast_lines(decision)
    if decision is not None:
        if policy is None:
            policy = deployer.open(name, config).policy
        lines.append("  evidence (anytime-valid bounds, positive = candidate better):")
        lines += ["  " + row for row in evidence_table(decision, policy)]
    return lines


@click.command("status")
@click.argument("name")
@rollout_target
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def status_command(name: str, where: Where, as_json: bool) -> None:
    """Stage, weights, per-KPI evidence and the last decision of rollout NAME."""
    if as_json:
        deployer, config = where.deployer(), where.config()
        info = deployer.describe(name, config)
        decision = deployer.last_decision(name, config)
        info["last_decision"] = decision.to_dict() if decision else None
        click.echo(json.dumps(info, indent=2))
        return
    for line in _status_lines(name, where):
        click.echo(line)


@click.command("watch")
@click.argument("name")
@rollout_target
@click.option("--timeout", default=None, metavar="DURATION",
              help="Stop watching after DURATION: seconds, or e.g. 15m, 2h (exit code 5 if "
                   "the rollout goes on).")
def watch_command(name: str, where: Where, timeout: str | None) -> None:
    """Follow rollout NAME through its stages until it ends (Ctrl-C stops watching only).

    Exits with the outcome's code: 0 promoted, 3 rolled back, 4 aborted, 5 still running
    when --timeout or Ctrl-C stopped the watch (docs/deployment.md#exit-codes).
    """
    limit = None if timeout is None else _seconds(timeout)
    deployer, config = where.deployer(), where.config()
    deployer.open(name, config)  # a clear error if there is no such rollout
    deadline = None if limit is None else time.monotonic() + limit
    try:
        for poll in deployer.follow(name, config):
            for rec in poll.records:
                stamp = time.strftime("%H:%M:%S", time.localtime(rec.ts))
                body = rec.event.body()
                what = body.get("reason") or body.get("weights") or ""
                click.echo(f"{stamp} {rec.kind:<18} {body.get('stage', ''):<7} {what}"[:240])
                for line in forecast_lines(body.get("decision"), " " * 9)[:2]:
                    click.echo(line[:240])
            state = poll.state
            if poll.ended:
                click.echo(f"{name}: {state.status} — {state.reason}")
                raise click.exceptions.Exit(exit_codes.exit_code_for(state.phase))
            if deadline is not None and time.monotonic() > deadline:
                click.echo(f"{name}: still {state.status} (stopped watching)")
                raise click.exceptions.Exit(exit_codes.NOT_ENDED)
    except KeyboardInterrupt:
        # Not an outcome: a script that runs `kpigate watch` must not read 0 (promoted).
        click.echo("stopped watching; the rollout goes on")
        raise click.exceptions.Exit(exit_codes.NOT_ENDED) from None


def _seconds(text: str) -> float:
    """``--timeout``: a number of seconds or a duration such as 15m or 2h."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise UsageError(f"--timeout {text}: {exc}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise UsageError(f"--timeout {text}: give a non-negative number of seconds or a "
                         "duration such as 15m")
    return seconds


@click.command("report")
@click.argument("name")
@rollout_target
def report_command(name: str, where: Where) -> None:
    """Write rollout NAME's report (markdown, HTML, charts) and print where it is."""
    rollout = where.deployer().open(name, where.config())
    if rollout.policy is None:
        raise UsageError(f"{name}: the rollout's policy copy in {rollout.directory} cannot "
                         "be read; the report needs it")
    out = write_report(rollout.directory, rollout.store.require(), rollout.store,
                       rollout.policy)
    click.echo(f"{out / 'report.md'}")
    click.echo(f"{out / 'report.html'}")


def steered_line(deployer: Deployer, name: str, where: Where, info: Mapping[str, Any]
                 ) -> str:
    """``NAME: status at stage — weights`` after an operator action."""
    policy = None if info.get("stage") else deployer.open(name, where.config()).policy
    return f"{name}: {info['status']} at {stage_of(info, policy)} — {info['weights']}"


def _steer(action: str) -> click.Command:
    @click.command(action, help=f"{action.capitalize()} the running rollout NAME now "
                               "(recorded in the audit log as an operator action).")
    @click.argument("name")
    @rollout_target
    def command(name: str, where: Where) -> None:
        deployer = where.deployer()
        info = deployer.steer(name, action, where.config())
        click.echo(steered_line(deployer, name, where, info))

    return command


promote_command = _steer("promote")
rollback_command = _steer("rollback")
pause_command = _steer("pause")
# resume: mlflow_kpigate.cli.resume (it also restarts a deployment's processes)


def _deployer() -> LocalDeployer:
    return LocalDeployer()


@click.command("serve")
@click.option("--name", required=True, help="Deployment name.")
@click.option("-m", "--model-uri", required=True, help="Candidate models:/NAME/V or @ALIAS.")
@click.option("-C", "--config", "pairs", multiple=True, metavar="KEY=VALUE",
              help="Deployment config, as for mlflow deployments -C.")
def serve_command(name: str, model_uri: str, pairs: tuple[str, ...]) -> None:
    """Run a rollout in the foreground until it ends, then keep serving until Ctrl-C."""
    deployer = _deployer()
    config: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"-C {pair}: write KEY=VALUE")
        config[key] = value
    root = parse_config(config).state_dir
    deployer.create(name, model_uri, {**config, "wait": "false"},
                    progress=lambda m: click.echo(m, err=True))
    try:
        state = deployer.wait(name, root, None, lambda m: click.echo(m, err=True))
        click.echo(f"{name}: {state.phase.value} — {state.reason}")
        click.echo("serving on; Ctrl-C stops the deployment")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        deployer.delete(name, config)
        click.echo(f"{name}: stopped")
