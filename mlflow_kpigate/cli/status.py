"""``kpigate status``: one rollout's stage, weights, forecast and per-KPI evidence.

As text (the default), lines for people; with ``-o json|yaml`` (or ``--json``) the
document of :func:`~.output.status_document`. ``--watch`` keeps showing it until the
rollout ends (or Ctrl-C) and exits with the outcome's code, as ``kpigate watch`` does: on
a terminal the live view redrawn in place; otherwise the status again at each change (as
text, the lines below a blank line; as JSON, one document per line; as YAML, a ``---``
document each).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import click

from mlflow_kpigate.cli.operate import ENDED, forecast_lines, stage_of
from mlflow_kpigate.cli.output import dump, dump_line, output_option, status_document
from mlflow_kpigate.cli.tables import evidence_table
from mlflow_kpigate.cli.targeting import Where, rollout_target
from mlflow_kpigate.cli.watching import follow_until_end, screen_for
from mlflow_kpigate.core.bake import bake_view
from mlflow_kpigate.deploy.follow import Poll

__all__ = ["status_command", "status_lines"]

#: What a cluster rollout's status shows on its own lines; other keys ``describe`` gives
#: (e.g. the operator mode's) are printed as ``key: value``.
_SHOWN = frozenset({"name", "flavor", "status", "phase", "paused", "stage", "stage_index",
                    "stages", "weights", "candidate", "baseline", "endpoint", "reason",
                    "evaluations", "rollout_run_id", "namespace", "backend", "last_decision"})
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


def status_lines(name: str, where: Where) -> list[str]:
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
@output_option("the deployment and its last decision")
@click.option("-w", "--watch", is_flag=True,
              help="Keep showing it until the rollout ends (Ctrl-C stops); exit with the "
                   "outcome's code, as kpigate watch.")
def status_command(name: str, where: Where, output: str, watch: bool) -> None:
    """Stage, weights, per-KPI evidence and the last decision of rollout NAME."""
    if watch:
        _watch(name, where, output)
    deployer, config = where.deployer(), where.config()
    if output != "text":
        click.echo(dump(status_document(deployer, name, config), output))
        return
    for line in status_lines(name, where):
        click.echo(line)


def _watch(name: str, where: Where, output: str) -> None:
    deployer, config = where.deployer(), where.config()
    deployer.open(name, config)  # a clear error if there is no such rollout
    screen = screen_for(deployer, name, config) if output == "text" else None
    shown: list[int] = []

    def on_poll(poll: Poll) -> None:
        if screen is not None:
            screen.show(poll.state)
            return
        if shown and not poll.records:
            return  # nothing new since it was last printed
        if output == "text":
            click.echo("\n".join(([""] if shown else []) + status_lines(name, where)))
        else:
            click.echo(dump_line(status_document(deployer, name, config), output))
        shown.append(poll.state.evaluations)

    with screen if screen is not None else nullcontext():
        line, code = follow_until_end(deployer, name, config, None, on_poll)
    if output == "text":
        click.echo(line)
    raise click.exceptions.Exit(code)


