"""The problem collector and the field checks every part of the validator shares.

Each check reports into :class:`Problems` as ``path.in.file: message`` and returns ``None``
instead of raising, so that one run of the validator lists every problem of a document.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

from mlflow_kpigate.core.durations import parse_duration


class Problems:
    """Collects ``path: message`` lines so that validation reports every problem at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        """Record one problem at ``path`` (``""`` for the document itself)."""
        self.items.append(f"{path}: {message}")

    def unknown_keys(self, path: str, mapping: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        """Flag every key of ``mapping`` not in ``allowed``, with the closest allowed key."""
        for key in mapping:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = (f"; did you mean {hint[0]!r}?" if hint
                          else f"; allowed: {', '.join(allowed)}")
            self.add(join_path(path, str(key)), f"unknown field{suggestion}")


def join_path(path: str, key: str) -> str:
    """``path.key``, or ``key`` at the top level."""
    return f"{path}.{key}" if path else key


def type_name(value: Any) -> str:
    """How a YAML author would call the type of ``value`` ("a list", "text" …)."""
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "a number", float: "a number", str: "text",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def as_number(p: Problems, path: str, value: Any, *, lo: float | None = None,
              hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
              integer: bool = False) -> float | None:
    """``value`` as a float within the given bounds, or ``None`` after reporting why not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.add(path, f"must be a number, got {type_name(value)}")
        return None
    if not math.isfinite(value):
        p.add(path, "must be a finite number")
        return None
    if integer and int(value) != value:
        p.add(path, f"must be a whole number, got {value}")
        return None
    if lo is not None and (value <= lo if lo_open else value < lo):
        p.add(path, f"must be {'>' if lo_open else '>='} {lo:g}, got {value:g}")
        return None
    if hi is not None and (value >= hi if hi_open else value > hi):
        p.add(path, f"must be {'<' if hi_open else '<='} {hi:g}, got {value:g}")
        return None
    return float(value)


def as_duration(p: Problems, path: str, value: Any) -> float | None:
    """``value`` (``90``, ``"5m"`` …) in seconds, or ``None`` after reporting why not."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        p.add(path, str(exc))
        return None


def as_enum(p: Problems, path: str, value: Any, enum: type[Enum]) -> Any:
    """The member of ``enum`` whose value is ``value``, or ``None`` after reporting it."""
    allowed = [member.value for member in enum]
    if value in allowed:
        return enum(value)
    hint = difflib.get_close_matches(str(value), allowed, n=1)
    extra = f"did you mean {hint[0]!r}? " if hint else ""
    p.add(path, f"must be one of {', '.join(allowed)}; got {value!r}. {extra}".rstrip())
    return None


def as_mapping(p: Problems, path: str, value: Any) -> Mapping[str, Any] | None:
    """``value`` if it is a mapping, or ``None`` after reporting it."""
    if not isinstance(value, Mapping):
        p.add(path, f"must be a mapping (key: value lines), got {type_name(value)}")
        return None
    return value


def as_name(p: Problems, path: str, value: Any) -> str | None:
    """``value`` if it is a usable name (no spaces or punctuation), or ``None``."""
    if not isinstance(value, str) or not value.strip():
        p.add(path, "must be a non-empty name")
        return None
    if any(c.isspace() for c in value) or not all(c.isalnum() or c in "_-." for c in value):
        p.add(path, f"{value!r}: use letters, digits, '_', '-' or '.' only")
        return None
    return value


def one_of_problem(p: Problems, path: str, value: Any, allowed: list[str]) -> None:
    """Report that ``value`` is none of ``allowed`` (for choices that are not an enum)."""
    hint = difflib.get_close_matches(str(value), allowed, n=1)
    extra = f" Did you mean {hint[0]!r}?" if hint else ""
    p.add(path, f"must be one of {', '.join(allowed)}; got {value!r}.{extra}")

