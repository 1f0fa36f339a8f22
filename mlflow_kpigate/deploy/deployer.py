"""The Deployer: everything the MLflow target and the CLI do with rollouts, per backend.

A composition root: a deployer picks the concrete parts of its backend (router, metrics
source, state store, processes or cluster objects), wires them to the controller and
implements the operations users run. ``plugin.py`` and ``cli/`` only parse, call a
deployer and print. :func:`~.targets.deployer_for` chooses one from the target URI:

* ``kpigate`` / ``kpigate:/local``: :class:`~.local.LocalDeployer` (this machine);
* ``kpigate:/seldon/NAMESPACE``: :class:`~.seldon.SeldonDeployer` (Kubernetes).

While ``create``/``replace`` wait for a rollout to end (``-C wait=true``), ``progress``
gets its event lines and ``observe`` (if given) each state read, which is what the live
terminal view of ``mlflow deployments create`` draws (:mod:`mlflow_kpigate.console`).

Reading a rollout (``follow``, ``last_decision``) works on its
:class:`~mlflow_kpigate.rollout.ports.StateStore` alike for both (:mod:`.follow`), so
``kpigate watch``/``status`` and the GitHub Action need nothing backend-specific.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.state import RolloutState
from mlflow_kpigate.deploy.follow import Poll
from mlflow_kpigate.policy import Policy
from mlflow_kpigate.rollout.ports import StateStore

Progress = Callable[[str], None]
#: Called with the rollout's state at every look while ``create``/``replace`` wait.
Observe = Callable[[RolloutState], None]


@dataclass(frozen=True)
class Rollout:
    """What readers of one rollout need: its store, its frozen policy, a local directory
    for the report and the registry baseline file (a scratch copy for cluster rollouts)."""

    name: str
    store: StateStore
    policy: Policy | None
    directory: Path


class Deployer(Protocol):
    """Rollout operations of one backend (see the module docstring)."""

    target_uri: str

    def create(self, name: str, model_uri: str, config: Mapping[str, Any] | None = None,
               progress: Progress | None = None, *, observe: Observe | None = None
               ) -> dict[str, Any]:
        """Start a staged rollout of ``model_uri``; the deployment as ``describe`` shows it."""
        ...

    def replace(self, name: str, model_uri: str, config: Mapping[str, Any] | None = None,
                progress: Progress | None = None, *, observe: Observe | None = None
                ) -> dict[str, Any]:
        """A new rollout of ``model_uri`` under ``name`` (``update -m``)."""
        ...

    def steer(self, name: str, action: str, config: Mapping[str, Any] | None = None,
              who: str = "operator") -> dict[str, Any]:
        """promote / rollback / pause / resume the running rollout."""
        ...

    def delete(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        """End the rollout (recorded as aborted if unfinished) and remove what it started."""
        ...

    def describe(self, name: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The deployment as ``get_deployment`` returns it."""
        ...

    def list_all(self, config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every deployment of this target."""
        ...

    def predict(self, name: str, inputs: Any, config: Mapping[str, Any] | None = None
                ) -> Any:
        """Score ``inputs`` through the deployment's router."""
        ...

    def open(self, name: str, config: Mapping[str, Any] | None = None) -> Rollout:
        """The rollout's store, policy and directory, for reading its history."""
        ...

    def last_decision(self, name: str, config: Mapping[str, Any] | None = None
                      ) -> Decision | None:
        """The most recent gate decision of the rollout (None before the first)."""
        ...

    def follow(self, name: str, config: Mapping[str, Any] | None = None,
               interval_s: float = 1.0) -> Iterator[Poll]:
        """Poll the rollout's new audit records and state every ``interval_s`` (the first
        poll at once, with every record so far) until the caller stops; ``UsageError`` at
        the call if there is no such rollout (:mod:`.follow`)."""
        ...
