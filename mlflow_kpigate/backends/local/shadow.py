"""Shadow copies: one model scores a copy of a request the other one answered.

In shadow mode the caller gets the baseline's answer at once; :class:`ShadowCopies` has
the candidate score a copy in a background task through its :class:`~.scorers.Scorer`,
within ``shadow_timeout_s``. The scorer caps the calls in flight: a copy it refuses is
skipped and counted, never queued behind a slow model. Each copy is counted by outcome
(``ok``, ``error``, ``timeout``, ``skipped``) and its predictions (all but the skipped) are
logged as shadow rows. While a rollout bakes the roles swap: the candidate answers and the
previous version (the baseline) scores the copy, under the same timeout.

In a canary stage the candidate also scores :data:`WARM` copies of requests the baseline
answered, only when it has no call in flight (so a live call waits behind at most one
copy) and at most one per :data:`WARM_INTERVAL_S`. They are neither logged nor observed:
their purpose is that the candidate's live calls are timed as warm as the baseline's (see
``RouterConfig.warm_candidate``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

from mlflow_kpigate.backends.local.config import RouterConfig
from mlflow_kpigate.backends.local.model_calls import RequestInfo, prediction_rows
from mlflow_kpigate.backends.local.router_metrics import RouterMetrics
from mlflow_kpigate.backends.local.scorers import Scorer
from mlflow_kpigate.core.payloads import ParsedPayload
from mlflow_kpigate.core.records import Prediction

__all__ = ["WARM", "ShadowCopies"]

#: The role of a copy that only keeps the candidate warm.
WARM = "warm"
#: At most one warming copy per this many seconds (per worker). Measured on the fraud
#: example's model: one call every 10 ms runs within 10% of back-to-back calls, one every
#: 100 ms 1.6x slower; so more copies would buy little warmth for their CPU.
WARM_INTERVAL_S = 0.005


class ShadowCopies:
    """The shadow copies of one app; ``log`` records their predictions."""

    def __init__(self, config: RouterConfig, metrics: RouterMetrics,
                 log: Callable[[Sequence[Prediction]], object],
                 scorers: Mapping[str, Scorer]) -> None:
        self.config, self.metrics, self.log = config, metrics, log
        self.scorers = dict(scorers)
        self.tasks: set[asyncio.Task[None]] = set()
        self._warmed_at = float("-inf")

    @property
    def inflight(self) -> int:
        """Copies being scored (by every role)."""
        return len(self.tasks)

    def start(self, payload: ParsedPayload, info: RequestInfo, role: str = "candidate",
              body: bytes = b"", content_type: str | None = None) -> None:
        """Have ``role`` score a copy in the background (on the running event loop)."""
        scorer = self.scorers.get("candidate" if role == WARM else role)
        if scorer is None:
            return
        if role == WARM:
            now = time.monotonic()
            if scorer.inflight or now - self._warmed_at < WARM_INTERVAL_S:
                return  # never queue a live call behind more than one warming copy
            self._warmed_at = now
            work = self._warm(scorer, payload, body, content_type)
        else:
            work = self._score(scorer, payload, info, body, content_type)
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _score(self, scorer: Scorer, payload: ParsedPayload, info: RequestInfo,
                     body: bytes, content_type: str | None) -> None:
        attempt = await scorer.score(payload, body, content_type,
                                     self.config.shadow_timeout_s)
        deployment = self.config.deployment
        if attempt.refused:
            # A slow model must not build a backlog; the copy is a sample, so skipping it
            # only costs evidence, never a caller's latency.
            self.metrics.shadow.labels(deployment, attempt.version, "skipped").inc()
            return
        outcome = "timeout" if attempt.timed_out else "error" if attempt.error else "ok"
        self.metrics.observe(attempt)
        self.metrics.shadow.labels(deployment, attempt.version, outcome).inc()
        self.log(prediction_rows(attempt, info, shadow=True))

    async def _warm(self, scorer: Scorer, payload: ParsedPayload, body: bytes,
                    content_type: str | None) -> None:
        attempt = await scorer.score(payload, body, content_type,
                                     self.config.shadow_timeout_s)
        if not attempt.refused:
            self.metrics.shadow.labels(self.config.deployment, attempt.version,
                                       "warm").inc()

    async def drain(self) -> None:
        """Let in-flight shadow copies finish (each is bounded by the timeout)."""
        tasks = set(self.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.shadow_timeout_s + 1.0)
        for scorer in self.scorers.values():
            await scorer.close()
