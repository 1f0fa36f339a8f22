"""Registering a rollout with a shared collector (``kpigate collector --shared``).

A shared collector serves every rollout of a namespace, and only rollouts registered with
it: ``PUT {base}/rollouts/NAME`` with the rollout's frozen policy, its model versions and
threshold (the body :func:`registration_body` builds) gives the rollout its own prediction
log and its ``/rollouts/NAME/...`` routes; ``DELETE`` ends it. Both need the collector's
``operator`` token (:class:`~.collector_credentials.CollectorCredentials`), the same one
stage notices carry.

``create`` registers before it applies any Seldon object (so no request logger ever
points at a rollout the collector does not know), and a refused or failed registration
stops it with one line naming the collector's reason. ``delete`` deregisters the rollout
on a best-effort basis: a collector that is down must not keep the objects alive.
"""

from __future__ import annotations

import logging
from typing import Any

from mlflow_kpigate.backends.seldon.collector_credentials import (
    OPERATOR_TOKEN_ENV,
    CollectorCredentials,
)
from mlflow_kpigate.backends.seldon.target import SeldonTarget
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.http import HttpError, RetryingSession, RetryPolicy

__all__ = ["CollectorRegistrationFailed", "deregister_rollout", "register_rollout",
           "registration_body"]

log = logging.getLogger(__name__)

#: PUT and DELETE are idempotent: a few tries ride out a collector restart.
_POLICY = RetryPolicy(attempts=3, backoff_s=0.5)


class CollectorRegistrationFailed(KpigateError):
    """The shared collector did not take (or could not be asked to take) a registration."""


def registration_body(policy_text: str, baseline_version: str, candidate_version: str,
                      threshold: float, stages: str | None = None) -> dict[str, Any]:
    """The ``PUT /rollouts/NAME`` body: the frozen policy text (its stages already the
    rollout's), the versions recorded with each role's predictions (an empty one, for a
    model given by URI, is left out: the collector then records the graph node's name),
    the threshold."""
    versions = {role: str(v) for role, v in (("baseline", baseline_version),
                                             ("candidate", candidate_version)) if v}
    body: dict[str, Any] = {"policy": policy_text, "versions": versions,
                            "threshold": threshold}
    if stages:
        body["stages"] = stages
    return body


def _headers(credentials: CollectorCredentials) -> dict[str, str]:
    token = credentials.operator_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _reason(exc: HttpError) -> str:
    """The collector's own one-line reason (its ``{"error": ...}``), if it gave one."""
    if exc.response is None:
        return ""
    try:
        reason = str(exc.response.json().get("error", ""))
    except (ValueError, AttributeError):
        return ""
    return " ".join(reason.split())[:300]


def register_rollout(target: SeldonTarget, body: dict[str, Any],
                     credentials: CollectorCredentials) -> str:
    """Register ``target``'s rollout with its shared collector; returns the collector's
    outcome (``created``, ``unchanged``, ``replaced``).

    :class:`CollectorRegistrationFailed` (one line) when the collector refuses or cannot
    be reached; ``UsageError`` when the operator token file is unusable.
    """
    url = target.collector_rollout_url
    if not target.shared_collector or url is None:
        raise UsageError("shared_collector: the rollout has no shared collector to "
                         "register with; give -C collector_url and -C shared_collector=true")
    headers = _headers(credentials)
    try:
        with RetryingSession(_POLICY) as http:
            reply = http.call("PUT", url, json_body=body, timeout_s=10, headers=headers)
    except HttpError as exc:
        reason = _reason(exc)
        detail = f"{exc.detail}: {reason}" if reason else exc.detail
        if exc.status in (401, 403):
            fix = (f"give the controller the collector's operator token: {OPERATOR_TOKEN_ENV}"
                   "=PATH of the file holding it")
        elif exc.status is not None and 400 <= exc.status < 500:
            fix = "fix the rollout's settings or policy"
        else:
            fix = "check -C collector_url and that the collector runs with --shared"
        raise CollectorRegistrationFailed(
            f"the shared collector at {target.collector_base_url} did not register rollout "
            f"{target.name} ({detail}); nothing was applied; {fix}") from None
    try:
        return str(reply.json().get("outcome", "registered"))
    except (ValueError, AttributeError):
        return "registered"


def deregister_rollout(target: SeldonTarget, credentials: CollectorCredentials) -> str | None:
    """End ``target``'s rollout on its shared collector, best effort: None when it is done
    (or the collector did not know it), else why not (also logged as a warning)."""
    url = target.collector_rollout_url
    if not target.shared_collector or url is None:
        return None
    try:
        with RetryingSession(_POLICY) as http:
            http.call("DELETE", url, timeout_s=10, headers=_headers(credentials))
    except HttpError as exc:
        if exc.status == 404:
            return None
        reason = _reason(exc)
        problem = f"{exc.detail}: {reason}" if reason else exc.detail
    except UsageError as exc:
        problem = str(exc)
    else:
        return None
    log.warning("the shared collector at %s did not deregister rollout %s (%s); it keeps "
                "serving its routes until DELETE %s succeeds", target.collector_base_url,
                target.name, problem, url)
    return problem
