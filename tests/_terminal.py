"""A command on a real terminal, for tests of what it draws there: a tmux server of its own.

:class:`Terminal` starts one tmux server (its own socket under the test's temporary
directory, no user configuration) with one window of a fixed size running the command,
then ``EXIT=<code>``; :meth:`Terminal.screen` is what the terminal shows (with the lines
scrolled above it), :meth:`Terminal.interrupt` types Ctrl-C. Leaving the ``with`` block
stops the server and the command by their process ids.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import signal
import subprocess
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from processes import wait_for

_COUNT = itertools.count()
_GO = "kpigate-go"
#: Ceiling for a wedged command, not a performance threshold.
LIMIT_S = 120.0


class Terminal:
    """``argv`` in a ``width`` x ``height`` terminal (tmux), with ``env``."""

    def __init__(self, tmp: Path, argv: list[str], env: dict[str, str], *,
                 width: int = 100, height: int = 60) -> None:
        # A socket per terminal: a server being stopped keeps its socket a moment.
        self.socket = str(tmp / f"tmux-{next(_COUNT)}.sock")
        self.size = (width, height)
        # The command waits until the window has its size: a detached tmux may open it at
        # its default 80x24 first, and a command reading the size then draws for that.
        command = (f"tmux -S {shlex.quote(self.socket)} wait-for {_GO}; {shlex.join(argv)}; "
                   "echo EXIT=$?; exec sleep 600")
        self._start = ["new-session", "-d", "-x", str(width), "-y", str(height), command]
        self.env = {k: v for k, v in env.items() if not k.startswith("TMUX")}
        self.pids: list[int] = []

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, "-f", os.devnull, *args],
                              capture_output=True, text=True, check=True, env=self.env,
                              timeout=30).stdout

    def __enter__(self) -> Terminal:
        self._tmux(*self._start)
        self.pids = [int(self._tmux("display-message", "-p", "#{pid}").strip()),
                     int(self._tmux("display-message", "-p", "#{pane_pid}").strip())]
        # [tmux server, the pane's shell]
        width, height = self.size
        self._tmux("resize-window", "-x", str(width), "-y", str(height))
        shown = self._tmux("display-message", "-p", "#{pane_width}x#{pane_height}").strip()
        assert shown == f"{width}x{height}", f"tmux made the terminal {shown}"
        self._tmux("wait-for", "-S", _GO)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        pane = self.pids[1]
        # The pane's shell leads its own process group (the command, or the sleep after
        # it), which is still alive: stop it by its id, then the server by its socket.
        with suppress(ProcessLookupError):
            os.killpg(pane, signal.SIGKILL)
        # tmux ends its server once its last session is gone; kill-server if it has not.
        with suppress(subprocess.CalledProcessError):
            self._tmux("kill-server")

    def screen(self) -> str:
        """The terminal's text: the lines scrolled above it, then the visible ones."""
        return self._tmux("capture-pane", "-p", "-S", "-500")

    def interrupt(self) -> None:
        """Type Ctrl-C (the terminal sends SIGINT to the command)."""
        self._tmux("send-keys", "C-c")

    def wait_for(self, text: str) -> str:
        """The screen once it shows ``text``."""
        def shown() -> str:
            screen = self.screen()
            return screen if text in screen else ""

        return str(wait_for(shown, repr(text), LIMIT_S))

    def exit_code(self) -> int:
        """The command's exit code, once it has ended."""
        match = re.search(r"^EXIT=(\d+)$", self.wait_for("EXIT="), re.MULTILINE)
        assert match is not None
        return int(match.group(1))
