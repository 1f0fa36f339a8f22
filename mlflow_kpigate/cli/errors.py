"""How every ``kpigate`` command reports a user error: a message and the error's exit code.

User errors are raised as :class:`~mlflow_kpigate.core.errors.KpigateError` subclasses
anywhere below a command. :class:`KpigateGroup` (the class of ``main`` and of every group
created with ``main.group()``) turns them into a clear message on stderr and the error's
``exit_code``, without a traceback: a :class:`~mlflow_kpigate.core.errors.PolicyError`
prints each problem on its own line as ``FILE: path.in.file: message``. Code that runs
outside a command (a callback, a helper invoked directly) can use the
:func:`handle_errors` decorator for the same behaviour. Click's own usage errors exit
with 2 as well.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

import click

from mlflow_kpigate.core.errors import KpigateError, PolicyError

F = TypeVar("F", bound=Callable[..., Any])

#: How every ``kpigate`` command starts an error line: as click (usage errors) and the
#: ``mlflow`` CLI do, so a script or a reader sees one style whichever command failed.
ERROR_PREFIX = "Error: "


def error_line(text: str) -> str:
    """``text`` as an error line: ``Error: text``."""
    return f"{ERROR_PREFIX}{text}"


def error_lines(exc: KpigateError) -> list[str]:
    """The lines shown to the user for ``exc``: one per policy problem, else the message."""
    if isinstance(exc, PolicyError):
        prefix = f"{exc.source}: " if exc.source else ""
        return [f"{prefix}{problem}" for problem in exc.problems]
    text = str(exc) or type(exc).__name__
    return [error_line(line) if i == 0 else line for i, line in enumerate(text.splitlines())]


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

    return cast(F, wrapper)


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
