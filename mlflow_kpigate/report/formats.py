"""Numbers and times as report text: KPI values in their units, signed differences,
intervals, counts, timestamps and spans.

Missing or non-finite numbers render as :data:`DASH`. Shared by the report, the
pull-request comment and (through :mod:`.kpi_table`) the console, so a value reads the
same wherever it is shown; where the renderers differ (the console's blanks, fixed
decimals and visible infinities), a :class:`NumberStyle` says how, not a second copy of
the formatting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeGuard

from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.policy import KpiKind, KpiSpec

DASH = "—"


def finite(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a finite number (None, NaN and ±inf are not)."""
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def seconds_kpi(kpi: KpiSpec | None) -> bool:
    """Whether ``kpi``'s values are seconds (latency quantiles and log-scale means)."""
    return kpi is not None and (kpi.kind is KpiKind.QUANTILE
                                or (kpi.kind is KpiKind.MEAN and kpi.log))


@dataclass(frozen=True)
class NumberStyle:
    """How a renderer writes the numbers of a table; the formatting itself is shared.

    The documents (report, pull-request comment) use :data:`DOCUMENT`; the console's
    columns (``kpigate status``, ``kpigate simulate``) use their own, terser style.
    """

    #: Text of a number that is not known.
    missing: str = DASH
    #: ±inf is shown as it is (an unbounded value); else it counts as missing.
    keep_infinite: bool = False
    #: Format spec of signed numbers: Δ, bounds and thresholds.
    signed: str = "+.4g"
    #: A pair (bounds, thresholds) is shown whole when its first number is known; else
    #: when either is known, the other written as missing.
    pair_on_first: bool = False
    #: Between samples seen and samples needed.
    samples_sep: str = " / "
    #: Samples needed is left out when unknown or zero (else written as missing).
    omit_unknown_target: bool = False

    def known(self, value: float | None) -> bool:
        """Whether ``value`` is written as a number in this style."""
        if finite(value):
            return True
        return (self.keep_infinite and isinstance(value, (int, float))
                and not math.isnan(value))


#: The report's and the pull-request comment's style: ``—`` for anything missing.
DOCUMENT = NumberStyle()


def fmt_value(value: float | None, kpi: KpiSpec | None = None,
              style: NumberStyle = DOCUMENT) -> str:
    """A KPI value in its units (latency in ms), ``—`` when missing."""
    if not style.known(value):
        return style.missing
    assert value is not None
    if seconds_kpi(kpi):
        return f"{value * 1000:.1f} ms"
    return f"{value:.4g}"


def fmt_difference(candidate: float | None, baseline: float | None, kpi: KpiSpec | None = None,
                   style: NumberStyle = DOCUMENT) -> str:
    """candidate − baseline in the KPI's units (latency in ms): positive means the
    candidate's value is larger, whichever direction is better; missing when either is."""
    if candidate is None or baseline is None or not (
            style.known(candidate) and style.known(baseline)):
        return style.missing
    diff = candidate - baseline
    if not math.isfinite(diff):
        return style.missing
    if seconds_kpi(kpi):
        return f"{diff * 1000:+.1f} ms"
    return format(diff, style.signed)


def fmt_margin(margin: str | None, baseline: float | None, kpi: KpiSpec | None = None,
               style: NumberStyle = DOCUMENT) -> str:
    """The margin as the policy wrote it, in the KPI's units too where that differs (a
    relative margin of a latency, ``10% (8.5 ms)``; an absolute one in ms)."""
    if not margin:
        return style.missing
    spec = kpi.margin if kpi is not None else None
    if spec is None or not seconds_kpi(kpi):
        return margin
    if not spec.relative:
        return f"{spec.value * 1000:.1f} ms"
    if finite(baseline):
        return f"{margin} ({spec.value * baseline * 1000:.1f} ms)"
    return margin


def fmt_delta(value: float | None, style: NumberStyle = DOCUMENT) -> str:
    """A signed difference on the tested scale, ``—`` when missing."""
    return format(value, style.signed) if style.known(value) else style.missing


def _pair(first: float | None, second: float | None, template: str,
          style: NumberStyle) -> str:
    if style.pair_on_first:
        if not style.known(first):
            return style.missing
        return template.format(format(first, style.signed), format(second, style.signed))
    if not style.known(first) and not style.known(second):
        return style.missing
    return template.format(fmt_delta(first, style), fmt_delta(second, style))


def fmt_interval(lower: float | None, upper: float | None,
                 style: NumberStyle = DOCUMENT) -> str:
    """``[lower, upper]``; ``—`` when neither bound is known."""
    return _pair(lower, upper, "[{}, {}]", style)


def fmt_thresholds(promote: float | None, rollback: float | None,
                   style: NumberStyle = DOCUMENT) -> str:
    """``promote / rollback`` thresholds; ``—`` when neither is known."""
    return _pair(promote, rollback, "{} / {}", style)


def fmt_count(value: float | None, style: NumberStyle = DOCUMENT) -> str:
    """A whole number with thousands separators, ``—`` when missing."""
    return f"{int(value):,}" if finite(value) else style.missing


def fmt_samples(seen: float | None, needed: float | None,
                style: NumberStyle = DOCUMENT) -> str:
    """Samples seen and samples needed: ``1,200 / 3,000``."""
    if style.omit_unknown_target and not needed:
        return fmt_count(seen, style)
    return f"{fmt_count(seen, style)}{style.samples_sep}{fmt_count(needed, style)}"


def fmt_time(ts: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM:SS UTC``, ``—`` when missing."""
    if not finite(ts):
        return DASH
    assert ts is not None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_span(seconds: float) -> str:
    """Elapsed time such as ``15m10s`` (``0s`` under a second)."""
    return format_duration(seconds) if seconds >= 1 else "0s"
