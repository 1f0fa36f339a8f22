"""``kpigate github report`` and ``kpigate github run-id``: the GitHub Action's commands.

Thin: the commands parse their options, open the deployment (the embedded backend's
state directory or the cluster's ConfigMaps) and hand its record to the report step,
:mod:`mlflow_kpigate.github.report_step`, which says what the report does. Bad input
(options, environment, event payload) exits 2 with one line naming what to fix, with
the token masked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import click

from mlflow_kpigate.cli.errors import error_line
from mlflow_kpigate.cli.operate import STATE_DIR
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.extras import MissingExtra
from mlflow_kpigate.core.history import History
from mlflow_kpigate.deploy.config import deployment_dir
from mlflow_kpigate.deploy.deployer import Rollout
from mlflow_kpigate.deploy.finish import write_report
from mlflow_kpigate.deploy.local import LocalDeployer
from mlflow_kpigate.deploy.targets import deployer_for
from mlflow_kpigate.github.api import GitHubClient
from mlflow_kpigate.github.outcome import FAIL_ON
from mlflow_kpigate.github.publish import ClientFactory
from mlflow_kpigate.github.record import RolloutRecord, record_of
from mlflow_kpigate.github.report_step import ReportStep, StepOptions
from mlflow_kpigate.github.runner import Console


@dataclass(frozen=True)
class ReportOptions:
    """The options of ``kpigate github report``."""

    deployment: str
    state_dir: str | None = None
    model: str | None = None
    comment: bool = True
    commit_status: bool = False
    fail_on: str = "rollback"
    pr_number: str | None = None
    target: str = "kpigate"


def load_record(rollout: Rollout, *, build_missing_report: bool = True,
                warn: Callable[[str], None] | None = None) -> RolloutRecord:
    """The rollout's state, evaluations, traffic, final stage and report.

    When the report has not been written yet (a rollout that has not ended), it is
    written now into the rollout's directory, unless ``build_missing_report`` is False.
    """
    state = rollout.store.require()
    history = History.of(rollout.store.events())
    policy = rollout.policy
    report_dir = rollout.directory / "report"
    if not (report_dir / "report.md").is_file() and build_missing_report and policy:
        try:
            write_report(rollout.directory, state, rollout.store, policy)
        except Exception as exc:  # the outputs and the comment do not need the files
            if warn is not None:
                warn(f"could not write the rollout report in {report_dir} "
                     f"({type(exc).__name__}: {exc})")
    report_path = str(report_dir) if (report_dir / "report.md").is_file() else None
    return record_of(state, history, policy, report_path)


def record_for(deployment: str, target: str, state_dir: str | None,
               warn: Callable[[str], None] | None = None,
               build_missing_report: bool = True) -> RolloutRecord:
    """The rollout ``deployment`` of ``target``: the state directory's (embedded backend)
    or the cluster's ConfigMaps (``kpigate:/seldon/NS``, through $KUBECONFIG or the
    in-cluster service account)."""
    if target.strip().rstrip("/") == "kpigate:":
        target = "kpigate"
    try:
        deployer = deployer_for(target)
    except MissingExtra:
        raise
    except UsageError:
        raise UsageError(f"--target {target}: use kpigate, kpigate:/local or "
                         "kpigate:/seldon/NAMESPACE") from None
    config = {"state_dir": state_dir} if state_dir else None
    if isinstance(deployer, LocalDeployer):
        directory = deployment_dir(deployment, state_dir)
        if not (directory / "state.db").is_file():
            raise UsageError(f"--deployment {deployment}: no deployment in {directory.parent}"
                             "; give the name used with `mlflow deployments create` and the "
                             "same --state-dir / KPIGATE_STATE_DIR")
    return load_record(deployer.open(deployment, config), warn=warn,
                       build_missing_report=build_missing_report)


def _echo(line: str, err: bool) -> None:
    click.echo(line, err=err)


def run_report(opts: ReportOptions, env: Mapping[str, str], *,
               client_factory: ClientFactory = GitHubClient) -> int:
    """Everything ``kpigate github report`` does; returns the exit code (0, or the
    outcome's 3, 4 or 5 when ``--fail-on`` fails it).

    ``UsageError`` for bad options, environment or event payload. ``client_factory``
    makes the API client from (token, API URL), e.g. one with other retry settings.
    """
    step = ReportStep.prepare(StepOptions(opts.model, opts.comment, opts.commit_status,
                                          opts.fail_on, opts.pr_number), env, _echo)
    record = record_for(opts.deployment, opts.target, opts.state_dir, warn=step.console.warn)
    return step.report(record, client_factory=client_factory)


TARGET = click.option("--target", "-t", default="kpigate", show_default=True,
                      help="The deployment target: kpigate (this machine's state directory) "
                           "or kpigate:/seldon/NAMESPACE (the cluster's ConfigMaps).")


@click.group("github")
def github_group() -> None:
    """Report rollouts to GitHub: pull request comment, job summary, outputs, status."""


@github_group.command("report")
@click.option("--deployment", required=True, help="The deployment (rollout) name.")
@STATE_DIR
@click.option("--model", default=None,
              help="Model name for the comment marker and the status context "
                   "(default: the rollout's model).")
@click.option("--comment/--no-comment", default=True, show_default=True,
              help="Create or update the sticky pull request comment.")
@click.option("--commit-status/--no-commit-status", default=False, show_default=True,
              help="Set the commit status kpigate/MODEL on the pull request's head commit.")
@click.option("--fail-on", type=click.Choice(FAIL_ON, case_sensitive=False),
              default="rollback", show_default=True,
              help="Fail on a rollback or abort (exit 3 or 4); on those or a rollout not "
                   "ended (exit 5); or never.")
@click.option("--pr-number", default=None,
              help="Pull request number, for events without one (empty: from the event).")
@TARGET
def report_command(deployment: str, state_dir: str | None, model: str | None, comment: bool,
                   commit_status: bool, fail_on: str, pr_number: str | None,
                   target: str) -> None:
    """Outputs, job summary, annotations, PR comment and commit status of a rollout."""
    opts = ReportOptions(deployment, state_dir, model, comment, commit_status,
                         fail_on.lower(), pr_number, target)
    token = os.environ.get("GITHUB_TOKEN", "").strip() or None
    try:
        code = run_report(opts, os.environ)
    except KpigateError as exc:
        Console(token, _echo).err(error_line(" ".join(str(exc).split())))
        raise click.exceptions.Exit(exc.exit_code) from None
    raise click.exceptions.Exit(code)


@github_group.command("run-id")
@click.option("--deployment", required=True, help="The deployment (rollout) name.")
@STATE_DIR
@TARGET
def run_id_command(deployment: str, state_dir: str | None, target: str) -> None:
    """Print the rollout run id of DEPLOYMENT's current rollout (empty if there is none).

    The action compares it before and after its rollout step, so that a rollout that
    failed to start is not reported with an earlier rollout's outcome.
    """
    try:
        record = record_for(deployment, target, state_dir, build_missing_report=False)
    except KpigateError:
        click.echo("")
        return
    click.echo(record.state.rollout_run_id or "")


if __name__ == "__main__":
    github_group(prog_name="kpigate github")
