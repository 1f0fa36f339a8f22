"""Showing the live view on a terminal: a ``rich`` ``Live`` that redraws in place.

:class:`LiveScreen` is a context manager around one ``rich.live.Live``: :meth:`~LiveScreen.
show` redraws the view of a state (:func:`~.view.rollout_view`), :meth:`~LiveScreen.say`
prints an event line above it (the lines a command prints without a terminal), and
leaving the ``with`` block, however it is left (an outcome's exit, a stopped wait, an
error, Ctrl-C), stops the ``Live`` and leaves its last view on the screen, so what the
command prints next follows it. It redraws only when told (no refresh thread): between
two looks at the rollout nothing changes but the dwell clock, which the next look shows.
While it runs, whatever else writes to stdout or stderr is printed above the view too,
so a stray log line does not tear it.

:func:`live_wanted` says whether a stream is a terminal that can redraw in place; when it
is not (CI logs, Kubernetes Jobs, pipes, tests capturing output), the commands do not use
a screen at all and print exactly the plain lines they always printed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.text import Text

from mlflow_kpigate.console.view import rollout_view
from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.policy import Policy

__all__ = ["LiveScreen", "live_wanted"]

#: TERM values of terminals that cannot move the cursor (the view would repeat itself).
_DUMB = ("dumb", "unknown")


def live_wanted(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal the live view can redraw in place."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False
    return tty and os.environ.get("TERM", "") not in _DUMB


#: Columns the view leaves free at the right: the ``^C`` a terminal echoes on Ctrl-C.
_ECHO_COLUMNS = 2


class _Inset:
    """A renderable drawn :data:`_ECHO_COLUMNS` narrower than the terminal. The terminal
    echoes ``^C`` after the view's last line when Ctrl-C is pressed; were that line too
    long for it, the echo would wrap to a new line, the last redraw would start a line too
    low, and a stray copy of the view's first line would stay above it."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(options.max_width - _ECHO_COLUMNS, 1)
        yield from console.render(self.renderable, options.update_width(width))


class LiveScreen:
    """The live view of one rollout on ``stream`` (see the module docstring).

    ``policy`` is called once, at the first :meth:`show`, for the rollout's frozen policy
    (the stage ladder and the KPIs' units); if it raises a ``KpigateError`` the view goes
    without it. ``console`` replaces the terminal console (tests pass a recording one).
    """

    def __init__(self, stream: TextIO, policy: Callable[[], Policy | None], *,
                 clock: Callable[[], float] = time.time, console: Console | None = None
                 ) -> None:
        self.console = console or Console(file=stream)
        self._policy_source = policy
        self._policy: Policy | None = None
        self._policy_read = False
        self._clock = clock
        self._live: Live | None = None
        self.last: RolloutState | None = None

    def __enter__(self) -> LiveScreen:
        self._live = Live(console=self.console, auto_refresh=False, transient=False,
                          redirect_stdout=True, redirect_stderr=True,
                          vertical_overflow="visible")
        self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def policy(self) -> Policy | None:
        """The rollout's policy, read once (None if it cannot be read)."""
        if not self._policy_read:
            self._policy_read = True
            try:
                self._policy = self._policy_source()
            except KpigateError:
                self._policy = None
        return self._policy

    def show(self, state: RolloutState) -> None:
        """Redraw the view of ``state`` now."""
        self.last = state
        if self._live is not None:
            self._live.update(_Inset(rollout_view(state, self.policy(), self._clock())),
                              refresh=True)

    def say(self, line: str) -> None:
        """Print ``line`` above the view (as text, never as markup)."""
        self.console.print(Text(line), soft_wrap=True)
