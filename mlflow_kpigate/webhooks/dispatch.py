"""Sending one ``repository_dispatch`` to GitHub: :class:`GitHubDispatcher`.

A dispatch is a GitHub API call, so it is made by :class:`~mlflow_kpigate.github.api.
GitHubClient` (retries, token handling, redaction); this module only words its failures
for the bridge's answer to MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mlflow_kpigate.github.api import GitHubClient, GitHubError
from mlflow_kpigate.webhooks.config import BridgeConfig

__all__ = ["MAX_RETRY_AFTER_S", "USER_AGENT", "DispatchError", "Dispatcher",
           "GitHubDispatcher"]

USER_AGENT = "mlflow-kpigate-webhook-bridge"
#: Longest ``Retry-After`` a dispatch waits for. MLflow waits for the bridge's answer (30 s
#: by default) while the dispatch is retried; a longer wait fails the delivery at once
#: (502), and MLflow's own retry of it comes later.
MAX_RETRY_AFTER_S = 2.0


class DispatchError(Exception):
    """A dispatch that GitHub did not accept; the message holds no token."""


class Dispatcher(Protocol):
    """Sends one ``repository_dispatch`` event."""

    def dispatch(self, event_type: str, client_payload: Mapping[str, Any]) -> None:
        """Send the event or raise :class:`DispatchError`."""
        ...


class GitHubDispatcher:
    """``POST /repos/{owner}/{repo}/dispatches``; retries 5xx, 429 and connection errors.

    Retries back off exponentially (``backoff``, 2×, 4× …). A 4xx other than 429 is not
    retried: a wrong token or repository does not fix itself. Redirects are not followed,
    so the token only ever goes to ``GITHUB_API_URL``.
    """

    def __init__(self, config: BridgeConfig, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._path = config.dispatch_path
        self._client = GitHubClient(
            config.token, config.api_url, attempts=max(1, config.dispatch_attempts),
            backoff_s=config.retry_backoff, timeout_s=config.request_timeout, sleep=sleep,
            max_retry_after_s=MAX_RETRY_AFTER_S, follow_redirects=False,
            user_agent=USER_AGENT)

    def dispatch(self, event_type: str, client_payload: Mapping[str, Any]) -> None:
        """Send the event; raise :class:`DispatchError` once retries are used up."""
        try:
            self._client.request("POST", self._path, {"event_type": event_type,
                                                      "client_payload": dict(client_payload)})
        except GitHubError as exc:
            raise DispatchError(_reason(exc, self._client.attempts)) from None


def _reason(exc: GitHubError, attempts: int) -> str:
    """What the bridge answers MLflow (502) when GitHub did not take the dispatch."""
    status = exc.status
    if status is not None and status < 300:  # accepted, but the answer made no sense
        return str(exc)
    if status is not None and status < 400:
        return (f"GitHub answered HTTP {status}, a redirect, which is not followed so that "
                "the token goes nowhere else; check --repo (renamed or moved?) and "
                "GITHUB_API_URL")
    if exc.rate_limited:
        return (f"GitHub's rate limit for the token is used up ({exc.detail}); the delivery "
                "fails so that MLflow retries it later")
    if status is not None and status != 429 and status < 500:
        return (f"GitHub refused the dispatch (HTTP {status}): check --repo and that the "
                "token may create repository dispatches there (contents: write)")
    last = f"HTTP {status}" if status is not None else exc.detail
    return f"GitHub did not accept the dispatch after {attempts} attempts ({last})"
