"""MLflow registry webhooks: signature checks and the bridge to GitHub repository_dispatch.

``kpigate webhook-bridge`` (docs/webhook-bridge.md) runs :class:`BridgeServer`; the
signature helpers in :mod:`.signature` are pure and usable on their own.
"""

from mlflow_kpigate.webhooks.bridge import (
    ALIAS_CREATED,
    FORWARDED_EVENTS,
    TAG_SET,
    VERSION_CREATED,
    WEBHOOK_PATH,
    Bridge,
    BridgeConfig,
    BridgeServer,
    Dispatcher,
    DispatchError,
    GitHubDispatcher,
    RegistryEvent,
    ReplayGuard,
    Reply,
    Route,
    parse_event,
    pr_number_from,
    route,
)
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
