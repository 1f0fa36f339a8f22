"""The ``kpigate`` command: the click group and the commands it holds.

Each command lives in the module named for it and stays thin: it parses, calls a
Deployer or a part, and prints. Errors are reported by :mod:`.errors`. The group imports
a command's module only when that command runs (:mod:`.lazy`), so ``kpigate --version``
and ``kpigate --help`` import neither the parts nor scipy, pandas or MLflow; a command
added here names its ``module:attribute`` and the first paragraph of its help.
``--version`` names the MLflow it runs with from the installed distribution's metadata,
without importing MLflow.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click

from mlflow_kpigate import __version__
from mlflow_kpigate.cli.lazy import LazyCommand, LazyGroup

_CLI = "mlflow_kpigate.cli"
_STEER_HELP = "the running rollout NAME now (recorded in the audit log as an operator action)."

COMMANDS: dict[str, LazyCommand] = {
    "policy": LazyCommand(f"{_CLI}.policy:policy_group",
                          "Work with rollout policy files (see docs/policy.md)."),
    "plan": LazyCommand(f"{_CLI}.plan:plan_command",
                        "Size POLICY_FILE's stages: requests needed to promote or to detect, "
                        "per KPI."),
    "simulate": LazyCommand(f"{_CLI}.simulate:simulate_command",
                            "Run POLICY_FILE's staged rollout against a synthetic stream and "
                            "show each decision."),
    "render": LazyCommand(f"{_CLI}.render:render_command",
                          "Print the Seldon manifests and JSON patches of a rollout, without a "
                          "cluster."),
    "replay": LazyCommand(f"{_CLI}.replay:replay_command",
                          "Re-judge every recorded evaluation of rollout NAME (or of "
                          "--run-id)."),
    "collector": LazyCommand(f"{_CLI}.collector:collector_command",
                             "Collect Seldon request-logger CloudEvents and labels; export KPIs "
                             "for Prometheus."),
    "operator": LazyCommand(f"{_CLI}.operator:operator_command",
                            "Reconcile ModelRollouts: run each rollout's stages in-cluster, one "
                            "leader at a time."),
    "webhook-bridge": LazyCommand(f"{_CLI}.webhook_bridge:webhook_bridge_command",
                                  "Forward MLflow registry webhooks to GitHub as "
                                  "repository_dispatch events."),
    "github": LazyCommand(f"{_CLI}.github:github_group",
                          "Report rollouts to GitHub: pull request comment, job summary, "
                          "outputs, status."),
    "status": LazyCommand(f"{_CLI}.status:status_command",
                          "Stage, weights, per-KPI evidence and the last decision of rollout "
                          "NAME."),
    "watch": LazyCommand(f"{_CLI}.watching:watch_command",
                         "Follow rollout NAME through its stages until it ends (Ctrl-C stops "
                         "watching only)."),
    "report": LazyCommand(f"{_CLI}.operate:report_command",
                          "Write rollout NAME's report (markdown, HTML, charts) and print where "
                          "it is."),
    "list": LazyCommand(f"{_CLI}.listing:list_command",
                        "List the rollouts of a target: name, phase, stage, traffic and last "
                        "decision."),
    "feedback": LazyCommand(f"{_CLI}.feedback:feedback_command",
                            "Send late-arriving labels for rollout NAME's predictions, matched "
                            "by request id."),
    "serve": LazyCommand(f"{_CLI}.operate:serve_command",
                         "Run a rollout in the foreground until it ends, then keep serving "
                         "until Ctrl-C."),
    **{action: LazyCommand(f"{_CLI}.operate:{action}_command",
                           f"{action.capitalize()} {_STEER_HELP}")
       for action in ("promote", "rollback", "pause")},
    "resume": LazyCommand(f"{_CLI}.resume:resume_command",
                          "Resume rollout NAME: restart its processes if they are not "
                          "running, and its evaluations if it is paused."),
}


def mlflow_version() -> str:
    """The installed MLflow's version (``mlflow``, else ``mlflow-skinny``), read from its
    package metadata: importing MLflow would take a second."""
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "not installed"


def version_line() -> str:
    """``kpigate, version 0.1.0 (mlflow 3.17.2)``: one line, as click prints a version."""
    return f"kpigate, version {__version__} (mlflow {mlflow_version()})"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit()


@click.group(cls=LazyGroup, lazy_commands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version,
              help="Show kpigate's version and the MLflow it runs with, and exit.")
def main() -> None:
    """Staged rollouts of MLflow model versions, decided by KPI evidence."""
