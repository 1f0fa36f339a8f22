"""PromQL text for the Prometheus metrics source, and the arithmetic of counter windows.

Everything here is pure: strings in, strings out, numbers in, numbers out. The source
(:mod:`mlflow_kpigate.metrics.prometheus`) sends the queries and assembles the results.

Counting a window from a counter
    Seldon's executor counters have no stage label, so a stage's requests are the counter's
    growth between the stage's start and end. PromQL's ``increase(x[w])`` is the wrong tool
    for that: it takes the samples inside the window, then *extrapolates* the slope to the
    window's edges (up to half a sample interval beyond the first and last sample, and not
    below zero), so it returns fractions of requests, misses the growth between the last
    sample before the window and the first one inside it, and over- or under-counts short
    windows by a large share. The gate treats counts as sample sizes, so they must be
    exact. Instead the source reads the counter's last raw value at or before each edge
    (``last_over_time(x[lookback] @ t)``) and takes the difference, which partitions the
    growth between consecutive windows with nothing lost or counted twice. A restart
    resets the counter to zero; ``resets()`` over the window flags the series it happened
    to, and for those (only) the raw samples are fetched and their increments added up
    (:func:`counter_increase`), counting a drop as a restart from zero, which is exactly
    the reset handling of ``increase()`` without its extrapolation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from ..policy import QUERY_PLACEHOLDER

__all__ = [
    "LOOKBACK_S",
    "counter_increase",
    "duration",
    "last_value_at",
    "quote",
    "raw_samples",
    "render",
    "resets_in",
    "selector",
]

#: How far before a window edge the last sample of a counter is looked for. A series with
#: no sample that recent is taken to have started later (a label set appears with its
#: first request), so it counts from zero. Far longer than any scrape interval.
LOOKBACK_S = 600


def quote(value: str) -> str:
    """``value`` as a PromQL double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector(metric: str, equal: Mapping[str, str] | None = None,
             regex: Mapping[str, str] | None = None,
             not_regex: Mapping[str, str] | None = None) -> str:
    """``metric{a="x", b=~"y", c!~"z"}``; an empty regex value also matches a missing label."""
    parts = [f"{k}={quote(v)}" for k, v in (equal or {}).items()]
    parts += [f"{k}=~{quote(v)}" for k, v in (regex or {}).items()]
    parts += [f"{k}!~{quote(v)}" for k, v in (not_regex or {}).items()]
    return f"{metric}{{{','.join(parts)}}}"


def duration(seconds: float) -> str:
    """A PromQL duration of whole seconds, at least ``1s`` (``0s`` is not a valid range)."""
    return f"{max(1, math.ceil(seconds))}s"


def _at(t: float) -> str:
    return f"@ {t:.3f}"


def last_value_at(series: str, t: float, lookback: float = LOOKBACK_S) -> str:
    """Each series' last raw sample at or before ``t`` (within ``lookback`` seconds)."""
    return f"last_over_time({series}[{duration(lookback)}] {_at(t)})"


def resets_in(series: str, start: float, end: float, lookback: float = LOOKBACK_S) -> str:
    """Counter resets of each series from ``lookback`` before ``start`` up to ``end``.

    The range reaches back as far as :func:`last_value_at` does, so a restart between the
    sample used for the start edge and the window is seen too.
    """
    return f"resets({series}[{duration(end - start + lookback)}] {_at(end)})"


def raw_samples(series: str, start: float, end: float, lookback: float = LOOKBACK_S) -> str:
    """The raw samples of each series over the same range as :func:`resets_in`."""
    return f"{series}[{duration(end - start + lookback)}] {_at(end)}"


def counter_increase(samples: Sequence[tuple[float, float]], start: float) -> float:
    """Exact growth of a counter after ``start`` from its raw ``(time, value)`` samples.

    The last sample at or before ``start`` is the reference (zero when there is none: the
    series began inside the window); every later sample adds its difference from the
    previous one, and a drop means the process restarted and counted from zero again.
    """
    ordered = sorted(samples)
    previous = 0.0
    total = 0.0
    for t, value in ordered:
        if t <= start:
            previous = value
            continue
        total += value - previous if value >= previous else value
        previous = value
    return total


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace the ``{name}`` placeholders of a custom query (validated by the policy)."""
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(name)
        return values[name]

    return QUERY_PLACEHOLDER.sub(substitute, template)
