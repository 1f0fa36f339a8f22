"""Who may post to the collector service: scoped bearer tokens, compared in constant time.

Every ``POST`` endpoint belongs to one scope, and a caller must present a token of that
scope:

* ``ingest``: ``POST /cloudevents``, ``POST /`` and ``POST /cloudevents/<token>``; held
  by Seldon's request logger;
* ``labels``: ``POST /feedback``; held by the label producers;
* ``operator``: ``POST /admin/stage``; held by the rollout controller.

The token travels as ``Authorization: Bearer <token>``. Seldon Core v1's executor cannot
add a header to its logger's requests, so for the ``ingest`` scope only the token may
instead be the last segment of the path, ``/cloudevents/<token>``, which is what the
logger URL kpigate writes into the SeldonDeployment carries (see docs/kubernetes.md).

:class:`CollectorTokens` holds the configured tokens; each entry names the scopes it
opens. Tokens of different entries must differ: one token for several scopes is only
possible by naming those scopes in one entry (``ingest,labels=PATH``), so sharing is
always a decision, never an accident of copying a file. :func:`authorize` compares the
presented token with every configured one with :func:`hmac.compare_digest`, without
stopping at the first match, so the time taken does not say which token came close.

``GET /metrics``, ``/health`` and ``/status`` stay open: Prometheus and the kubelet's
probes carry no credentials, and they only read aggregates.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_kpigate.core.tokens import read_token_file, token_problem

__all__ = [
    "ENDPOINT_SCOPES",
    "REJECT_REASONS",
    "REQUIRED_SCOPES",
    "SCOPES",
    "SHARED_ENDPOINT_SCOPES",
    "CollectorTokens",
    "ScopedToken",
    "Verdict",
    "authorize",
    "bearer_token",
    "load_tokens",
]

SCOPES = ("ingest", "labels", "operator")
#: Without these the collector is no use: no events without ``ingest``, and without
#: ``operator`` every prediction would be counted against stage 0.
REQUIRED_SCOPES = ("ingest", "operator")
#: The endpoint label of a protected route (``POST /`` and the path-token route count as
#: ``/cloudevents``) and the scope it needs.
ENDPOINT_SCOPES = {"/cloudevents": "ingest", "/feedback": "labels", "/admin/stage": "operator"}
#: A shared collector's registrations (``PUT``/``DELETE /rollouts/NAME``, ``GET
#: /rollouts``: :mod:`.service_shared`), kept apart from :data:`ENDPOINT_SCOPES` because a
#: one-deployment collector has no such endpoint and exports no counter for it.
SHARED_ENDPOINT_SCOPES = {"/rollouts": "operator"}
#: Why a request was refused: no token, a token that is nobody's, another scope's token.
REJECT_REASONS = ("missing_token", "invalid_token", "wrong_scope")
_SCOPE_HOLDERS = {"ingest": "Seldon's request logger", "labels": "label producers",
                  "operator": "the rollout controller"}
_REALM = "kpigate-collector"


@dataclass(frozen=True)
class ScopedToken:
    """One configured token and the scopes it opens; ``source`` says where it came from
    (a file path) for messages. The token itself is never shown."""

    scopes: frozenset[str]
    token: str = field(repr=False)
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", frozenset(self.scopes))
        where = self.source or "a token"
        if not self.scopes:
            raise ValueError(f"tokens: {where} opens no scope; name one of {', '.join(SCOPES)}")
        unknown = sorted(self.scopes - set(SCOPES))
        if unknown:
            raise ValueError(f"tokens: unknown scope {unknown[0]!r} for {where}; use "
                             f"{', '.join(SCOPES)}")
        problem = token_problem(self.token) if isinstance(self.token, str) else "is not text"
        if problem is not None:
            raise ValueError(f"tokens: {where} {problem}")


@dataclass(frozen=True)
class CollectorTokens:
    """The tokens the service accepts (validated: see the module docstring)."""

    entries: tuple[ScopedToken, ...] = ()

    def __post_init__(self) -> None:
        entries = tuple(self.entries)
        object.__setattr__(self, "entries", entries)
        for i, a in enumerate(entries):
            for b in entries[i + 1:]:
                if hmac.compare_digest(a.token.encode(), b.token.encode()):
                    scopes = sorted(a.scopes | b.scopes)
                    raise ValueError(
                        f"tokens: {a.source or 'one token'} and {b.source or 'another'} hold "
                        f"the same token; give each scope its own, or open several scopes "
                        f"with one entry on purpose ({','.join(scopes)}=PATH)")

    @classmethod
    def of(cls, tokens: Mapping[str, str]) -> CollectorTokens:
        """One token per scope, e.g. ``{"ingest": ..., "operator": ...}`` (tests, Python)."""
        return cls(tuple(ScopedToken(frozenset({scope}), token, f"the {scope} token")
                         for scope, token in tokens.items()))

    @property
    def scopes(self) -> frozenset[str]:
        """Every scope some token opens."""
        return frozenset().union(*(e.scopes for e in self.entries))

    def missing(self, required: Iterable[str] = REQUIRED_SCOPES) -> list[str]:
        """The ``required`` scopes no token opens."""
        have = self.scopes
        return [s for s in required if s not in have]


def parse_token_option(text: str) -> tuple[frozenset[str], Path]:
    """``SCOPE[,SCOPE...]=PATH`` as its scopes and path (``ValueError`` when malformed)."""
    names, sep, path = text.partition("=")
    scopes = frozenset(s.strip() for s in names.split(",") if s.strip())
    if not sep or not path.strip() or not scopes:
        raise ValueError(f"tokens: {text!r} is not SCOPE=PATH; write e.g. "
                         "ingest=/var/run/secrets/kpigate/ingest")
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ValueError(f"tokens: unknown scope {unknown[0]!r} in {text!r}; use "
                         f"{', '.join(SCOPES)}")
    return scopes, Path(path.strip()).expanduser()


def load_tokens(options: Sequence[str]) -> CollectorTokens:
    """Read every ``SCOPE[,SCOPE]=PATH`` option's file (``ValueError`` naming the first
    problem: a malformed option, an unreadable file, a bad or shared token)."""
    entries = []
    for option in options:
        scopes, path = parse_token_option(option)
        try:
            token = read_token_file(path)
        except ValueError as exc:
            raise ValueError(f"tokens: {exc}") from None
        entries.append(ScopedToken(scopes, token, str(path)))
    return CollectorTokens(tuple(entries))


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: ``status`` 200 (allowed), 401 or 403; for a refusal the
    ``reason`` (one of :data:`REJECT_REASONS`), a one-line ``message`` and the
    ``WWW-Authenticate`` header value."""

    status: int
    reason: str | None = None
    message: str = ""
    challenge: str = ""

    @property
    def allowed(self) -> bool:
        """Whether the request may proceed."""
        return self.status == 200


