"""Following an embedded rollout until it ends: its new audit records and its state, polled.

``mlflow deployments create -C wait=true`` and ``kpigate watch`` both read a rollout this
way, in the rollout's own directory (the name is a link to it), through the generic
:func:`~mlflow_kpigate.deploy.follow.follow_store`. ``mlflow deployments delete``, or a
new rollout of the name, from another process ends the rollout and then moves its
directory under ``<state_dir>/.history/``; a follower goes after it to the archived copy
of the same rollout (matched by its rollout run id), so it still reads the final
``aborted`` state and exits with its code instead of failing on a directory that is gone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from mlflow_kpigate.backends.local.state_store import RolloutStore
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy import local_processes as procs
from mlflow_kpigate.deploy.follow import Poll, follow_store
from mlflow_kpigate.rollout.ports import StateStore

__all__ = ["Poll", "follow"]


def follow(directory: Path, interval_s: float = 0.5) -> Iterator[Poll]:
    """Poll the rollout in ``directory`` every ``interval_s`` until the caller stops.

    The first poll is immediate and holds every record so far. ``UsageError`` if there is
    no rollout; ``KpigateError`` if it disappears and no archived copy holds it.
    """
    if not (directory / "state.db").is_file():
        raise UsageError(f"no deployment named {directory.name!r} in {directory.parent}")
    # The rollout's own directory, not the name's link: a new rollout of the name moves
    # the link before this one is archived, and this one is what is followed.
    real = directory.resolve()

    def relocate(last: RolloutState, error: BaseException | None
                 ) -> tuple[StateStore, Path | None]:
        # Gone (sqlite cannot open a file in a directory that was moved away)?
        if error is not None and (real / "state.db").is_file():
            raise error
        archived = _archived(directory, last.rollout_run_id)
        return RolloutStore(archived), archived

    return follow_store(RolloutStore(real), interval_s, relocate=relocate, directory=real,
                        read_errors=(sqlite3.OperationalError,))


def _archived(directory: Path, run_id: str | None) -> Path:
    """The copy of rollout ``run_id`` that ``delete`` moved under ``.history/``."""
    for candidate in procs.archives(directory):
        state = RolloutStore(candidate).load() if (candidate / "state.db").is_file() else None
        if state is not None and state.rollout_run_id == run_id:
            return candidate
    raise KpigateError(f"deployment {directory.name!r} was removed while it was followed, "
                       f"and {directory.parent / '.history'} holds no copy of its rollout")
