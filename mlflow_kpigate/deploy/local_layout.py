"""Where an embedded deployment lives on disk, and who may change it: the per-name lock,
the rollout directories and the link that names the live one.

Layout of the state directory::

    <name>                  symlink to .rollouts/<name>-<stamp>-<hex> (the live rollout)
    .rollouts/<name>-…/     one directory per rollout (state.db, policy, logs, …)
    .history/<name>-…/      rollouts that ended (deleted, replaced, superseded)
    .locks/<name>.lock      the lock that serialises create / update / delete of <name>

In a rollout's directory, ``metrics.json`` holds the address its controller serves
``/metrics`` on while it does (:func:`metrics_endpoint`).

Every rollout gets a directory of its own, and its processes are started with that
directory's real path, so a new rollout of the same name is prepared and started beside
the one serving, and the name is switched to it with one atomic ``rename`` of the link:
the old processes never see the new rollout's files, and stopping them touches only their
own directory (their ``pids.json``). A deployment created before this layout is a plain
directory ``<name>``; it is still read, stopped and archived as before (see
:mod:`.local`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from mlflow_kpigate.core.errors import KpigateError, UsageError

ROLLOUTS = ".rollouts"
HISTORY = ".history"
LOCKS = ".locks"
#: where a rollout's controller writes the address of its ``/metrics`` (:mod:`.local_metrics`)
METRICS_FILE = "metrics.json"
#: How long a create / update / delete waits for another one of the same name.
LOCK_WAIT_S = float(os.environ.get("KPIGATE_LOCK_TIMEOUT", "60"))
_LOCK_POLL_S = 0.1


def _private_dir(path: Path) -> Path:
    """``path`` as a directory (created 0700 if it is missing)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"state directory {path}: cannot create it ({exc.strerror}); give "
                         "-C state_dir (or KPIGATE_STATE_DIR) a directory you can write"
                         ) from None
    return path


@contextlib.contextmanager
def name_lock(base: Path, name: str, wait_s: float | None = None) -> Iterator[None]:
    """Hold the lock of deployment ``name`` (waits up to ``wait_s``, then a one-line error).

    An ``fcntl.flock`` on ``<base>/.locks/<name>.lock`` (mode 0600): released by the
    kernel when the holder exits, however it exits, so a killed command never leaves the
    name locked.
    """
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    path = _private_dir(base / LOCKS) / f"{name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise UsageError(f"state directory {base}: cannot write {path} ({exc.strerror})"
                         ) from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise KpigateError(
                        f"deployment {name!r} is being created, updated or deleted by "
                        f"another command (waited {wait_s:.0f}s for {path}); try again "
                        "once it has finished") from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def new_rollout_dir(base: Path, name: str) -> Path:
    """A fresh, private directory for a new rollout of ``name`` (not yet live)."""
    parent = _private_dir(base / ROLLOUTS)
    path = parent / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    try:
        path.mkdir(mode=0o700)
    except OSError as exc:
        raise UsageError(f"state directory {base}: cannot create {path} ({exc.strerror})"
                         ) from None
    return path


def live_dir(link: Path) -> Path | None:
    """The real directory the deployment ``link`` names (None if there is none)."""
    if link.is_symlink():
        target = link.resolve()
        return target if target.is_dir() else None
    return link if link.is_dir() else None


def is_legacy(link: Path) -> bool:
    """Whether ``link`` is a deployment directory of the old layout (not a link)."""
    return link.is_dir() and not link.is_symlink()


def point(link: Path, target: Path) -> None:
    """Make ``link`` name ``target`` in one atomic step (``rename`` over the old link)."""
    if is_legacy(link):
        raise KpigateError(f"{link} is a directory; archive it before pointing the name "
                           "at a new rollout")
    tmp = link.parent / f".{link.name}.link-{secrets.token_hex(4)}"
    tmp.symlink_to(os.path.relpath(target, link.parent))
    try:
        tmp.replace(link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def archive_dir(real: Path, base: Path, name: str) -> Path:
    """Move the rollout directory ``real`` of ``name`` under ``.history/``."""
    history = _private_dir(base / HISTORY)
    stem = real.name if real.name != name else f"{name}-{time.strftime('%Y%m%dT%H%M%S')}"
    target = history / stem
    while target.exists():
        target = history / f"{stem}-{secrets.token_hex(3)}"
    shutil.move(str(real), target)
    return target


def unlink_if_points_to(link: Path, real: Path) -> None:
    """Remove the name ``link`` if it still names ``real`` (never another rollout)."""
    if link.is_symlink() and link.resolve() == real.resolve():
        link.unlink()


def metrics_endpoint(directory: Path) -> str | None:
    """The ``/metrics`` URL the rollout's controller serves on (None while it serves none)."""
    try:
        served = json.loads((directory / METRICS_FILE).read_text())
        host = str(served["host"])
        return f"http://{f'[{host}]' if ':' in host else host}:{int(served['port'])}/metrics"
    except (OSError, ValueError, KeyError, TypeError):
        return None
