"""Reading a rollout from its state store, whatever the backend: follow it, its last decision.

Both deployers keep a rollout's state and audit log behind the same
:class:`~mlflow_kpigate.rollout.ports.StateStore` (SQLite in the rollout's directory,
ConfigMaps in the namespace), so ``kpigate watch``, ``-C wait=true``, ``kpigate status``
and the GitHub Action read both the same way:

* :func:`follow_store` polls a store for new audit records and the state until the caller
  stops, and yields a :class:`Poll` per look;
* :func:`last_decision` is the most recent gate decision saved in the state.

When the store no longer holds the rollout being followed (the embedded backend archived
its directory after a ``delete``; a cluster rollout's ConfigMaps were deleted or taken over
by a new rollout of the same name) the caller's ``relocate`` says where it went, or raises
why it cannot be followed further.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.core.events import Recorded
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.rollout.ports import StateStore

__all__ = ["Poll", "Relocate", "follow_store", "gone", "last_decision"]


@dataclass(frozen=True)
class Poll:
    """One look at a rollout: the audit records since the last look, the state, and the
    local directory they were read from (the embedded backend's rollout directory or its
    archived copy; ``None`` for a store that is not in a directory, e.g. ConfigMaps)."""

    records: tuple[Recorded, ...]
    state: RolloutState
    directory: Path | None = None

    @property
    def ended(self) -> bool:
        """Terminal, with its side effects (tags, alias, report) done."""
        return self.state.phase.terminal and not self.state.effects_pending


#: relocate(last state seen, the read error or None) -> (store now holding the rollout,
#: its directory). Raises when the rollout cannot be followed further.
Relocate = Callable[[RolloutState, BaseException | None], tuple[StateStore, Path | None]]


def gone(what: str) -> Relocate:
    """A ``relocate`` for stores without history: the rollout ``what`` cannot be followed
    once its store no longer holds it (the error names the last state seen)."""
    def relocate(last: RolloutState, error: BaseException | None) -> tuple[StateStore,
                                                                            Path | None]:
        if error is not None:
            raise error
        raise KpigateError(f"{what} was removed or replaced while it was followed; it was "
                           f"last {last.status} ({last.reason})")

    return relocate


def follow_store(store: StateStore, interval_s: float = 1.0, *, relocate: Relocate,
                 directory: Path | None = None,
                 read_errors: tuple[type[BaseException], ...] = (),
                 sleep: Callable[[float], None] = time.sleep) -> Iterator[Poll]:
    """Poll the rollout in ``store`` every ``interval_s`` until the caller stops.

    The first poll is immediate and holds every record so far. The rollout followed is the
    one ``store`` holds now (``UsageError`` from ``store.require()`` if none). When a later
    read finds no state, another rollout (another rollout run id), or raises one of
    ``read_errors``, ``relocate`` is called once with the last state seen and the error;
    it returns the store (and directory) that holds the rollout now, or raises.
    """
    last = store.require()
    run_id = last.rollout_run_id
    seen = 0
    first = True
    relocated = False
    while True:
        if not first:
            sleep(interval_s)
        first = False
        error: BaseException | None = None
        state: RolloutState | None
        try:
            # The state first: the events read after it include the one explaining it
            # (saved in the same write), so a last poll's records are complete.
            state = store.load()
            records = tuple(store.events(seen)) if state is not None else ()
        except read_errors as exc:
            records, state, error = (), None, exc
        if state is None or state.rollout_run_id != run_id:
            if relocated:
                if error is not None:
                    raise error
                raise KpigateError(f"{directory or 'the rollout'}: the archived rollout "
                                   "cannot be read")
            store, directory = relocate(last, error)
            relocated = True
            continue
        if records:
            seen = records[-1].seq
        last = state
        yield Poll(records, state, directory)


def last_decision(store: StateStore) -> Decision | None:
    """The most recent gate decision saved with the rollout's state (None before the first)."""
    state = store.require()
    return Decision.from_dict(state.last_decision) if state.last_decision else None
