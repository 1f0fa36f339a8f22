"""Segment columns: split a column into its distinct values, and key each value by its string.

:class:`~mlflow_kpigate.kpis.aggregate.RoleAggregate` counts one confusion matrix per
segment value; :func:`factorize` gives the distinct values of a batch's column and each
row's code into them (fast for the few distinct values segment fields have), and
:func:`segment_key` the key a value is stored under.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["factorize", "segment_key"]

# Beyond this many distinct values per chunk, one sort is cheaper than repeated scans.
_SCAN_LIMIT = 16


def factorize(values: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """``(uniques, codes)`` with ``values[i] == uniques[codes[i]]``."""
    scanned = _factorize_by_scan(values)
    if scanned is not None:
        return scanned
    try:
        found, inverse = np.unique(values, return_inverse=True)
    except TypeError:
        # Mixed, unorderable objects: their string form is the segment key anyway.
        found, inverse = np.unique(values.astype(str), return_inverse=True)
    return list(found), inverse.reshape(-1).astype(np.intp, copy=False)


def _factorize_by_scan(values: np.ndarray) -> tuple[list[Any], np.ndarray] | None:
    """Factorize with one equality scan per distinct value, or ``None`` to ask for a sort.

    Segment fields have few distinct values, and a scan per value is several times faster
    than the sort behind ``np.unique`` on string arrays. Gives up (``None``) beyond
    ``_SCAN_LIMIT`` values, or on values not equal to themselves (NaN), which a scan
    would never assign.
    """
    codes = np.zeros(values.size, dtype=np.intp)
    uniques: list[Any] = []
    unassigned = np.ones(values.size, dtype=bool)
    remaining = values.size
    while remaining:
        if len(uniques) == _SCAN_LIMIT:
            return None
        first = int(np.argmax(unassigned))
        value = values[first]
        match = _equal(values, value)
        if match is None or not match[first]:
            return None
        # Guards against non-transitive equality of exotic objects re-claiming rows.
        match &= unassigned
        if uniques:
            # Multiply-add is ~4x faster than a masked assignment; code 0 needs no write.
            codes += match * len(uniques)
        unassigned &= ~match
        remaining -= int(np.count_nonzero(match))
        uniques.append(value)
    return uniques, codes


def _equal(values: np.ndarray, value: Any) -> np.ndarray | None:
    """``values == value`` as a bool array, or ``None`` if numpy refuses elementwise."""
    size = values.dtype.itemsize
    if values.dtype.kind in "US" and size % 4 == 0 and values.flags.c_contiguous:
        # Short fixed-width strings compare faster as a few machine words per row than
        # through numpy's string comparison loop.
        word = np.uint64 if size % 8 == 0 else np.uint32
        n_words = size // np.dtype(word).itemsize
        if n_words <= 4:
            words = values.view(word).reshape(values.size, n_words)
            target = np.array([value], dtype=values.dtype).view(word)
            match = words[:, 0] == target[0]
            for column in range(1, n_words):
                match &= words[:, column] == target[column]
            return match
    match = values == value
    if not isinstance(match, np.ndarray) or match.shape != values.shape:
        return None
    return match


def segment_key(value: Any) -> str:
    """Segment values are keyed by their string form (``1``, ``"1"`` and ``np.int64(1)``
    are one segment), so that keys survive a JSON round trip unchanged."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)
