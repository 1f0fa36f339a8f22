"""The segment log's line format: one :class:`Prediction` as one line of JSON.

A line is a JSON object terminated by ``b"\\n"`` (JSON escapes every newline inside a
string, so a line never contains one)::

    {"v":1,"request_id":"r1/0","ts":1700000000.25,"role":"baseline","version":"3",
     "stage_index":0,"shadow":false,"latency_s":0.0123,"error":false,"score":0.87,
     "predicted":1,"segments":{"region":"eu"},"features":null}

``v`` is the format version: a reader refuses a version it does not know
(:func:`decode_line` raises ``ValueError``), so the format can evolve without a newer
file being misread by an older ingester.

Decoding gives back an equal :class:`Prediction`: floats are written in their shortest
round-trip form, so they come back bit for bit; ``None`` stays ``None``; a score of
``±inf`` (allowed by :class:`Prediction`, absent from JSON) is written as the string
``"inf"``/``"-inf"``. ``segments`` and ``features`` become plain JSON values: numpy
scalars become the equal Python number, tuples and arrays become lists, mapping keys
become strings, and anything JSON cannot hold exactly (other objects, NaN or infinite
floats, integers beyond 64 bits) becomes its ``str()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson

from mlflow_kpigate.core.records import Prediction

__all__ = ["FORMAT_VERSION", "decode_line", "encode_predictions"]

#: The ``v`` field of every line this version writes (and the only one it reads).
FORMAT_VERSION = 1

_INT64 = (-(2**63), 2**64 - 1)  # orjson's integer range
_FIELDS = frozenset({
    "v", "request_id", "ts", "role", "version", "stage_index", "shadow", "latency_s",
    "error", "score", "predicted", "segments", "features",
})


def _scalar(x: Any) -> Any:
    """A numpy scalar as the equal Python scalar (orjson writes only Python types)."""
    return x.item() if isinstance(x, np.generic) else x


def _plain(x: Any) -> Any:
    """``x`` as plain JSON values; what JSON cannot hold exactly becomes ``str(x)``."""
    x = _scalar(x)
    if x is None or isinstance(x, (str, bool)):
        return x
    if isinstance(x, int):
        return x if _INT64[0] <= x <= _INT64[1] else str(x)
    if isinstance(x, float):
        # orjson would silently write NaN/inf as null; a string keeps the value readable.
        return x if math.isfinite(x) else str(x)
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return str(x)


def _line(p: Prediction) -> dict[str, Any]:
    score = _scalar(p.score)
    if isinstance(score, float) and math.isinf(score):
        score = str(score)
    return {
        "v": FORMAT_VERSION,
        "request_id": p.request_id,
        "ts": _scalar(p.ts),
        "role": p.role,
        "version": p.version,
        "stage_index": _scalar(p.stage_index),
        "shadow": _scalar(p.shadow),
        "latency_s": _scalar(p.latency_s),
        "error": _scalar(p.error),
        "score": score,
        "predicted": _scalar(p.predicted),
        "segments": _plain(p.segments),
        "features": None if p.features is None else _plain(p.features),
    }


def encode_predictions(rows: Iterable[Prediction]) -> bytes:
    """``rows`` as consecutive lines, each ending in ``b"\\n"`` (``b""`` for no rows)."""
    return b"".join(orjson.dumps(_line(p), option=orjson.OPT_APPEND_NEWLINE) for p in rows)


def decode_line(line: bytes) -> Prediction:
    """The :class:`Prediction` of one line (with or without its ``b"\\n"``).

    ``ValueError`` naming the problem if the line is not a complete line of a known
    format version.
    """
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a JSON line ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a line must be a JSON object, got {type(data).__name__}")
    if data.get("v") != FORMAT_VERSION:
        raise ValueError(f"unknown segment format version {data.get('v')!r} "
                         f"(this version reads {FORMAT_VERSION})")
    if set(data) != _FIELDS:
        missing = sorted(_FIELDS - set(data))
        extra = sorted(set(data) - _FIELDS)
        raise ValueError(f"line fields differ from version {FORMAT_VERSION}: "
                         f"missing {missing}, unexpected {extra}")
    score = data["score"]
    if isinstance(score, str):
        if score not in ("inf", "-inf"):
            raise ValueError(f"score must be a number, null, 'inf' or '-inf', got {score!r}")
        score = float(score)
    for name in ("shadow", "error"):
        if not isinstance(data[name], bool):
            raise ValueError(f"{name} must be true or false, got {data[name]!r}")
    segments, features = data["segments"], data["features"]
    if not isinstance(segments, dict) or not (features is None or isinstance(features, dict)):
        raise ValueError("segments must be an object and features an object or null")
    try:
        return Prediction(
            request_id=data["request_id"], ts=data["ts"], role=data["role"],
            version=data["version"], stage_index=data["stage_index"],
            shadow=data["shadow"], latency_s=data["latency_s"], error=data["error"],
            score=score, predicted=data["predicted"], segments=segments,
            features=features,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a valid prediction ({exc})") from None
