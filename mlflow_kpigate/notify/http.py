"""A small JSON POST with bounded retries, shared by the notifiers (stdlib only)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from mlflow_kpigate.core.errors import KpigateError


class NotifyError(KpigateError):
    """An alert could not be delivered."""


def post_json(url: str, body: dict[str, Any], *, attempts: int = 3, timeout_s: float = 5.0,
              backoff_s: float = 0.5) -> int:
    """POST ``body``; retry connection errors, 429 and 5xx; return the HTTP status.

    Raises :class:`NotifyError` (without the URL, which may hold a secret) when every
    attempt failed or the endpoint rejected the request.
    """
    data = json.dumps(body).encode()
    last = ""
    for attempt in range(attempts):
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            if exc.code != 429 and exc.code < 500:
                raise NotifyError(f"the endpoint rejected the alert ({last})") from None
        except OSError as exc:
            last = type(exc).__name__
        if attempt + 1 < attempts:
            time.sleep(backoff_s * (2 ** attempt))
    raise NotifyError(f"alert not delivered after {attempts} attempts ({last})")
