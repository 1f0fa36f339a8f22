"""Writing a small file so that a concurrent reader sees the old content or the new, never
a truncated one: write a temporary file beside it, then rename over it (atomic on POSIX).

Needed where two processes share a scratch directory, e.g. the operator and a rollout's
worker: the operator refreshes token files and the frozen policy while the worker reads
them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> bool:
    """Replace ``path`` with ``text`` (with permission bits ``mode``); False if it already
    held exactly that text (nothing written)."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
