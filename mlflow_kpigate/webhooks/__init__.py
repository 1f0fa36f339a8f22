"""MLflow registry webhooks: signature checks and the bridge to GitHub repository_dispatch.

``kpigate webhook-bridge`` (docs/webhook-bridge.md) runs :class:`BridgeServer`. The parts,
each importing only those listed before it: :mod:`.signature` (pure signature and
timestamp checks), :mod:`.config` (:class:`BridgeConfig`, the event names), :mod:`.events`
(parsing and routing, pure), :mod:`.replay` (:class:`ReplayGuard`), :mod:`.dispatch`
(:class:`GitHubDispatcher`, on the GitHub client) and :mod:`.server` (:class:`Bridge` and
its HTTP server).
"""

from mlflow_kpigate.webhooks.config import (
    ALIAS_CREATED,
    FORWARDED_EVENTS,
    TAG_SET,
    VERSION_CREATED,
    BridgeConfig,
)
from mlflow_kpigate.webhooks.dispatch import Dispatcher, DispatchError, GitHubDispatcher
from mlflow_kpigate.webhooks.events import (
    RegistryEvent,
    Route,
    parse_event,
    pr_number_from,
    route,
)
from mlflow_kpigate.webhooks.replay import ReplayGuard
from mlflow_kpigate.webhooks.server import WEBHOOK_PATH, Bridge, BridgeServer, Reply
from mlflow_kpigate.webhooks.signature import (
    Rejected,
    SignedDelivery,
    check_timestamp,
    sign,
    signature_matches,
    verify_delivery,
)

__all__ = [
    "ALIAS_CREATED",
    "FORWARDED_EVENTS",
    "TAG_SET",
    "VERSION_CREATED",
    "WEBHOOK_PATH",
    "Bridge",
    "BridgeConfig",
    "BridgeServer",
    "DispatchError",
    "Dispatcher",
    "GitHubDispatcher",
    "RegistryEvent",
    "Rejected",
    "ReplayGuard",
    "Reply",
    "Route",
    "SignedDelivery",
    "check_timestamp",
    "parse_event",
    "pr_number_from",
    "route",
    "sign",
    "signature_matches",
    "verify_delivery",
]
