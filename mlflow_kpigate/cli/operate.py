"""Operators' commands for embedded rollouts: status, watch, report, steer, serve.

Thin: each parses its options and calls :class:`~mlflow_kpigate.deploy.local.LocalDeployer`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from mlflow_kpigate.cli.tables import evidence_table
from mlflow_kpigate.core import exit_codes
from mlflow_kpigate.core.bake import bake_view
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.forecast import forecast_view
from mlflow_kpigate.deploy.config import parse_config
from mlflow_kpigate.deploy.finish import write_report
from mlflow_kpigate.deploy.local import LocalDeployer

STATE_DIR = click.option("--state-dir", type=click.Path(file_okay=False),
                         help="State directory (default $KPIGATE_STATE_DIR or ~/.kpigate).")


def _config(state_dir: str | None) -> dict[str, str] | None:
    return {"state_dir": state_dir} if state_dir else None


def _deployer() -> LocalDeployer:
    return LocalDeployer()


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


def _status_lines(name: str, state_dir: str | None) -> list[str]:
    info = _deployer().describe(name, _config(state_dir))
    lines = [
        f"{info['name']}: {info['status']}{' (paused)' if info['paused'] else ''} at "
        f"{info['stage']} — {info['weights']}",
        f"  candidate {info['candidate']}  baseline {info['baseline']}",
        f"  endpoint {info['endpoint']} ({'running' if info['running'] else 'not running'}), "
        f"{info['evaluations']} evaluations, rollout run {info['rollout_run_id']}",
        f"  last: {info['reason']}",
    ]
    decision = _deployer().last_decision(name, _config(state_dir))
    view = bake_view(decision) if info["phase"] == "baking" else None
    if view is not None:
        lines.append(f"  bake: {view.line()}")
    if info["phase"] not in ENDED:
        lines += forecast_lines(decision)
    if decision is not None:
        policy = _deployer().open(name, _config(state_dir)).policy
        lines.append("  evidence (anytime-valid bounds, positive = candidate better):")
        lines += ["  " + row for row in evidence_table(decision, policy)]
    return lines


@click.command("status")
@click.argument("name")
@STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def status_command(name: str, state_dir: str | None, as_json: bool) -> None:
    """Stage, weights, per-KPI evidence and the last decision of rollout NAME."""
    if as_json:
        info = _deployer().describe(name, _config(state_dir))
        decision = _deployer().last_decision(name, _config(state_dir))
        info["last_decision"] = decision.to_dict() if decision else None
        click.echo(json.dumps(info, indent=2))
        return
    for line in _status_lines(name, state_dir):
        click.echo(line)


@click.command("watch")
@click.argument("name")
@STATE_DIR
@click.option("--timeout", type=float, default=None,
              help="Stop watching after SECONDS (exit code 5 if the rollout goes on).")
def watch_command(name: str, state_dir: str | None, timeout: float | None) -> None:
    """Follow rollout NAME through its stages until it ends (Ctrl-C stops watching only).

    Exits with the outcome's code: 0 promoted, 3 rolled back, 4 aborted, 5 still running
    when --timeout or Ctrl-C stopped the watch (docs/deployment.md#exit-codes).
    """
    _deployer().open(name, _config(state_dir))  # a clear error if there is no such rollout
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for poll in _deployer().follow(name, _config(state_dir)):
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


@click.command("report")
@click.argument("name")
@STATE_DIR
def report_command(name: str, state_dir: str | None) -> None:
    """Write rollout NAME's report (markdown, HTML, charts) and print where it is."""
    rollout = _deployer().open(name, _config(state_dir))
    if rollout.policy is None:
        raise UsageError(f"{name}: the rollout's policy copy in {rollout.directory} cannot "
                         "be read; the report needs it")
    out = write_report(rollout.directory, rollout.store.require(), rollout.store,
                       rollout.policy)
    click.echo(f"{out / 'report.md'}")
    click.echo(f"{out / 'report.html'}")


def _steer(action: str) -> click.Command:
    @click.command(action, help=f"{action.capitalize()} the running rollout NAME now "
                               "(recorded in the audit log as an operator action).")
    @click.argument("name")
    @STATE_DIR
    def command(name: str, state_dir: str | None) -> None:
        info = _deployer().steer(name, action, _config(state_dir))
        click.echo(f"{name}: {info['status']} at {info['stage']} — {info['weights']}")

    return command


promote_command = _steer("promote")
rollback_command = _steer("rollback")
pause_command = _steer("pause")
# resume: mlflow_kpigate.cli.resume (it also restarts a deployment's processes)


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
