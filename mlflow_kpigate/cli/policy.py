"""``kpigate policy validate``: check policy files and summarise what they ask for."""

from __future__ import annotations

import click

from mlflow_kpigate.cli.errors import KpigateGroup, error_lines
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.errors import PolicyError
from mlflow_kpigate.gate.engine import rollback_checks
from mlflow_kpigate.policy import KpiKind, KpiSpec, Policy, Stage, load_policy


@click.group("policy", cls=KpigateGroup)
def policy_group() -> None:
    """Work with rollout policy files (see docs/policy.md)."""


@policy_group.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("-q", "--quiet", is_flag=True, help="Print only the 'FILE: ok' line.")
def validate(files: tuple[str, ...], quiet: bool) -> None:
    """Check rollout policy FILE(s); print a summary, or every problem (exit code 2)."""
    failed: list[PolicyError] = []
    for path in files:
        try:
            loaded = load_policy(path)
        except PolicyError as exc:
            for line in error_lines(exc):
                click.echo(line, err=True)
            failed.append(exc)
            continue
        for line in summary_lines(loaded, path, quiet=quiet):
            click.echo(line)
    if failed:
        if len(files) > 1:
            click.echo(f"{len(failed)} of {len(files)} policy files are invalid", err=True)
        raise click.exceptions.Exit(failed[0].exit_code)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _duration(seconds: float) -> str:
    return format_duration(seconds) if seconds else "0s"


def _stage_line(stage: Stage) -> str:
    label = stage.name if stage.name == stage.describe() else f"{stage.name} ({stage.describe()})"
    if stage.is_final:
        return f"{label}: promotion (not evaluated)"
    ms = stage.min_samples
    parts = [f"min {ms.requests} requests / {ms.labelled} labelled"]
    if stage.min_dwell:
        parts.append(f"dwell {_duration(stage.min_dwell)}")
    if stage.max_duration is None:
        parts.append("no time limit")
    else:
        parts.append(f"max {_duration(stage.max_duration)}, "
                     f"then {stage.on_timeout.value}")
    if stage.promote_margin_scale != 1:
        parts.append(f"promote within {stage.promote_margin_scale:g}x margin")
    return f"{label}: {', '.join(parts)}"


def _kpi_measure(kpi: KpiSpec) -> str:
    if kpi.kind is KpiKind.PROPORTION:
        if kpi.metric == "custom":
            return f"proportion {kpi.numerator}/{kpi.denominator}"
        return f"proportion {kpi.metric}"
    if kpi.kind is KpiKind.MEAN:
        return f"mean of {'log ' if kpi.log else ''}{kpi.source}"
    if kpi.kind is KpiKind.QUANTILE:
        return f"p{(kpi.q or 0) * 100:g} {kpi.source}"
    if kpi.kind is KpiKind.FAIRNESS:
        return f"fairness of {kpi.metric} by {kpi.segment_by}"
    if kpi.kind is KpiKind.BUSINESS:
        return f"business {kpi.numerator}/{kpi.denominator}"
    return kpi.kind.value


def _kpi_line(kpi: KpiSpec, width: int) -> str:
    parts = [_kpi_measure(kpi), f"{kpi.direction.value} is better", kpi.role.value]
    if kpi.margin is not None:
        parts.append(f"margin {kpi.margin}")
    if kpi.detect is not None:
        parts.append(f"detect {kpi.detect}")
    if kpi.limit is not None:
        parts.append(f"limit {kpi.limit:g}")
    if kpi.alpha_weight != 1:
        parts.append(f"alpha weight {kpi.alpha_weight:g}")
    return f"    {kpi.name:<{width}}  {', '.join(parts)}"


def summary_lines(policy: Policy, path: str, *, quiet: bool = False) -> list[str]:
    """The ``kpigate policy validate`` report for a valid policy."""
    head = (f"{path}: ok ({_plural(len(policy.stages), 'stage')}, "
            f"{_plural(len(policy.kpis), 'KPI')})")
    if quiet:
        return [head]
    lines = [head, "  stages: " + " -> ".join(s.describe() for s in policy.stages)]
    lines += [f"    {_stage_line(s)}" for s in policy.stages]
    width = max(len(k.name) for k in policy.kpis)
    lines.append("  kpis:")
    lines += [_kpi_line(k, width) for k in policy.kpis]
    ev = policy.evaluation
    checks = rollback_checks(policy, None)
    lines.append(
        f"  evaluation: every {_duration(ev.interval)}, maturity "
        f"{_duration(ev.maturity)}, alpha_rollback {ev.alpha_rollback:g} split "
        f"{'by alpha_weight ' if any(k.alpha_weight != 1 for k in policy.kpis) else ''}over "
        f"{_plural(checks, 'rollback check')} (more with registry control limits), "
        f"alpha_promote {ev.alpha_promote:g} per KPI"
    )
    if ev.window_share:
        lines.append(f"  recent-window check: {ev.window_share:g} of alpha_rollback on the "
                     "current stage alone")
    bake = policy.bake
    if bake.enabled:
        watched = ", ".join(kpi.name for kpi in policy.baked_kpis)
        lines.append(f"  bake: {_duration(bake.duration)} after promotion, the previous "
                     f"version shadowing; change detector on {watched}; false alarm at "
                     f"most once per {_duration(bake.arl)} on average")
    else:
        lines.append("  bake: none (promoted when the final stage is approved)")
    k = policy.control_limits.k
    lines.append("  control limits: " + (f"k = {k:g}" if k is not None else "off"))
    return lines
