"""The ``kpigate`` command: the click group and the commands it holds.

Each command lives in the module named for it and stays thin: it parses, calls a
Deployer or a part, and prints. Errors are reported by :mod:`.errors`.
"""

from __future__ import annotations

import click

from mlflow_kpigate import __version__
from mlflow_kpigate.cli.collector import collector_command
from mlflow_kpigate.cli.errors import KpigateGroup
from mlflow_kpigate.cli.github import github_group
from mlflow_kpigate.cli.operate import (
    feedback_command,
    report_command,
    serve_command,
    status_command,
    steer_commands,
    watch_command,
)
from mlflow_kpigate.cli.plan import plan_command
from mlflow_kpigate.cli.policy import policy_group
from mlflow_kpigate.cli.render import render_command
from mlflow_kpigate.cli.replay import replay_command
from mlflow_kpigate.cli.simulate import simulate_command
from mlflow_kpigate.cli.webhook_bridge import webhook_bridge_command


@click.group(cls=KpigateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="kpigate")
def main() -> None:
    """Staged rollouts of MLflow model versions, decided by KPI evidence."""


main.add_command(policy_group)
main.add_command(plan_command)
main.add_command(simulate_command)
main.add_command(render_command)
main.add_command(replay_command)
main.add_command(collector_command)
main.add_command(webhook_bridge_command)
main.add_command(github_group)
for _command in (status_command, watch_command, report_command, feedback_command,
                 serve_command, *steer_commands):
    main.add_command(_command)
