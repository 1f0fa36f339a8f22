"""Sticky, monotone weighted traffic split.

A routing key (a customer id, a session…) is hashed to a point ``u`` in ``[0, 1)``, and
the request goes to the candidate iff ``u < candidate_percent / 100``. The point of a key
never moves, so a key on the candidate at 5% is still on it at 25% (the candidate's set of
keys only grows as its weight rises), and a user never flips between models from one
request to the next. The hash is salted per rollout (deployment and candidate version),
so each rollout samples a fresh set of users instead of always the same 5%.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlflow_kpigate.core.state import Weights

__all__ = [
    "DEFAULT_ROUTING_HEADER",
    "CachedWeights",
    "RoutingKey",
    "choose_role",
    "unit_interval",
]

logger = logging.getLogger(__name__)

#: The header read for the routing key when none is configured.
DEFAULT_ROUTING_HEADER = "X-Kpigate-Routing-Key"
_SOURCES = ("header", "column")


@dataclass(frozen=True)
class RoutingKey:
    """Where the routing key comes from: a request header or an input column."""

    source: str = "header"
    name: str = DEFAULT_ROUTING_HEADER

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ValueError(f"routing key source must be 'header' or 'column', got "
                             f"{self.source!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("routing key name must be a non-empty string")

    @classmethod
    def parse(cls, text: str | None) -> RoutingKey:
        """``"header:X-User"`` or ``"column:customer_id"``; ``None``/empty → the default
        header. ``ValueError`` with the expected form otherwise."""
        if text is None or not str(text).strip():
            return cls()
        source, sep, name = str(text).strip().partition(":")
        if not sep or source.strip().lower() not in _SOURCES or not name.strip():
            raise ValueError(
                f"routing_key must be 'header:NAME' or 'column:NAME' "
                f"(e.g. column:customer_id), got {text!r}"
            )
        return cls(source.strip().lower(), name.strip())

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


def unit_interval(key: str, salt: str = "") -> float:
    """The key's fixed point in ``[0, 1)``: 64 bits of BLAKE2b over ``salt`` and key."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=_salt_key(salt)).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@functools.lru_cache(maxsize=64)
def _salt_key(salt: str) -> bytes:
    # BLAKE2b keys are at most 64 bytes: a digest of the salt fits whatever its length.
    return hashlib.blake2b(salt.encode("utf-8")).digest() if salt else b""


def choose_role(u: float, weights: Weights) -> str:
    """``"candidate"`` iff the candidate takes live traffic and ``u`` falls in its share."""
    if not weights.candidate_attached or weights.shadow:
        return "baseline"
    return "candidate" if u < weights.candidate_percent / 100.0 else "baseline"


class CachedWeights:
    """``load()`` (e.g. read from the RolloutStore), cached for ``ttl_s`` seconds.

    Callable as the router's weights source; :meth:`refresh` re-reads at once. A failing
    read keeps the last known weights (which the controller had approved) and logs a
    warning; only the very first read may raise.
    """

    def __init__(self, load: Callable[[], tuple[Weights, int]], ttl_s: float = 0.5) -> None:
        self._load = load
        self._ttl_s = float(ttl_s)
        self._lock = threading.Lock()
        self._value: tuple[Weights, int] | None = None
        self._read_at = 0.0
        #: Why the last read failed (``None`` after a good one): shown by ``/health``.
        self.error: str | None = None

    def refresh(self) -> tuple[Weights, int]:
        """Read now (``load()``), falling back to the cached value if that fails."""
        with self._lock:
            return self._read()

    def _read(self) -> tuple[Weights, int]:
        try:
            self._value = self._load()
            self.error = None
        except Exception as exc:
            if self._value is None:
                raise
            self.error = f"{type(exc).__name__}: {exc}"
            logger.warning("could not re-read the traffic weights; keeping the last ones",
                           exc_info=True)
        self._read_at = time.monotonic()
        return self._value

    def _fresh(self) -> tuple[Weights, int] | None:
        value = self._value
        if value is None or time.monotonic() - self._read_at >= self._ttl_s:
            return None
        return value

    def __call__(self) -> tuple[Weights, int]:
        value = self._fresh()
        if value is not None:
            return value
        with self._lock:
            # Checked again under the lock: the threads that queued behind the one that
            # just read must use its value, not read again (one read per TTL).
            value = self._fresh()
            return value if value is not None else self._read()
