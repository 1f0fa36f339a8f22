"""``kpigate resume``: a rollout goes on — its processes, and its evaluations if paused.

``kpigate resume NAME`` starts the deployment's supervisor again if it is not running
(after a crash, a SIGKILL or a reboot; at the committed stage, see
:mod:`mlflow_kpigate.deploy.local_revive`), waits until the router serves, and resumes
the rollout's evaluations if an operator paused it. ``kpigate resume --all`` starts again
every deployment under the state directory that was running (a paused rollout stays
paused): the command a systemd unit runs at boot (docs/deployment.md).
"""

from __future__ import annotations

import click

from mlflow_kpigate.cli.operate import STATE_DIR, _config
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.deploy.config import deployment_dir, parse_config
from mlflow_kpigate.deploy.local import LocalDeployer
from mlflow_kpigate.deploy.local_processes import valid_name
from mlflow_kpigate.deploy.local_revive import resume, resume_all


@click.command("resume")
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True,
              help="Every deployment under the state directory that was running (paused "
                   "rollouts stay paused).")
@STATE_DIR
def resume_command(name: str | None, every: bool, state_dir: str | None) -> None:
    """Resume rollout NAME: restart its processes if they are not running, and its
    evaluations if it is paused.

    With --all instead of NAME, restart the processes of every deployment that was
    running (after a reboot, e.g. from a systemd unit); paused rollouts stay paused.
    """
    if every == bool(name):
        raise UsageError("resume: give a deployment NAME or --all")
    root = parse_config(_config(state_dir)).state_dir
    if every:
        done, problems = resume_all(root)
        for item in done:
            click.echo(f"{item.name}: {'restarted' if item.restarted else 'running'}, "
                       f"serving on {item.endpoint}")
        for line in problems:
            click.echo(f"error: {line}", err=True)
        if not done and not problems:
            click.echo("no deployment to resume")
        if problems:
            raise click.exceptions.Exit(KpigateError.exit_code)
        return
    assert name is not None
    item = resume(deployment_dir(valid_name(name), root))
    click.echo(f"{name}: {'restarted' if item.restarted else 'running'}, serving on "
               f"{item.endpoint}")
    deployer = LocalDeployer()
    info = deployer.describe(name, _config(state_dir))
    if info["paused"] and info["phase"] not in ("promoted", "rolled_back", "aborted"):
        info = deployer.steer(name, "resume", _config(state_dir))
        click.echo(f"{name}: evaluations resumed at {info['stage']} — {info['weights']}")
