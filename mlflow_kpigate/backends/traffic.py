"""What the controller needs from a Model Router: apply a state's weights, report readiness.

The embedded router reads its weights from the committed state itself, so applying them is
only a nudge (:class:`LocalRouterTraffic`); a Kubernetes backend must patch resources and
wait until the new predictors serve before a stage's samples may count.
"""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..rollout.state import RolloutState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    """Whether the traffic a state asks for is being served; ``failed`` means it never will."""

    ready: bool
    reason: str = ""
    failed: bool = False


@runtime_checkable
class TrafficBackend(Protocol):
    """A router the controller drives."""

    #: False when :meth:`apply` takes effect immediately (no readiness wait needed).
    needs_readiness: bool

    def apply(self, state: RolloutState) -> None:
        """Make the router serve ``state.weights``; raise if that could not be done.

        Must be idempotent: it is repeated after crashes and failures.
        """
        ...

    def readiness(self, state: RolloutState) -> Readiness:
        """Whether the weights of ``state`` are being served now."""
        ...


class LocalRouterTraffic:
    """The embedded router: it follows the committed state; ``apply`` only asks it to now."""

    needs_readiness = False

    def apply(self, state: RolloutState) -> None:
        """Ask the router on ``state.port`` to reload now (it also polls the store)."""
        req = urllib.request.Request(f"http://127.0.0.1:{state.port}/admin/reload",
                                     data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=2):
                pass
        except OSError as exc:  # the router polls the store anyway
            log.debug("router reload failed: %s", exc)

    def readiness(self, state: RolloutState) -> Readiness:
        """The embedded router serves a committed state within its poll interval."""
        return Readiness(True, "embedded router")
