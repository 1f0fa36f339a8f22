"""A click group whose commands are imported when one is run, not when the group is built.

``kpigate --version`` and ``kpigate --help`` should answer in the time Python starts: the
command modules import the parts (scipy, pandas, MLflow), which take over a second.
:class:`LazyGroup` holds, per command name, where the command object lives
(``"package.module:attribute"``) and the first paragraph of its help; it imports the
module only in :meth:`~LazyGroup.get_command`, which click calls to run a command, to show
its own ``--help`` or to complete its options. The group's ``--help`` listing and shell
completion of command names use the stored help, so they import nothing.
``tests/test_cli_startup.py`` checks that the stored help is the command's own.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click
from click.shell_completion import CompletionItem

from mlflow_kpigate.cli.errors import KpigateGroup


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives (``"module:attribute"``) and its help's first paragraph."""

    target: str
    help: str

    def load(self) -> click.Command:
        """Import the command's module and return the command object."""
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command

    def short_help(self, limit: int) -> str:
        """The help shown in the group's command list, shortened as click does it."""
        return click.Command(None, help=self.help).get_short_help_str(limit)


class LazyGroup(KpigateGroup):
    """A :class:`~.errors.KpigateGroup` that imports each lazy command on first use."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, LazyCommand] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(self.lazy_commands[cmd_name].load(), cmd_name)
        return self.commands.get(cmd_name)

    def _short_help(self, name: str, limit: int) -> str:
        loaded = self.commands.get(name)
        if loaded is not None:
            return loaded.get_short_help_str(limit)
        return self.lazy_commands[name].short_help(limit)

    def _visible(self, ctx: click.Context) -> list[str]:
        return [name for name in self.list_commands(ctx)
                if name not in self.commands or not self.commands[name].hidden]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self._visible(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        with formatter.section("Commands"):
            formatter.write_dl([(name, self._short_help(name, limit)) for name in names])

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        results = [CompletionItem(name, help=self._short_help(name, 45))
                   for name in self._visible(ctx) if name.startswith(incomplete)]
        # The group's own options, as click.Command completes them (not click.Group,
        # which would import every command to list them).
        results.extend(click.Command.shell_complete(self, ctx, incomplete))
        return results
