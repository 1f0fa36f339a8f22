"""Shadow copies: one model scores a copy of a request the other one answered.

In shadow mode the caller gets the baseline's answer at once; :class:`ShadowCopies` has
the candidate score a copy in a background task on a thread pool of its own, with a
timeout (``shadow_timeout_s``) and a cap on copies in flight (``shadow_max_inflight``):
beyond it copies are skipped and counted, never queued behind a slow model. Each copy
is counted by outcome (``ok``, ``error``, ``timeout``, ``skipped``) and its predictions are
logged as shadow rows. While a rollout bakes the roles swap: the candidate answers and
the previous version (the baseline) scores the copy, under the same timeout and cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.model_calls import (
    Attempt,
    RequestInfo,
    call_model,
    prediction_rows,
)
from mlflow_kpigate.backends.local.router_metrics import RouterMetrics
from mlflow_kpigate.core.payloads import ModelOutput, ParsedPayload
from mlflow_kpigate.core.records import Prediction

__all__ = ["ShadowCopies"]


class ShadowCopies:
    """The shadow copies of one app; ``log`` records their predictions."""

    def __init__(self, config: RouterConfig, metrics: RouterMetrics,
                 log: Callable[[Sequence[Prediction]], None]) -> None:
        self.config, self.metrics, self.log = config, metrics, log
        self.executor = ThreadPoolExecutor(max_workers=config.shadow_max_inflight,
                                           thread_name_prefix="kpigate-shadow")
        self.inflight = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def _version(self, role: str) -> str:
        return (self.config.baseline_version if role == "baseline"
                else self.config.candidate_version) or ""

    def start(self, payload: ParsedPayload, info: RequestInfo, role: str = "candidate"
              ) -> None:
        """Have ``role`` score a copy in the background (on the running event loop), or
        skip it."""
        version = self._version(role)
        if self.inflight >= self.config.shadow_max_inflight:
            # A slow model must not build a backlog (memory, threads); the copy is a
            # sample, so skipping it only costs evidence, never a caller's latency.
            self.metrics.shadow.labels(self.config.deployment, version, "skipped").inc()
            return
        self.inflight += 1
        task = asyncio.get_running_loop().create_task(self._score(payload, info, role))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _release(self, _: object) -> None:
        self.inflight -= 1

    async def _score(self, payload: ParsedPayload, info: RequestInfo, role: str) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        future = loop.run_in_executor(self.executor, call_model, self.config, role, payload)
        # The slot frees when the thread does, not at the timeout: a hung candidate keeps
        # its thread busy, and the cap must count it.
        future.add_done_callback(self._release)
        timeout = self.config.shadow_timeout_s
        try:
            attempt = await asyncio.wait_for(asyncio.shield(future), timeout)
            outcome = "error" if attempt.error else "ok"
        except asyncio.TimeoutError:
            n = len(info.ids)
            attempt = Attempt(role, self._version(role), None,
                              f"timeout after {timeout:g} s",
                              max(time.perf_counter() - start, 1e-9),
                              ModelOutput([None] * n, [None] * n, False))
            outcome = "timeout"
        self.metrics.observe(attempt)
        self.metrics.shadow.labels(self.config.deployment, attempt.version, outcome).inc()
        self.log(prediction_rows(attempt, info, shadow=True))

    async def drain(self) -> None:
        """Let in-flight shadow copies finish (each is bounded by the timeout)."""
        tasks = set(self.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.shadow_timeout_s + 1.0)
        self.executor.shutdown(wait=False, cancel_futures=True)
