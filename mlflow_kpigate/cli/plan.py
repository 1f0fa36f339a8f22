"""``kpigate plan``: requests each stage needs, from the registry baseline's figures."""

from __future__ import annotations

import click

from mlflow_kpigate.gate import RegistryBaseline
from mlflow_kpigate.gate.planning import plan
from mlflow_kpigate.policy import load_policy


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


@click.command("plan")
@click.argument("policy_file", type=click.Path())
@click.option("--baseline-file", required=True, type=click.Path(),
              help="YAML/JSON with the baseline's KPI figures (see docs/statistics.md).")
def plan_command(policy_file: str, baseline_file: str) -> None:
    """Size POLICY_FILE's stages: requests needed to promote or to detect, per KPI."""
    policy = load_policy(policy_file)
    registry = RegistryBaseline.from_file(baseline_file)
    rows = plan(policy, registry)
    ev = policy.evaluation
    click.echo(f"plan for {policy_file}: alpha_rollback {ev.alpha_rollback:g} (split), "
               f"alpha_promote {ev.alpha_promote:g}, power {ev.power:g}")
    click.echo("requests = all requests through the router in that stage alone (both roles);"
               " pooling evidence from earlier stages only shortens a stage.")
    click.echo("  promote: an equal candidate shown within (stage scale x margin);"
               " detect: a candidate worse by the KPI's detect (default 1.75 x margin)"
               " rolled back;"
               " Wald: SPRT lower bound with a known baseline.")
    header = ("stage", "KPI", "unit", "promote", "detect", "Wald", "note")
    table = [header] + [(r.stage, r.kpi, r.unit, _n(r.promote_requests),
                         _n(r.detect_requests), _n(r.wald_requests), r.note) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  " + "  ".join(c.ljust(w) if i in (0, 1, 2, 6) else c.rjust(w)
                                    for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                   .rstrip())
