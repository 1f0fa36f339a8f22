"""Tie a child process's life to its parent's (for the router's worker processes).

:func:`tie_to_parent` asks Linux to send the calling process SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), so a worker never outlives a router that was SIGKILLed
(nothing else would stop it: it would keep the socket and the model's memory). Then it
checks that the parent is still the expected one, closing the window in which the parent
died before the request was made (the child was already re-parented then, and the signal
will never come): in that case the process exits at once.

Caveat (Linux semantics): the signal follows the parent *thread* that forked the child,
not the parent process. Start such children from a thread that lives as long as the
process, e.g. the main thread, never from a short-lived helper thread.

On other systems there is no such request; the check of the parent still runs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

__all__ = ["EXIT_ORPHANED", "tie_to_parent"]

logger = logging.getLogger(__name__)

#: Exit code of a process whose parent was already gone when it tied itself to it.
EXIT_ORPHANED = 3
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _request_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(err))
            return False
    except (OSError, AttributeError) as exc:  # no libc or no prctl in it
        logger.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
        return False
    return True


def tie_to_parent(parent_pid: int | None = None, sig: int = signal.SIGTERM) -> bool:
    """Have ``sig`` sent to this process when its parent dies; exit at once
    (:data:`EXIT_ORPHANED`) if the parent is not ``parent_pid`` any more (or, without
    ``parent_pid``, changed while the request was made). Returns whether the kernel
    took the request (False off Linux)."""
    original = os.getppid()
    tied = _request_death_signal(sig)
    current = os.getppid()
    expected = original if parent_pid is None else parent_pid
    if current != expected or current != original:
        # The parent died before the request took effect: no signal will ever come.
        print(f"parent process {expected} is gone (parent is now {current}); exiting",
              file=sys.stderr, flush=True)
        os._exit(EXIT_ORPHANED)
    return tied