ALLOWED = Verdict(200)


def _challenge(scope: str, error: str | None = None) -> str:
    parts = [f'realm="{_REALM}"']
    if error:
        parts.append(f'error="{error}"')
    parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def authorize(tokens: CollectorTokens, endpoint: str, presented: str | None,
              method: str = "POST") -> Verdict:
    """Whether ``presented`` (a bearer or path token, None when there was none) opens
    ``endpoint`` (a key of :data:`ENDPOINT_SCOPES` or :data:`SHARED_ENDPOINT_SCOPES`);
    ``method`` only words the messages."""
    scope = ENDPOINT_SCOPES.get(endpoint) or SHARED_ENDPOINT_SCOPES[endpoint]
    holder = _SCOPE_HOLDERS[scope]
    if not presented:
        return Verdict(401, "missing_token",
                       f"{method} {endpoint} needs the {scope} token ({holder}): send "
                       "'Authorization: Bearer <token>'", _challenge(scope))
    given = presented.encode("utf-8", "surrogateescape")
    opened: set[str] = set()
    for entry in tokens.entries:  # every entry, no early exit: see the module docstring
        if hmac.compare_digest(given, entry.token.encode()):
            opened |= entry.scopes
    if scope in opened:
        return ALLOWED
    if opened:
        return Verdict(403, "wrong_scope",
                       f"this token does not open {method} {endpoint}; it needs the {scope} "
                       f"token ({holder})", _challenge(scope, "insufficient_scope"))
    return Verdict(401, "invalid_token",
                   f"the token is not valid for {method} {endpoint}; send the {scope} token "
                   f"({holder})", _challenge(scope, "invalid_token"))


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None for anything else)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
