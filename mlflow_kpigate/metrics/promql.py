"""PromQL text for the Prometheus metrics source, and the arithmetic of what comes back.

Everything here is pure: query strings out; counter samples, ``le`` buckets and status
codes in, counts and histograms out. The source (:mod:`mlflow_kpigate.metrics.prometheus`)
sends the queries and assembles the aggregates.

Counting a window from a counter
    Seldon's executor counters have no stage label, so a stage's requests are the counter's
    growth between the stage's start and end. PromQL's ``increase(x[w])`` is the wrong tool
    for that: it takes the growth between the first and the last sample inside the window
    and *extrapolates* it out to the window's edges (by at most half the average sample
    interval when an edge is further away, and for counters not below zero). So it returns
    fractions of requests, ignores the growth between the last sample before the window and
    the first one inside it (replacing it with a guess), and is off by a large share on
    short windows. The gate treats counts as sample sizes, so they must be
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

import numpy as np

from mlflow_kpigate.kpis import LatencyHistogram
from mlflow_kpigate.policy import QUERY_PLACEHOLDER

__all__ = [
    "LOOKBACK_S",
    "bucket_below",
    "code_kind",
    "counter_increase",
    "duration",
    "last_value_at",
    "latency_from_buckets",
    "latency_layout",
    "quote",
    "raw_samples",
    "render",
    "resets_in",
    "score_counts",
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


# gRPC status codes that blame the caller, like HTTP 4xx.
_GRPC_CLIENT_CODES = frozenset({
    "Canceled", "InvalidArgument", "NotFound", "AlreadyExists", "PermissionDenied",
    "Unauthenticated", "FailedPrecondition", "OutOfRange",
})


# --------------------------------------------------------------------------------------
# Prometheus histograms and status codes
# --------------------------------------------------------------------------------------

def latency_layout(bounds: Sequence[float]) -> LatencyHistogram:
    """An empty histogram whose buckets are exactly ``bounds`` (geometric), or the default
    layout when they are not geometric (then counts go to the bucket at each bound)."""
    low, ratio = bounds[0], bounds[1] / bounds[0]
    hist = LatencyHistogram(low=low, high=bounds[-1], growth=ratio)
    # All bounds but the last must be edges; the last may be cut short (60 s, not 70 s).
    if np.allclose(hist.edges[: len(bounds) - 1], bounds[:-1], rtol=1e-6, atol=0) \
            and hist.edges.size == len(bounds) and hist.edges[-1] >= bounds[-1]:
        return hist
    return LatencyHistogram()


def bucket_below(hist: LatencyHistogram, bound: float) -> int:
    """The histogram bucket holding values just below ``bound`` (its counts' upper bound).

    Bounds written as ``le`` labels are rounded (9 significant digits by the collector), so
    a bound within a millionth of an edge is that edge; real bucket edges are percents apart.
    """
    return int(np.searchsorted(hist.edges, bound * (1 - 1e-6), side="left"))


def latency_from_buckets(template: LatencyHistogram, cumulative: Mapping[float, float],
                         total_seconds: float) -> LatencyHistogram:
    """A latency histogram from a Prometheus histogram's cumulative ``le`` buckets.

    Each Prometheus bucket ``(previous bound, bound]`` lands in the bucket of ``template``
    just below ``bound``: with the collector's layout that is the very same bucket; with a
    finer layout (Seldon's buckets) the latencies are rounded up to the bucket bound.
    Requests above the last finite bound are counted at that bound (Prometheus does not say
    how much slower they were). The log-latency moments assume each latency at the
    geometric middle of its bucket plus the spread of a uniform log within it (Sheppard's
    correction); the arithmetic sum is Prometheus' exact ``_sum``.
    """
    out = LatencyHistogram(template.low, template.high, template.growth)
    finite = [b for b in cumulative if math.isfinite(b)]
    counts = np.zeros(out.counts.size, dtype=np.int64)
    previous = 0.0
    for bound in sorted(cumulative):  # +Inf sorts last
        n = max(round(cumulative[bound] - previous), 0)
        previous = max(previous, cumulative[bound])
        if n and finite:
            counts[bucket_below(out, bound if math.isfinite(bound) else max(finite))] += n
    n_total = int(counts.sum())
    if n_total == 0:
        return out
    log_g = math.log(out.growth)
    lower = np.concatenate(([out.low / out.growth], out.edges))
    middle = np.log(lower) + log_g / 2
    mean_log = float(np.dot(counts, middle) / n_total)
    m2_log = float(np.dot(counts, (middle - mean_log) ** 2)) + n_total * log_g**2 / 12
    total = total_seconds if total_seconds > 0 else float(np.dot(counts, np.exp(middle)))
    out.add_binned(counts, mean_log, m2_log, total)
    return out


def score_counts(cumulative: Mapping[float, float], bins: int) -> np.ndarray:
    """Per-bin counts of a :class:`ScoreHistogram` with ``bins`` bins over [0, 1] from
    cumulative ``le`` buckets (:data:`SCORE_BUCKETS`, multiples of 1/bins, and +Inf).

    Bucket ``(b - 1/bins, b]`` is bin ``b * bins - 1``. Prometheus buckets are closed
    above and the bins below, so a score exactly on a bound sits one bin lower than
    ``ScoreHistogram.update`` would put it: the order of the bins is the same, and the AUC
    depends on nothing else. Scores above 1 (the +Inf bucket) are clipped into the last
    bin, as ``ScoreHistogram.update`` clips them.
    """
    counts = np.zeros(bins, dtype=np.int64)
    previous = 0.0
    for bound in sorted(cumulative):
        n = max(round(cumulative[bound] - previous), 0)
        previous = max(previous, cumulative[bound])
        if n:
            index = round(bound * bins) - 1 if math.isfinite(bound) else bins - 1
            counts[min(max(index, 0), bins - 1)] += n
    return counts


def code_kind(code: str | None) -> str:
    """``ok``, ``client`` (4xx: the caller's fault, not the model's) or ``server`` (5xx)."""
    if code is None or code in ("", "OK"):
        return "ok"
    if code.isdigit():
        return "server" if code.startswith("5") else "client" if code.startswith("4") else "ok"
    return "client" if code in _GRPC_CLIENT_CODES else "server"
