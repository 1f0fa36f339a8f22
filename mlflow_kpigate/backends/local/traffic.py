"""The embedded router as the controller's TrafficBackend.

The router reads its weights from the committed state itself (it polls the store), so
applying a state is only a nudge to reload now, and the weights are served at once.
"""

from __future__ import annotations

import logging

import requests

from mlflow_kpigate.core.state import Readiness, RolloutState

log = logging.getLogger(__name__)


class LocalRouterTraffic:
    """The embedded router: it follows the committed state; ``apply`` only asks it to now."""

    needs_readiness = False

    def apply(self, state: RolloutState) -> None:
        """Ask the router on ``state.port`` to reload now (it also polls the store)."""
        try:
            requests.post(f"http://127.0.0.1:{state.port}/admin/reload", json={}, timeout=2)
        except requests.RequestException as exc:  # the router polls the store anyway
            log.debug("router reload failed: %s", exc)

    def readiness(self, state: RolloutState) -> Readiness:
        """The embedded router serves a committed state within its poll interval."""
        return Readiness(True, "embedded router")
