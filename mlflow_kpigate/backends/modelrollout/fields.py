"""Reading a ModelRollout's JSON fields with errors that name the field.

Every reader takes the mapping, the key and the dotted path of the mapping, and raises
:class:`~mlflow_kpigate.core.errors.UsageError` with a one-line ``path.key: problem``
message (``spec.model.name: required``), so whoever wrote the object sees what to fix.
Times are RFC 3339 UTC strings with seconds, as Kubernetes writes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from mlflow_kpigate.core.errors import UsageError

_MISSING = object()


def at(path: str, key: str) -> str:
    """``path.key`` (or ``key`` at the root)."""
    return f"{path}.{key}" if path else key


def mapping(data: Mapping[str, Any], key: str, path: str, *,
            required: bool = False) -> Mapping[str, Any] | None:
    """The object at ``key``; None when absent and not ``required``."""
    value = data.get(key, _MISSING)
    if value is _MISSING or value is None:
        if required:
            raise UsageError(f"{at(path, key)}: required")
        return None
    if not isinstance(value, Mapping):
        raise UsageError(f"{at(path, key)}: must be an object, not {type(value).__name__}")
    return value


def section(data: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    """The object at ``key``, which must be set."""
    value = mapping(data, key, path, required=True)
    if value is None:  # mapping() raises first; this tells the type checker
        raise UsageError(f"{at(path, key)}: required")
    return value


def string(data: Mapping[str, Any], key: str, path: str, *, required: bool = False,
           pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = (),
           default: str | None = None) -> str | None:
    """The non-empty string at ``key``, checked against ``pattern`` or ``choices``."""
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise UsageError(f"{at(path, key)}: required")
        return default
    if not isinstance(value, str):
        raise UsageError(f"{at(path, key)}: must be a string, not {type(value).__name__}")
    if choices and value not in choices:
        raise UsageError(f"{at(path, key)}: {value!r} is not one of {', '.join(choices)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise UsageError(f"{at(path, key)}: {value!r} does not match {pattern.pattern}")
    return value


def required(data: Mapping[str, Any], key: str, path: str, *,
             pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = ()) -> str:
    """The string at ``key``, which must be set (see :func:`string`)."""
    value = string(data, key, path, required=True, pattern=pattern, choices=choices)
    if value is None:  # string() raises first; this tells the type checker
        raise UsageError(f"{at(path, key)}: required")
    return value


def integer(data: Mapping[str, Any], key: str, path: str, *, default: int,
            minimum: int = 0) -> int:
    """The integer at ``key`` (at least ``minimum``); ``default`` when absent."""
    value = data.get(key)
    if value is None:
        return default
    # bool is an int in Python, not in JSON: true is no replica count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{at(path, key)}: must be an integer, not {value!r}")
    if value < minimum:
        raise UsageError(f"{at(path, key)}: must be at least {minimum}, not {value}")
    return value


def number(data: Mapping[str, Any], key: str, path: str) -> float | None:
    """The number at ``key``; None when absent."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{at(path, key)}: must be a number, not {value!r}")
    return float(value)


def boolean(data: Mapping[str, Any], key: str, path: str, *, default: bool = False) -> bool:
    """The boolean at ``key``; ``default`` when absent."""
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UsageError(f"{at(path, key)}: must be true or false, not {value!r}")
    return value


def items(data: Mapping[str, Any], key: str, path: str) -> list[Mapping[str, Any]]:
    """The list of objects at ``key`` (empty when absent)."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise UsageError(f"{at(path, key)}: must be a list, not {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise UsageError(f"{at(path, key)}[{i}]: must be an object")
    return value


def timestamp(data: Mapping[str, Any], key: str, path: str, *,
              required: bool = False) -> datetime | None:
    """The RFC 3339 time at ``key`` as an aware UTC datetime."""
    text = string(data, key, path, required=required)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{at(path, key)}: {text!r} is not an RFC 3339 time") from None
    if value.tzinfo is None:
        raise UsageError(f"{at(path, key)}: {text!r} has no time zone")
    return value.astimezone(timezone.utc)


def rfc3339(value: datetime) -> str:
    """``2024-05-01T12:00:00Z``: whole seconds in UTC, as metav1.Time serialises."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def only_one(data: Mapping[str, Any], keys: tuple[str, str], path: str) -> str:
    """Which one of ``keys`` ``data`` sets (exactly one must be)."""
    present = [k for k in keys if data.get(k) not in (None, "")]
    if len(present) != 1:
        raise UsageError(f"{path}: set exactly one of {' or '.join(keys)}")
    return present[0]
