"""Parsing and formatting of human durations such as ``90s``, ``15m``, ``2h30m``, ``1d``."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str | int | float) -> float:
    """Return the duration in seconds.

    Numbers are taken as seconds; strings are one or more ``<number><unit>`` parts with
    units ``ms``, ``s``, ``m``, ``h``, ``d`` (``1h30m``). Raises ``ValueError`` with a
    message that says what a valid duration looks like.
    """
    if isinstance(text, bool):
        raise ValueError("must be a duration such as 30s, 15m or 2h, not a boolean")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise ValueError("must be a non-negative duration such as 30s, 15m or 2h")
        return float(text)
    if not isinstance(text, str):
        raise ValueError("must be a duration such as 30s, 15m or 2h")
    compact = text.strip().replace(" ", "")
    if not compact:
        raise ValueError("must be a duration such as 30s, 15m or 2h, not empty")
    pos = 0
    total = 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(f"{text!r} is not a duration: use e.g. 30s, 15m, 2h or 1h30m")
    return total


def format_duration(seconds: float) -> str:
    """Format seconds compactly (``3725`` → ``1h2m5s``), for messages and reports."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            amount, rest = divmod(rest, size)
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"
