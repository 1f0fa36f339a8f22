"""Reading an inbound request body with a size limit (the router and the collector service).

:func:`read_limited` refuses a body as soon as it is known to exceed the limit: from its
``Content-Length`` before reading, or while streaming one without it, so a client can
never make a server hold more than the limit in memory.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BodyTooLarge", "read_limited"]


class BodyTooLarge(Exception):
    """The request body is larger than the limit."""


async def read_limited(request: Any, limit: int) -> bytes:
    """The body of a Starlette ``request``; :class:`BodyTooLarge` past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
