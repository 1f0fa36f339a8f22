"""MLflow webhook envelopes in, forwarding decisions out (pure; no I/O).

:func:`parse_event` reads the envelope MLflow posts; :func:`route` decides whether an
authentic event becomes a ``repository_dispatch`` and builds its ``client_payload``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_kpigate.webhooks.config import (
    ALIAS_CREATED,
    FORWARDED_EVENTS,
    TAG_SET,
    BridgeConfig,
)
from mlflow_kpigate.webhooks.signature import Rejected

__all__ = ["RegistryEvent", "Route", "parse_event", "pr_number_from", "route"]

logger = logging.getLogger("mlflow_kpigate.webhook_bridge")

SOURCE = "mlflow-webhook"
_PR_TEXT = re.compile(r"#?(\d{1,9})|.*/pull/(\d{1,9})/?")


@dataclass(frozen=True)
class RegistryEvent:
    """The parts of an MLflow webhook envelope the bridge uses."""

    event: str  # "<entity>.<action>", as in MLflow's webhook event names
    model: str | None
    version: str | None = None
    alias: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    tag_key: str | None = None


def _text(data: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise Rejected(400, f"{where}.{key}: missing or not a string; MLflow sends it for "
                            "this event")
    return value


def parse_event(body: bytes) -> RegistryEvent:
    """Read MLflow's envelope ``{"entity", "action", "timestamp", "data": {...}}``.

    Fields a forwarded event needs (``data.name``, ``data.version``, ``data.alias``) must be
    present; other events are parsed leniently because they are only logged. Raises
    :class:`Rejected` (400) with the offending field.
    """
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Rejected(400, "body: not JSON; send MLflow's webhook envelope") from None
    if not isinstance(envelope, dict):
        raise Rejected(400, "body: not a JSON object; send MLflow's webhook envelope")
    entity = _text(envelope, "entity", "body", required=True)
    action = _text(envelope, "action", "body", required=True)
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise Rejected(400, "body.data: missing or not an object")
    event = f"{entity}.{action}"
    if event not in (*FORWARDED_EVENTS, TAG_SET):
        name = data.get("name")
        return RegistryEvent(event, name if isinstance(name, str) else None)
    model = _text(data, "name", "body.data", required=True)
    version = _text(data, "version", "body.data", required=True)
    tags = data.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise Rejected(400, "body.data.tags: not an object of string values")
    return RegistryEvent(
        event, model, version,
        alias=_text(data, "alias", "body.data", required=True) if event == ALIAS_CREATED
        else None,
        tags=dict(tags),
        tag_key=_text(data, "key", "body.data", required=True) if event == TAG_SET else None,
    )


def pr_number_from(value: str | None) -> int | None:
    """A pull-request number from a tag value: ``42``, ``#42`` or ``…/pull/42``; else None."""
    if value is None:
        return None
    match = _PR_TEXT.fullmatch(value.strip())
    if match is None:
        return None
    number = int(match.group(1) or match.group(2))
    return number if number > 0 else None


@dataclass(frozen=True)
class Route:
    """Where one authentic event goes: ``payload`` to dispatch, or None and why not."""

    payload: dict[str, Any] | None
    reason: str


def route(event: RegistryEvent, config: BridgeConfig, delivery_id: str) -> Route:
    """Decide whether ``event`` becomes a dispatch, and build its ``client_payload``."""
    if event.event == TAG_SET:
        return Route(None, f"{TAG_SET} ({event.tag_key}) is never forwarded: kpigate's own "
                           "tags cause these events")
    if event.event not in config.events:
        return Route(None, f"{event.event} is not forwarded")
    if config.models and event.model not in config.models:
        return Route(None, f"model {event.model!r} is not selected (--model)")
    if event.event == ALIAS_CREATED and config.aliases and event.alias not in config.aliases:
        return Route(None, f"alias {event.alias!r} is not selected (--alias)")
    payload: dict[str, Any] = {"model": event.model, "version": event.version}
    if event.alias is not None:
        payload["alias"] = event.alias
    raw_pr = event.tags.get(config.pr_tag)
    pr = pr_number_from(raw_pr)
    if pr is not None:
        payload["pr_number"] = pr
    elif raw_pr is not None:
        logger.warning("delivery %s: tag %s=%r is not a pull-request number; dispatching "
                       "without pr_number", delivery_id, config.pr_tag, raw_pr[:80])
    payload["source"] = SOURCE
    payload["delivery_id"] = delivery_id
    return Route(payload, f"{event.event} {event.model} v{event.version}"
                          + (f" @{event.alias}" if event.alias else ""))
