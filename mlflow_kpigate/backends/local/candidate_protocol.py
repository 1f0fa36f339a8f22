"""The wire format between the router and the candidate's worker process.

A frame is a 4-byte big-endian length followed by that many bytes of one JSON object
(orjson), at most :data:`MAX_FRAME` bytes. The router sends a request frame and waits for
its response on the same connection; a connection carries one request at a time.

Requests (:class:`PredictRequest`, :class:`PingRequest`) and responses
(:class:`PredictResponse`, :class:`Pong`) are frozen dataclasses with ``to_wire`` /
``from_wire``. A predict request carries the raw HTTP body, which may be any bytes: it
travels as a latin-1 decoded string, which round-trips every byte. That is cheaper than
base64 for the JSON bodies the router sees (measured with orjson: 0.7 vs 1.3 µs on a
67-byte body, 46 vs 300 µs and 50 vs 61 kB on a 46 kB one) because JSON text is ASCII
and only its quotes are escaped. The response body is the JSON text MLflow's scoring
server would send, kept as text so the router forwards it byte for byte.

Both ends are kpigate's own code, so a frame that does not decode is a
:class:`ProtocolError` (the connection is then closed), never a partial result.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

#: The candidate worker's exit code when its watchdog found a predict running longer
#: than ``--hang-after`` (here, not in the worker's module, so that the supervising side
#: does not import pandas and MLflow's parsing with it).
EXIT_HUNG = 70

__all__ = [
    "EXIT_HUNG",
    "MAX_FRAME",
    "PingRequest",
    "Pong",
    "PredictRequest",
    "PredictResponse",
    "ProtocolError",
    "decode_request",
    "encode_frame",
    "read_frame",
    "recv_frame",
]

#: Largest frame either side accepts (a request body plus its encoding overhead).
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame that is too large, truncated or not the expected object."""


@dataclass(frozen=True)
class PredictRequest:
    """Score one ``/invocations`` body (``content_type`` as the caller sent it)."""

    body: bytes
    content_type: str | None

    def to_wire(self) -> dict[str, Any]:
        return {"op": "predict", "body": self.body.decode("latin-1"),
                "content_type": self.content_type}


@dataclass(frozen=True)
class PingRequest:
    """Is the worker's event loop answering? (It does while predicts are stuck.)"""

    def to_wire(self) -> dict[str, Any]:
        return {"op": "ping"}


def decode_request(data: Mapping[str, Any]) -> PredictRequest | PingRequest:
    """The request a decoded frame holds (:class:`ProtocolError` if none)."""
    op = data.get("op")
    if op == "ping":
        return PingRequest()
    if op == "predict":
        body, content_type = data.get("body"), data.get("content_type")
        if not isinstance(body, str) or not (content_type is None
                                             or isinstance(content_type, str)):
            raise ProtocolError("predict request needs a string body and content_type")
        try:
            return PredictRequest(body.encode("latin-1"), content_type)
        except UnicodeEncodeError:
            raise ProtocolError("predict body is not latin-1 encoded bytes") from None
    raise ProtocolError(f"unknown request op {op!r}")


@dataclass(frozen=True)
class PredictResponse:
    """The worker's answer to one :class:`PredictRequest`.

    ``body`` is the JSON response MLflow's scoring server would send (``None`` unless
    ``ok``); ``scores``/``predicted``/``understood`` are the interpreted output per row
    (:func:`~mlflow_kpigate.core.payloads.interpret_output`); ``latency_s`` is the model's
    ``predict`` time in the worker. On failure ``error`` is one line; ``invalid_input``
    marks an input MLflow rejected against the model's signature; ``parse_status`` is
    set (the HTTP status of :class:`~mlflow_kpigate.core.payloads.PayloadError`, its
    message in ``error``) when the body did not parse.
    """

    ok: bool
    body: bytes | None
    scores: list[float | None]
    predicted: list[int | None]
    understood: bool
    latency_s: float
    error: str | None = None
    invalid_input: bool = False
    parse_status: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "op": "predicted", "ok": self.ok,
            "body": None if self.body is None else self.body.decode("utf-8"),
            "scores": self.scores, "predicted": self.predicted,
            "understood": self.understood, "latency_s": self.latency_s,
            "error": self.error, "invalid_input": self.invalid_input,
            "parse_status": self.parse_status,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> PredictResponse:
        if data.get("op") != "predicted":
            raise ProtocolError(f"expected a predict response, got op {data.get('op')!r}")
        try:
            body = data["body"]
            return cls(
                ok=bool(data["ok"]),
                body=None if body is None else str(body).encode("utf-8"),
                scores=list(data["scores"]), predicted=list(data["predicted"]),
                understood=bool(data["understood"]), latency_s=float(data["latency_s"]),
                error=data["error"], invalid_input=bool(data["invalid_input"]),
                parse_status=data["parse_status"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed predict response: {exc!r}") from None


@dataclass(frozen=True)
class Pong:
    """The answer to a ping: the worker's pid and how many predicts it is running."""

    pid: int
    predicting: int

    def to_wire(self) -> dict[str, Any]:
        return {"op": "pong", "pid": self.pid, "predicting": self.predicting}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Pong:
        if data.get("op") != "pong":
            raise ProtocolError(f"expected a pong, got op {data.get('op')!r}")
        try:
            return cls(int(data["pid"]), int(data["predicting"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed pong: {exc!r}") from None


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """Length prefix and JSON body of ``message`` (:class:`ProtocolError` if too large)."""
    body = orjson.dumps(message)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


def _decode(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"frame is a JSON {type(data).__name__}, not an object")
    return data


def _length(header: bytes, max_size: int) -> int:
    (size,) = _HEADER.unpack(header)
    if size > max_size:
        raise ProtocolError(f"frame of {size} bytes exceeds the {max_size}-byte limit")
    return int(size)


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_FRAME
                     ) -> dict[str, Any] | None:
    """The next frame's object, or ``None`` at a clean end of stream (between frames).

    :class:`asyncio.IncompleteReadError` if the stream ends inside a frame.
    """
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    return _decode(await reader.readexactly(_length(header, max_size)))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed inside a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, max_size: int = MAX_FRAME) -> dict[str, Any]:
    """The next frame's object from a blocking socket (its timeout applies per recv)."""
    return _decode(_recv_exactly(sock, _length(_recv_exactly(sock, _HEADER.size), max_size)))
