"""Numbers and times as report text: KPI values in their units, signed differences,
intervals, counts, timestamps and spans.

Missing or non-finite numbers render as :data:`DASH`. Shared by the report, the
pull-request comment and (through the KPI table) the console, so a value reads the same
wherever it is shown.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.policy import KpiKind, KpiSpec

DASH = "—"


def finite(value: object) -> bool:
    """Whether ``value`` is a finite number (None, NaN and ±inf are not)."""
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def seconds_kpi(kpi: KpiSpec | None) -> bool:
    """Whether ``kpi``'s values are seconds (latency quantiles and log-scale means)."""
    return kpi is not None and (kpi.kind is KpiKind.QUANTILE
                                or (kpi.kind is KpiKind.MEAN and kpi.log))


def fmt_value(value: float | None, kpi: KpiSpec | None = None) -> str:
    """A KPI value in its units (latency in ms), ``—`` when missing."""
    if not finite(value):
        return DASH
    assert value is not None
    if seconds_kpi(kpi):
        return f"{value * 1000:.1f} ms"
    return f"{value:.4g}"


def fmt_delta(value: float | None) -> str:
    """A signed difference on the tested scale, ``—`` when missing."""
    return f"{value:+.4g}" if finite(value) else DASH


def fmt_interval(lower: float | None, upper: float | None) -> str:
    """``[lower, upper]``; ``—`` when neither bound is known."""
    if not finite(lower) and not finite(upper):
        return DASH
    return f"[{fmt_delta(lower)}, {fmt_delta(upper)}]"


def fmt_time(ts: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM:SS UTC``, ``—`` when missing."""
    if not finite(ts):
        return DASH
    assert ts is not None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_span(seconds: float) -> str:
    """Elapsed time such as ``15m10s`` (``0s`` under a second)."""
    return format_duration(seconds) if seconds >= 1 else "0s"
