"""Replay protection for the webhook bridge: :class:`ReplayGuard`."""

from __future__ import annotations

import heapq
import threading

from mlflow_kpigate.webhooks.signature import Rejected

__all__ = ["ReplayGuard"]


class ReplayGuard:
    """Delivery ids seen within the freshness window, in bounded memory (thread-safe).

    An id is remembered until its delivery's timestamp plus ``window``: after that the
    timestamp check rejects a replay anyway. When ``capacity`` ids are remembered, new
    deliveries are refused (503, so MLflow retries later) rather than forgetting an id
    early, which would let a replay through.
    """

    def __init__(self, window: float, capacity: int) -> None:
        self._window = window
        self._capacity = capacity
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            expiry, delivery_id = heapq.heappop(self._heap)
            if self._expiry.get(delivery_id) == expiry:
                del self._expiry[delivery_id]
        if len(self._heap) > 2 * self._capacity:  # entries left behind by release()
            self._heap = [(e, d) for d, e in self._expiry.items()]
            heapq.heapify(self._heap)

    def claim(self, delivery_id: str, timestamp: float, now: float) -> None:
        """Remember ``delivery_id``; raise :class:`Rejected` if it was seen or memory is full."""
        with self._lock:
            self._prune(now)
            if delivery_id in self._expiry:
                raise Rejected(401, f"X-MLflow-Delivery-Id: {delivery_id[:64]} was already "
                                    "received; replayed deliveries are refused")
            if len(self._expiry) >= self._capacity:
                raise Rejected(503, "too many deliveries within the replay window; retry "
                                    "later or shorten --max-age")
            expiry = timestamp + self._window
            self._expiry[delivery_id] = expiry
            heapq.heappush(self._heap, (expiry, delivery_id))

    def release(self, delivery_id: str) -> None:
        """Forget ``delivery_id`` (its dispatch failed; MLflow's retry must be accepted)."""
        with self._lock:
            self._expiry.pop(delivery_id, None)
