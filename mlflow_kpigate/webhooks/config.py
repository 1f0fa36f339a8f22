"""What the webhook bridge accepts and where it dispatches: :class:`BridgeConfig`.

Also the names of the MLflow webhook events the bridge knows, since the configuration
chooses among them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.github.api import DEFAULT_API_URL, check_api_url

__all__ = ["ALIAS_CREATED", "FORWARDED_EVENTS", "TAG_SET", "VERSION_CREATED", "BridgeConfig"]

VERSION_CREATED = "model_version.created"
ALIAS_CREATED = "model_version_alias.created"
TAG_SET = "model_version_tag.set"
FORWARDED_EVENTS = frozenset({VERSION_CREATED, ALIAS_CREATED})

_REPO = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}")
_MAX_EVENT_TYPE = 100  # GitHub rejects longer event types


@dataclass(frozen=True)
class BridgeConfig:
    """What the bridge accepts and where it dispatches. Raises UsageError when invalid.

    ``models`` / ``aliases`` empty means every model / every alias. ``aliases`` filters
    alias events only; ``events`` chooses which of the two forwarded event types are on.
    """

    repo: str
    secret: str = field(repr=False)
    token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    event_type: str = "kpigate-rollout"
    models: frozenset[str] = frozenset()
    aliases: frozenset[str] = frozenset()
    events: frozenset[str] = FORWARDED_EVENTS
    pr_tag: str = "github.pr"
    max_age: float = 300.0
    max_body_bytes: int = 1 << 20
    replay_capacity: int = 100_000
    dispatch_attempts: int = 4
    retry_backoff: float = 0.5
    request_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not _REPO.fullmatch(self.repo):
            raise UsageError(f"--repo: {self.repo!r} is not a repository; write OWNER/NAME, "
                             "e.g. acme/fraud-models")
        if not self.secret:
            raise UsageError("--secret-env: the shared secret is empty; set the variable to "
                             "the secret the MLflow webhook was created with")
        if not self.token:
            raise UsageError("GITHUB_TOKEN: not set; export a token that may create "
                             f"repository dispatches on {self.repo} (contents: write)")
        check_api_url(self.api_url)
        if not self.event_type or len(self.event_type) > _MAX_EVENT_TYPE:
            raise UsageError(f"--event-type: must be 1 to {_MAX_EVENT_TYPE} characters")
        unknown = sorted(self.events - FORWARDED_EVENTS)
        if unknown or not self.events:
            raise UsageError(f"--event: {', '.join(unknown) or 'none given'}; choose from "
                             f"{', '.join(sorted(FORWARDED_EVENTS))}")
        if not self.max_age > 0:
            raise UsageError("--max-age: must be positive, e.g. 300s")
        if not self.pr_tag:
            raise UsageError("--pr-tag: must not be empty (default github.pr)")

    @property
    def dispatch_path(self) -> str:
        """``/repos/{owner}/{repo}/dispatches``, under ``api_url`` (a GHES prefix is kept)."""
        return f"/repos/{self.repo}/dispatches"
