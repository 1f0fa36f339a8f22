"""The alert notifiers' one JSON POST, with the retries of :mod:`mlflow_kpigate.core.http`."""

from __future__ import annotations

from typing import Any

from mlflow_kpigate.core.errors import KpigateError
from mlflow_kpigate.core.http import HttpError, RetryingSession, RetryPolicy, tries

#: Longest ``Retry-After`` an alert waits for: the controller waits with it, and a chat
#: or paging service that asks for longer is not coming back within this evaluation.
MAX_RETRY_AFTER_S = 10.0


class NotifyError(KpigateError):
    """An alert could not be delivered."""


def post_json(url: str, body: dict[str, Any], *, attempts: int = 3, timeout_s: float = 5.0,
              backoff_s: float = 0.5) -> int:
    """POST ``body``; retry connection errors, 429 and 5xx; return the HTTP status.

    Repeating an alert is harmless (Slack shows it twice at worst; PagerDuty de-duplicates
    on ``dedup_key``), so the POST is retried even after it may have arrived. Raises
    :class:`NotifyError` (without the URL, which may hold a secret) when every attempt
    failed or the endpoint rejected the request.
    """
    policy = RetryPolicy(attempts=attempts, backoff_s=backoff_s,
                         max_retry_after_s=MAX_RETRY_AFTER_S, retry_unsafe_methods=True)
    with RetryingSession(policy) as http:
        try:
            return http.call("POST", url, json_body=body, timeout_s=timeout_s).status_code
        except HttpError as exc:
            status = exc.status
            if status is not None and status != 429 and status < 500:
                raise NotifyError(f"the endpoint rejected the alert (HTTP {status})") from None
            raise NotifyError(f"alert not delivered{tries(exc.attempts)} "
                              f"({exc.detail})") from None
