"""``kpigate resume``: a rollout goes on — its processes, and its evaluations if paused.

``kpigate resume NAME`` starts the deployment's supervisor again if it is not running
(after a crash, a SIGKILL or a reboot; at the committed stage, see
:mod:`mlflow_kpigate.deploy.local_revive`), waits until the router serves, and resumes
the rollout's evaluations if an operator paused it. ``kpigate resume --all`` starts again
every deployment under the state directory that was running (a paused rollout stays
paused): the command a systemd unit runs at boot (docs/deployment.md).

A cluster rollout (``--namespace NS`` or ``-t kpigate:/seldon/NS``) has no processes here:
its evaluations are resumed through its deployer's ``steer`` if it is paused.
"""

from __future__ import annotations

import click

from mlflow_kpigate.cli.errors import error_line
from mlflow_kpigate.cli.operate import stage_of
from mlflow_kpigate.cli.targeting import Where, rollout_target
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.deploy.config import deployment_dir, parse_config
from mlflow_kpigate.deploy.local import LocalDeployer
from mlflow_kpigate.deploy.local_processes import valid_name
from mlflow_kpigate.deploy.local_revive import resume, resume_all

_TERMINAL = ("promoted", "rolled_back", "aborted")


@click.command("resume")
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True,
              help="Every deployment under the state directory that was running (paused "
                   "rollouts stay paused).")
@rollout_target
def resume_command(name: str | None, every: bool, where: Where) -> None:
    """Resume rollout NAME: restart its processes if they are not running, and its
    evaluations if it is paused.

    With --all instead of NAME, restart the processes of every deployment that was
    running (after a reboot, e.g. from a systemd unit); paused rollouts stay paused.
    """
    if every == bool(name):
        raise UsageError("resume: give a deployment NAME or --all")
    if where.cluster:
        if every:
            raise UsageError("--all: only for rollouts on this machine; give the NAME of "
                             "the cluster rollout to resume")
        assert name is not None
        _resume_cluster(name, where)
        return
    state_dir = where.state_dir
    root = parse_config(_config(state_dir)).state_dir
    if every:
        done, problems = resume_all(root)
        for item in done:
            click.echo(f"{item.name}: {'restarted' if item.restarted else 'running'}, "
                       f"serving on {item.endpoint}")
        for line in problems:
            click.echo(error_line(line), err=True)
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
    if info["paused"] and info["phase"] not in _TERMINAL:
        info = deployer.steer(name, "resume", _config(state_dir))
        click.echo(f"{name}: evaluations resumed at {info['stage']} — {info['weights']}")


def _config(state_dir: str | None) -> dict[str, str] | None:
    return {"state_dir": state_dir} if state_dir else None


def _resume_cluster(name: str, where: Where) -> None:
    """Resume a paused cluster rollout's evaluations (its controller runs in the cluster)."""
    deployer, config = where.deployer(), where.config()
    info = deployer.describe(name, config)
    if not info["paused"] or info["phase"] in _TERMINAL:
        click.echo(f"{name}: not paused ({info['status']}); nothing to resume")
        return
    info = deployer.steer(name, "resume", config)
    policy = None if info.get("stage") else deployer.open(name, config).policy
    click.echo(f"{name}: evaluations resumed at {stage_of(info, policy)} — {info['weights']}")
