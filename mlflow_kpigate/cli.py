"""The ``kpigate`` command line.

``main`` is the click group behind the ``kpigate`` console script (and
``python -m mlflow_kpigate.cli``). Commands are grouped by topic; today there is
``kpigate policy validate``, and later commands (``plan``, ``simulate``, …) are added the
same way::

    @main.command()
    @click.argument("policy_file")
    def plan(policy_file: str) -> None:
        policy = load_policy(policy_file)  # a PolicyError becomes exit code 2
        ...

User errors are raised as :class:`~mlflow_kpigate.core.errors.KpigateError` subclasses
anywhere below a command. :class:`KpigateGroup` (the class of ``main`` and of every group
created with ``main.group()``) turns them into a clear message on stderr and the error's
``exit_code``, without a traceback: a :class:`~mlflow_kpigate.core.errors.PolicyError` prints
each problem on its own line as ``FILE: path.in.file: message``. Code that runs outside a
command (a callback, a helper invoked directly) can use the :func:`handle_errors`
decorator for the same behaviour. Click's own usage errors exit with 2 as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from mlflow_kpigate import __version__
from mlflow_kpigate.commands.collector import collector_command
from mlflow_kpigate.commands.github import github_group
from mlflow_kpigate.commands.operate import (
    feedback_command,
    report_command,
    serve_command,
    status_command,
    steer_commands,
    watch_command,
)
from mlflow_kpigate.commands.plan import plan_command
from mlflow_kpigate.commands.render import render_command
from mlflow_kpigate.commands.simulate import simulate_command
from mlflow_kpigate.commands.webhook_bridge import webhook_bridge_command
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.errors import KpigateError, PolicyError
from mlflow_kpigate.gate.engine import rollback_checks
from mlflow_kpigate.policy import KpiKind, KpiSpec, Policy, Stage, load_policy

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------
# Error handling shared by every command
# --------------------------------------------------------------------------------------


def error_lines(exc: KpigateError) -> list[str]:
    """The lines shown to the user for ``exc``: one per policy problem, else the message."""
    if isinstance(exc, PolicyError):
        prefix = f"{exc.source}: " if exc.source else ""
        return [f"{prefix}{problem}" for problem in exc.problems]
    text = str(exc) or type(exc).__name__
    return [f"error: {line}" if i == 0 else line for i, line in enumerate(text.splitlines())]


def fail(exc: KpigateError) -> NoReturn:
    """Print ``exc`` on stderr and leave the command with its exit code."""
    for line in error_lines(exc):
        click.echo(line, err=True)
    raise click.exceptions.Exit(exc.exit_code)


def handle_errors(func: F) -> F:
    """Decorator: a ``KpigateError`` raised by ``func`` becomes a message and its exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KpigateError as exc:
            fail(exc)

    return wrapper  # type: ignore[return-value]


class KpigateGroup(click.Group):
    """A click group that reports ``KpigateError`` from any subcommand without a traceback.

    Subgroups made with ``group.group()`` are of this class too.
    """

    group_class = type  # ``main.group()`` creates another KpigateGroup

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KpigateError as exc:
            fail(exc)


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


@click.group(cls=KpigateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="kpigate")
def main() -> None:
    """Staged rollouts of MLflow model versions, decided by KPI evidence."""


@main.group()
def policy() -> None:
    """Work with rollout policy files (see docs/policy.md)."""


@policy.command("validate")
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


main.add_command(plan_command)
main.add_command(simulate_command)
main.add_command(render_command)
main.add_command(collector_command)
main.add_command(webhook_bridge_command)
main.add_command(github_group)
for _command in (status_command, watch_command, report_command, feedback_command,
                 serve_command, *steer_commands):
    main.add_command(_command)


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


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
    if kpi.limit is not None:
        parts.append(f"limit {kpi.limit:g}")
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
        f"{_duration(ev.maturity)}, alpha_rollback {ev.alpha_rollback:g} split over "
        f"{_plural(checks, 'rollback check')} (more with registry control limits), "
        f"alpha_promote {ev.alpha_promote:g} per KPI"
    )
    k = policy.control_limits.k
    lines.append("  control limits: " + (f"k = {k:g}" if k is not None else "off"))
    return lines


if __name__ == "__main__":
    main(prog_name="kpigate")
