"""``kpigate list``: every rollout of a target, one line each.

For the local target the deployments under the state directory; for
``kpigate:/seldon/NS`` (or ``--namespace NS``) the kpigate rollouts in the namespace (read
from their ConfigMaps, through the deployer's ``list_all``). Columns: name, phase, stage,
traffic, last decision. ``-o json|yaml`` (or ``--json``) prints a list of the documents
``kpigate status -o json`` prints (:func:`~.output.status_document`), one per rollout; a
rollout that cannot be read is ``{"name", "status", "error"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from mlflow_kpigate.cli.operate import stage_of
from mlflow_kpigate.cli.output import dump, output_option, status_document
from mlflow_kpigate.cli.tables import aligned
from mlflow_kpigate.cli.targeting import Where, rollout_target
from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.deploy.deployer import Deployer

HEADERS = ("NAME", "PHASE", "STAGE", "TRAFFIC", "LAST DECISION")
#: Characters of the last decision's reason shown in the table.
REASON_CHARS = 60


def _row(deployer: Deployer, where: Where, info: Mapping[str, Any]) -> tuple[str, ...]:
    name = str(info.get("name", ""))
    if "error" in info:  # a deployment that cannot be read: say why, list the others
        return name, str(info.get("status", "unreadable")), "-", "-", str(info["error"])
    phase = str(info.get("phase") or info.get("status", ""))
    if info.get("paused"):
        phase += " (paused)"
    try:
        policy = None if info.get("stage") else deployer.open(name, where.config()).policy
        decision = deployer.last_decision(name, where.config())
    except KpigateError as exc:  # removed or damaged since it was listed
        return name, phase, "-", str(info.get("weights", "-")), f"error: {exc}"
    last = "-"
    if decision is not None:
        reason = decision.reason if len(decision.reason) <= REASON_CHARS \
            else decision.reason[: REASON_CHARS - 1] + "…"
        last = f"{decision.action.value}: {reason}"
    return name, phase, stage_of(info, policy), str(info.get("weights", "-")), last


def _document(deployer: Deployer, where: Where, info: Mapping[str, Any]) -> dict[str, Any]:
    if "error" in info:
        return dict(info)
    try:
        return status_document(deployer, str(info.get("name")), where.config(), info)
    except KpigateError as exc:  # removed or damaged since it was listed
        return {**info, "error": str(exc)}


@click.command("list")
@rollout_target
@output_option("the deployments")
def list_command(where: Where, output: str) -> None:
    """List the rollouts of a target: name, phase, stage, traffic and last decision."""
    deployer = where.deployer()
    infos = deployer.list_all(where.config())
    if output != "text":
        click.echo(dump([_document(deployer, where, info) for info in infos], output))
        return
    if not infos:
        click.echo(f"no rollouts ({where.target})")
        return
    for line in aligned([HEADERS, *(_row(deployer, where, info) for info in infos)]):
        click.echo(line[2:])
