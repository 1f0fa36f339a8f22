"""Where a router's processes find each other and their rollout: paths and the state.

A deployment directory holds the rollout store (``state.db``), the frozen policy, the
prediction log (``predictions.db``) and, for the router, ``segments/`` (each worker's
append-only log segments, ingested into ``predictions.db``) and the candidate processes'
Unix sockets. A socket path must fit in 107 bytes, so a deep directory gets its sockets in
a private directory under the system's temporary directory instead (named by a digest of
the deployment directory, mode 0700).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.state import RolloutState

if TYPE_CHECKING:
    from mlflow_kpigate.policy import Policy

__all__ = ["candidate_socket", "load_rollout", "segments_dir"]

_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL


def segments_dir(directory: Path) -> Path:
    """The directory of the workers' prediction log segments."""
    return Path(directory) / "segments"


def candidate_socket(directory: Path, index: int) -> Path:
    """The Unix socket of worker ``index``'s candidate process."""
    name = f"candidate-{index}.sock"
    preferred = Path(directory).resolve() / "run" / name
    if len(os.fsencode(preferred)) <= _SOCKET_PATH_MAX:
        preferred.parent.mkdir(mode=0o700, exist_ok=True)
        return preferred
    digest = hashlib.sha256(os.fsencode(Path(directory).resolve())).hexdigest()[:16]
    private = Path(tempfile.gettempdir()) / f"kpigate-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    if private.stat().st_uid != os.getuid() or private.stat().st_mode & 0o077:
        raise UsageError(f"{private} must be a directory of this user with mode 0700 (it "
                         "holds the candidate processes' sockets); remove it")
    return private / f"{digest}-{name}"


def load_rollout(directory: Path) -> tuple[RolloutStore, RolloutState, Policy]:
    """The rollout store of ``directory``, its saved state and its frozen policy."""
    # Imported here: the router's main process starts its children before it needs the
    # policy model (and numpy under it).
    from mlflow_kpigate.policy import load_policy

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise UsageError(f"deployment directory {directory} does not exist")
    store = RolloutStore(directory)
    state = store.require()
    path = Path(state.policy_file).expanduser()
    if not path.is_absolute() and not path.exists() and (directory / path).exists():
        path = directory / path
    return store, state, load_policy(path)
