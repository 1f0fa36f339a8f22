"""How the router reaches a model off the caller's path: the :class:`Scorer` protocol.

The router awaits a :class:`Scorer` for the candidate (live or shadow) and, while a rollout
bakes, for the baseline's shadow copy. A scorer never raises: every failure (the model
raised, it took longer than the timeout, too many calls are in flight, its process is
gone) comes back as an :class:`~.model_calls.Attempt` with ``error`` set, which the router
logs as that model's error, so the gate sees it.

:class:`ThreadScorer` calls a model loaded in this process on a bounded thread pool of its
own (the in-memory implementation, used for the baseline's copies while baking and by
tests); :class:`~.candidate_client.CandidateClient` reaches the candidate's own process.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.model_calls import Attempt, call_model, failed_attempt
from mlflow_kpigate.core.payloads import ParsedPayload

__all__ = ["Scorer", "ThreadScorer"]


class Scorer(Protocol):
    """One model reached asynchronously, with a timeout and a cap on calls in flight."""

    @property
    def inflight(self) -> int:
        """Calls started and not yet finished (a timed-out call still holds its slot)."""
        ...

    @property
    def ready(self) -> bool:
        """Whether the model takes traffic (a model still starting up gets none)."""
        ...

    async def start(self) -> None:
        """Begin what runs in the background (called once the event loop runs)."""
        ...

    async def score(self, payload: ParsedPayload, body: bytes, content_type: str | None,
                    timeout_s: float) -> Attempt:
        """The model's answer to one request (parsed, and as the raw body) within
        ``timeout_s``; never raises."""
        ...

    async def close(self) -> None:
        """Release what the scorer holds (threads, connections)."""
        ...


class ThreadScorer:
    """A model of this process on ``max_inflight`` threads of its own.

    The slot of a call that timed out is freed when its thread returns, not at the
    timeout: a hung model keeps its thread busy and the cap must count it, so a model that
    hangs on every call ends up refusing calls at once instead of piling up threads.
    """

    def __init__(self, config: RouterConfig, role: str, *, max_inflight: int) -> None:
        self.config, self.role = config, role
        self.max_inflight = int(max_inflight)
        self.version = (config.baseline_version if role == "baseline"
                        else config.candidate_version) or ""
        self._executor = ThreadPoolExecutor(max_workers=self.max_inflight,
                                            thread_name_prefix=f"kpigate-{role}")
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def ready(self) -> bool:
        return True  # loaded with the router

    async def start(self) -> None:
        return None

    def _release(self, _: object) -> None:
        self._inflight -= 1

    async def score(self, payload: ParsedPayload, body: bytes, content_type: str | None,
                    timeout_s: float) -> Attempt:
        n = len(payload.frame)
        start = time.perf_counter()
        if self._inflight >= self.max_inflight:
            return failed_attempt(self.role, self.version, n, start,
                                  f"{self.role} busy: {self._inflight} requests in flight",
                                  refused=True)
        self._inflight += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, call_model, self.config, self.role,
                                      payload)
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except asyncio.TimeoutError:
            return failed_attempt(self.role, self.version, n, start,
                                  f"timeout after {timeout_s:g} s", timed_out=True)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
