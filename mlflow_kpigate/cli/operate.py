"""Operators' commands: report, steer (any target), serve (this machine), and what the
status and watch commands (:mod:`.status`, :mod:`.watching`) share with them.

Thin: each parses its options, picks the rollout's deployer from its target
(:mod:`.targeting`: ``-t``, ``--namespace``, ``--kubeconfig``, ``--context``) and calls it.
A cluster rollout shows its namespace and backend where a local one shows its endpoint
and processes; everything else is read the same way for both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import click

from mlflow_kpigate.cli.targeting import STATE_DIR, Where, rollout_target
from mlflow_kpigate.core.durations import parse_duration
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.forecast import forecast_view
from mlflow_kpigate.deploy.config import parse_config
from mlflow_kpigate.deploy.deployer import Deployer
from mlflow_kpigate.deploy.finish import write_report
from mlflow_kpigate.deploy.local import LocalDeployer
from mlflow_kpigate.policy import Policy

__all__ = ["ENDED", "STATE_DIR", "forecast_lines", "stage_label", "stage_of", "timeout_seconds"]


def _config(state_dir: str | None) -> dict[str, str] | None:
    return {"state_dir": state_dir} if state_dir else None


#: Phases whose forecast is history, not a forecast.
ENDED = ("promoted", "rolled_back", "aborted", "baking")


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


def stage_label(info: Mapping[str, Any], policy: Policy | None) -> str | None:
    """The stage ``describe`` names, else the policy's stage at ``stage_index`` (None if
    neither says)."""
    if info.get("stage"):
        return str(info["stage"])
    index = info.get("stage_index")
    if policy is not None and isinstance(index, int) and 0 <= index < len(policy.stages):
        return policy.stages[index].describe()
    return None


def stage_of(info: Mapping[str, Any], policy: Policy | None) -> str:
    """:func:`stage_label` for a line of text: ``stage N`` when it is not known."""
    return stage_label(info, policy) or f"stage {info.get('stage_index')}"


def timeout_seconds(text: str) -> float:
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
