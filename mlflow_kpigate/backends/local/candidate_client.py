"""The router's side of the candidate's worker process: one call becomes an Attempt.

:class:`CandidateClient` sends a request's raw body to the worker
(:mod:`.candidate_worker`) over its Unix socket and turns the answer into a
:class:`~.model_calls.Attempt`, like :func:`~.model_calls.call_model` does for a model in
the router's own process; the attempt's ``body`` is the JSON response to send (``raw``
stays ``None``: the output lives in the other process). :meth:`CandidateClient.score`
never raises (only cancels, when its caller is cancelled). A failure is an attempt with
``error`` set, every row unknown and ``latency_s`` the time spent:

* ``timeout after X s``: no answer within ``timeout_s`` (connecting included); the
  connection is closed, so a late answer is discarded, never read by the next request;
* ``candidate busy: N requests in flight``: ``max_inflight`` requests are already waiting,
  so this one fails at once rather than queue behind a slow model;
* ``candidate process unavailable: …``: no socket, or nobody listening (a restart);
* ``candidate process exited during the request``: the connection dropped mid-request
  (also for a request that connects while the kernel tears down a dead worker's socket);
* the worker's own errors (the model raised, the input does not match its signature or
  does not parse with its schema: ``invalid_input``), with the model's ``latency_s``.

Connections are pooled and reused, one request on a connection at a time; a new one is
opened when none is idle, so at most ``max_inflight`` exist. Idle connections a dead
worker left behind are noticed (end of stream) and dropped when next picked; a worker
that dies in the instant between that check and the request costs that one request an
``exited`` attempt. The client lives on one event loop and is not thread-safe.
:attr:`CandidateClient.counters` counts outcomes (see :data:`OUTCOMES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from mlflow_kpigate.backends.local.candidate_protocol import (
    PingRequest,
    Pong,
    PredictRequest,
    PredictResponse,
    ProtocolError,
    encode_frame,
    read_frame,
)
from mlflow_kpigate.backends.local.model_calls import Attempt
from mlflow_kpigate.core.payloads import ModelOutput

__all__ = ["OUTCOMES", "CandidateClient"]

#: Keys of :attr:`CandidateClient.counters`: answered, the model or input failed, and the
#: failures of the process or the connection to it.
OUTCOMES: tuple[str, ...] = ("ok", "error", "timeout", "busy", "unavailable", "exited",
                             "protocol")

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Dropped(Exception):
    """The worker closed the connection before answering."""


class CandidateClient:
    """Score requests on the worker listening at ``socket_path`` (see module doc)."""

    def __init__(self, socket_path: str | os.PathLike[str], *, version: str,
                 timeout_s: float, max_inflight: int, role: str = "candidate") -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight!r}")
        self.socket_path = os.fspath(socket_path)
        self.version, self.role = version, role
        self.timeout_s, self.max_inflight = timeout_s, max_inflight
        self._idle: list[_Connection] = []
        self._inflight = 0
        self._closed = False
        self._counts = dict.fromkeys(OUTCOMES, 0)

    @property
    def inflight(self) -> int:
        """Requests sent (or being sent) and not yet answered."""
        return self._inflight

    @property
    def counters(self) -> dict[str, int]:
        """Outcomes of :meth:`score` so far (a copy), keyed by :data:`OUTCOMES`."""
        return dict(self._counts)

    def _failed(self, outcome: str, error: str, start: float, n_rows: int) -> Attempt:
        self._counts[outcome] += 1
        return Attempt(self.role, self.version, None, error,
                       max(time.perf_counter() - start, 1e-9),
                       ModelOutput([None] * n_rows, [None] * n_rows, False),
                       refused=outcome == "busy", timed_out=outcome == "timeout")

    async def score(self, body: bytes, content_type: str | None, n_rows: int,
                    timeout_s: float | None = None) -> Attempt:
        """The worker's answer to one ``/invocations`` body of ``n_rows`` rows within
        ``timeout_s`` (default: the client's); never raises (see the module doc for the
        failure outcomes)."""
        start = time.perf_counter()
        if self._inflight >= self.max_inflight:
            return self._failed("busy", f"candidate busy: {self._inflight} requests in "
                                "flight", start, n_rows)
        if self._closed:
            return self._failed("unavailable", "candidate process unavailable: the client "
                                "is closed", start, n_rows)
        try:
            frame = encode_frame(PredictRequest(body, content_type).to_wire())
        except ProtocolError as exc:
            return self._failed("error", f"request too large for the candidate: {exc}",
                                start, n_rows)
        self._inflight += 1
        try:
            data, problem = await self._request(
                frame, self.timeout_s if timeout_s is None else timeout_s)
        finally:
            self._inflight -= 1
        if problem is not None:
            return self._failed(problem[0], problem[1], start, n_rows)
        assert data is not None  # no problem means an answer
        try:
            response = PredictResponse.from_wire(data)
        except ProtocolError as exc:
            return self._failed("protocol", f"candidate protocol error: {exc}", start, n_rows)
        return self._attempt(response, start, n_rows)

    def _attempt(self, response: PredictResponse, start: float, n_rows: int) -> Attempt:
        unknown = ModelOutput([None] * n_rows, [None] * n_rows, False)
        if not response.ok:
            self._counts["error"] += 1
            error = response.error or "candidate failed without a message"
            if response.parse_status is not None:
                # The router read the body; the candidate's own schema did not.
                error = f"the candidate could not parse the input: {error}"
            latency = response.latency_s or max(time.perf_counter() - start, 1e-9)
            invalid = response.invalid_input or response.parse_status is not None
            return Attempt(self.role, self.version, None, error, latency, unknown, invalid)
        self._counts["ok"] += 1
        output = ModelOutput(response.scores, response.predicted, response.understood)
        if len(output.scores) != n_rows or len(output.predicted) != n_rows:
            output = unknown  # read as another number of rows than the router's
        return Attempt(self.role, self.version, None, None, response.latency_s, output,
                       body=response.body)

    async def _request(self, frame: bytes, timeout_s: float
                       ) -> tuple[dict[str, object] | None, tuple[str, str] | None]:
        """Send ``frame`` on a pooled connection and read the answer, within the timeout:
        ``(answer, None)`` or ``(None, (outcome, error))``."""
        held: list[_Connection] = []

        async def round_trip() -> dict[str, object]:
            connection = await self._acquire()
            held.append(connection)
            return await self._exchange(connection, frame)

        try:
            data = await asyncio.wait_for(round_trip(), timeout_s)
        except asyncio.TimeoutError:
            self._discard(held)
            return None, ("timeout", f"timeout after {timeout_s:g} s")
        except ProtocolError as exc:
            self._discard(held)
            return None, ("protocol", f"candidate protocol error: {exc}")
        except (_Dropped, asyncio.IncompleteReadError, OSError) as exc:
            self._discard(held)
            if not held:  # connecting failed: nobody is listening
                return None, ("unavailable", f"candidate process unavailable: {exc}")
            return None, ("exited", "candidate process exited during the request")
        except asyncio.CancelledError:
            self._discard(held)
            raise
        self._release(held[0])
        return data, None

    async def _acquire(self) -> _Connection:
        while self._idle:
            reader, writer = self._idle.pop()
            if not (reader.at_eof() or writer.is_closing()):
                return reader, writer
            writer.close()  # the worker closed it (it stopped or died) while idle
        return await asyncio.open_unix_connection(self.socket_path)

    @staticmethod
    async def _exchange(connection: _Connection, frame: bytes) -> dict[str, object]:
        reader, writer = connection
        writer.write(frame)
        await writer.drain()
        data = await read_frame(reader)
        if data is None:
            raise _Dropped("connection closed before the answer")
        return data

    def _release(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= self.max_inflight:
            connection[1].close()
        else:
            self._idle.append(connection)

    @staticmethod
    def _discard(held: list[_Connection]) -> None:
        for _, writer in held:
            writer.close()

    async def ping(self, timeout_s: float) -> bool:
        """Whether the worker answers a ping within ``timeout_s`` (not counted in flight)."""
        if self._closed:
            return False
        held: list[_Connection] = []

        async def round_trip() -> bool:
            connection = await self._acquire()
            held.append(connection)
            Pong.from_wire(await self._exchange(connection, encode_frame(
                PingRequest().to_wire())))
            return True

        try:
            await asyncio.wait_for(round_trip(), timeout_s)
        except asyncio.CancelledError:
            self._discard(held)
            raise
        except (asyncio.TimeoutError, ProtocolError, _Dropped, asyncio.IncompleteReadError,
                OSError):
            self._discard(held)
            return False
        self._release(held[0])
        return True

    async def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
