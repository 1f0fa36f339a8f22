"""What ``/proc`` says about a deployment's processes (Linux): who they are, their state,
their descendants, whether they listen on a port; and killing a process tree.

The supervisor uses these to recognise the processes a dead predecessor left running (a
process is one of a deployment's only if its command line runs the expected module on
that deployment's directory: a pid alone may have been reused) and to kill a hung router
with everything it started. Where ``/proc`` is missing, every question answers "no".
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

__all__ = [
    "cmdline",
    "descendants",
    "gone",
    "kill_tree",
    "listens",
    "parent",
    "processes_running",
    "runs",
    "stopped",
]

_PROC = Path("/proc")


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` (empty if it is gone or unreadable)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(part) for part in raw.split(b"\0") if part]


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first)."""
    try:
        return (_PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return []


def parent(pid: int) -> int | None:
    """The parent process id of ``pid`` (None if it is gone)."""
    fields = _stat(pid)
    return int(fields[1]) if len(fields) > 1 else None


def stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped by a signal (SIGSTOP, SIGTSTP...)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] == "T"


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as exited)."""
    fields = _stat(pid)
    return not fields or fields[0] in ("Z", "X")


def _same_dir(pid: int, arg: str, directory: Path) -> bool:
    path = Path(arg)
    if not path.is_absolute():  # relative to that process's working directory
        with contextlib.suppress(OSError):
            path = Path(os.readlink(_PROC / str(pid) / "cwd")) / path
    try:
        return path.resolve() == directory.resolve()
    except OSError:
        return False


def runs(pid: int, module: str, directory: Path) -> bool:
    """Whether ``pid`` is ``python -m MODULE`` started on ``directory``."""
    args = cmdline(pid)
    if "-m" not in args:
        return False
    rest = args[args.index("-m") + 1:]
    return bool(rest) and rest[0] == module and any(_same_dir(pid, a, directory)
                                                    for a in rest[1:])


def processes_running(module: str, directory: Path) -> list[int]:
    """The live processes that run ``module`` on ``directory``."""
    found = []
    for entry in _iter_pids():
        if not gone(entry) and runs(entry, module, directory):
            found.append(entry)
    return sorted(found)


def _iter_pids() -> list[int]:
    try:
        return [int(e.name) for e in _PROC.iterdir() if e.name.isdigit()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first)."""
    children: dict[int, list[int]] = {}
    for entry in _iter_pids():
        ppid = parent(entry)
        if ppid is not None:
            children.setdefault(ppid, []).append(entry)
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid`` and to every process below it (a stopped one dies of
    SIGKILL too). The tree is read first: once ``pid`` dies its children move away."""
    below = descendants(pid)
    for target in [pid, *below]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" \
                    and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


def listens(pids: list[int], port: int) -> bool:
    """Whether one of ``pids`` holds a socket listening on ``port``."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    for pid in pids:
        if any(link.startswith("socket:[") and link[8:-1] in inodes
               for link in _fd_links(pid)):
            return True
    return False


def _fd_links(pid: int) -> list[str]:
    fd_dir = _PROC / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return []
    links = []
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            links.append(os.readlink(fd_dir / fd))
    return links
