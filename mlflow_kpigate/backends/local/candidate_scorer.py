"""The candidate in its own process, as the router's :class:`~.scorers.Scorer`.

:class:`ProcessScorer` wraps the :class:`~.candidate_client.CandidateClient` of one
worker's candidate process and decides when the candidate is *ready* for traffic. The
main process starts the candidate next to the worker, and loading a model takes seconds:
until the candidate process has answered once, the candidate gets no traffic (live or
shadow) and nothing is logged for it, so a start-up is not mistaken for errors. A
candidate that has not answered within ``startup_grace_s`` (it cannot load, or crashes on
start) is ready anyway: from then on every call that fails is logged as a candidate
error, so the gate sees a candidate that never comes up and rolls it back. Once ready it
stays ready: a candidate that exits later costs errors (and the baseline answers), which
is evidence, not a reason to stop measuring.
"""

from __future__ import annotations

import asyncio
import os
import time

from mlflow_kpigate.backends.local.candidate_client import CandidateClient
from mlflow_kpigate.backends.local.model_calls import Attempt
from mlflow_kpigate.core.payloads import ParsedPayload

__all__ = ["ProcessScorer"]

_PROBE_EVERY_S = 0.1


class ProcessScorer:
    """The candidate process behind ``socket_path`` (see module doc)."""

    def __init__(self, socket_path: str | os.PathLike[str], *, version: str,
                 max_inflight: int, startup_grace_s: float = 60.0) -> None:
        self.client = CandidateClient(socket_path, version=version, timeout_s=1.0,
                                      max_inflight=max_inflight)
        self.startup_grace_s = float(startup_grace_s)
        self._since = time.monotonic()
        self._answered = False
        self._probe: asyncio.Task[None] | None = None

    @property
    def inflight(self) -> int:
        return self.client.inflight

    @property
    def ready(self) -> bool:
        """Whether the candidate takes traffic: it answered once, or the grace is over."""
        return self._answered or time.monotonic() - self._since > self.startup_grace_s

    @property
    def starting(self) -> bool:
        """Not ready yet: the process has not answered and the grace is not over."""
        return not self.ready

    async def start(self) -> None:
        """Probe the process in the background until it first answers."""
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_answer())

    async def _wait_for_answer(self) -> None:
        while not self.ready:
            if await self.client.ping(1.0):
                self._answered = True
                return
            await asyncio.sleep(_PROBE_EVERY_S)

    async def score(self, payload: ParsedPayload, body: bytes, content_type: str | None,
                    timeout_s: float) -> Attempt:
        attempt = await self.client.score(body, content_type, len(payload.frame),
                                          timeout_s=timeout_s)
        if attempt.error is None:
            self._answered = True
        return attempt

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.client.close()
