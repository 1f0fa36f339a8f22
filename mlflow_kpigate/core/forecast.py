"""The time-to-decision forecast as a value: per stage, when the gate could decide.

:mod:`mlflow_kpigate.gate.forecast` computes a :class:`Forecast`; the controller keeps it in
the decision's ``meta["forecast"]`` (beside the gate's output, not part of it), and every
surface reads it back through :func:`forecast_view` so they all say the same thing:
``kpigate status``/``watch``, the report, the pull-request comment and the Prometheus
exposition; ``kpigate plan --traffic`` and ``mlflow deployments create -C expected_rps``
print the same rows before a rollout starts.

Times are seconds *relative to the forecast's time* ``at``: the current stage starts at
``-elapsed`` (≤ 0), later stages at their forecast start. ``math.inf`` means "not at this
traffic" (no units arrive, or the KPI cannot reach its threshold); JSON has no infinity,
so :meth:`Forecast.to_dict` writes ``null`` for it and :meth:`Forecast.from_dict` reads it
back as ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlflow_kpigate.core.durations import format_duration

INF = math.inf
#: What ``binds`` says when a stage requirement, not a KPI, sets the decision time.
MIN_DWELL, MIN_SAMPLES = "min_dwell", "min_samples"


def _num(value: Any) -> float:
    """A stored number back from JSON (``null`` is infinity: "never at this traffic")."""
    return INF if value is None else float(value)


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


def fmt_eta(seconds: float) -> str:
    """``~45 min``, ``~3.2 h``, ``~12.5 d``; ``never at this traffic`` for infinity."""
    if not math.isfinite(seconds):
        return "never at this traffic"
    if seconds <= 0:
        return "now"
    if seconds < 2 * 3600:
        return f"~{max(seconds / 60, 1):.0f} min"
    if seconds < 72 * 3600:
        return f"~{seconds / 3600:.1f} h"
    return f"~{seconds / 86400:.1f} d"


def fmt_rate(per_second: float) -> str:
    """A rate per second with enough digits (``3.5/s``, ``0.012/s``)."""
    if not math.isfinite(per_second):
        return "n/a"
    return f"{per_second:.3g}/s"


@dataclass(frozen=True)
class KpiEta:
    """One decisive KPI in one stage: when its evidence would suffice (relative seconds)."""

    kpi: str
    unit: str  # e.g. "labelled negative"
    equal_s: float  # an equal candidate's promotion bound clears the stage's threshold
    at_margin_s: float  # a candidate worse by the KPI's ``detect`` is rolled back
    more_units: float = math.nan  # candidate units still needed for ``equal_s`` (this stage)
    unit_rate: float = math.nan  # candidate units per second reaching the gate in the stage


@dataclass(frozen=True)
class StageEta:
    """One gated stage: when it starts and when the gate could decide (relative seconds)."""

    stage_index: int
    stage: str
    start_s: float
    equal_s: float  # an equal candidate is promoted (the latest requirement: ``binds``)
    at_margin_s: float  # a candidate at −detect on its slowest KPI is rolled back
    binds: str  # a KPI name, ``min_dwell`` or ``min_samples``
    margin_binds: str = ""  # the KPI slowest to catch a candidate at −detect
    max_duration_s: float | None = None
    on_timeout: str = ""
    kpis: tuple[KpiEta, ...] = ()

    @property
    def duration_s(self) -> float:
        """How long the stage lasts for an equal candidate (from its start)."""
        return self.equal_s - self.start_s

    @property
    def margin_duration_s(self) -> float:
        """How long after its start a candidate at −detect is rolled back in this stage."""
        return self.at_margin_s - self.start_s

    @property
    def exceeds_max_duration(self) -> bool:
        """The stage cannot decide for an equal candidate within its ``max_duration``."""
        return self.max_duration_s is not None and self.duration_s > self.max_duration_s

    def kpi(self, name: str) -> KpiEta | None:
        """The entry of KPI ``name`` (None if it has none)."""
        return next((k for k in self.kpis if k.kpi == name), None)


@dataclass(frozen=True)
class Forecast:
    """When each remaining gated stage could decide, at the traffic the forecast assumes.

    ``request_rate`` is the live requests per second reaching the router,
    ``labels_per_request`` the share of requests whose label reaches the gate, after
    ``label_lag_s``; ``basis`` says where those figures come from (measured in which
    stage, ``-C expected_rps``, ``--traffic``). ``notes`` name KPIs left out and why.
    """

    at: float
    stage_index: int
    request_rate: float
    labels_per_request: float
    label_lag_s: float
    basis: str
    stages: tuple[StageEta, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def current(self) -> StageEta | None:
        """The stage the rollout is in (the first row)."""
        return next((s for s in self.stages if s.stage_index == self.stage_index), None)

    @property
    def full_rollout_s(self) -> float:
        """When an equal candidate would pass the last gated stage (relative seconds)."""
        return self.stages[-1].equal_s if self.stages else INF

    def stage(self, index: int) -> StageEta | None:
        """The row of stage ``index``."""
        return next((s for s in self.stages if s.stage_index == index), None)

    def line(self) -> str:
        """``~3.2 h to decide at canary-5 (fpr_fairness binds; 41,000 more labelled …)``."""
        cur = self.current
        if cur is None:
            return "no forecast: " + ("; ".join(self.notes) or "nothing to forecast")
        text = f"{fmt_eta(cur.equal_s)} to decide at {cur.stage} ({self._why(cur)})"
        if len(self.stages) > 1:
            text += f"; full rollout {fmt_eta(self.full_rollout_s)}"
        if math.isfinite(cur.at_margin_s) or cur.margin_binds:
            text += (f"; a candidate at −detect is rolled back {_when(cur.at_margin_s)}"
                     + (f" ({cur.margin_binds} slowest)" if cur.margin_binds else ""))
        return text

    @staticmethod
    def _why(stage: StageEta) -> str:
        if stage.binds == MIN_DWELL:
            return "min dwell binds"
        if stage.binds == MIN_SAMPLES:
            return "min samples bind"
        eta = stage.kpi(stage.binds)
        if eta is None:
            return f"{stage.binds} binds" if stage.binds else "no KPI estimate yet"
        if math.isfinite(eta.more_units) and eta.more_units > 0 and eta.unit:
            return (f"{stage.binds} binds; {eta.more_units:,.0f} more {eta.unit}s at "
                    f"{fmt_rate(eta.unit_rate)}")
        return f"{stage.binds} binds"

    def path(self) -> str:
        """``5% ~3.2 h → 25% ~40.0 h → 50% ~7.2 d``: each stage's length (the current
        one's time left)."""
        def left(s: StageEta) -> float:
            return s.equal_s if s.stage_index == self.stage_index else s.duration_s

        return " → ".join(f"{s.stage} {fmt_eta(left(s))}" for s in self.stages)

    def basis_line(self) -> str:
        """``2 requests/s, 100% labelled after 60 min (measured over 3.0 h of 5%)``."""
        when = f"after {fmt_eta(self.label_lag_s).lstrip('~')}" if self.label_lag_s > 0 \
            else "at once"
        return (f"{self.request_rate:.3g} requests/s, {self.labels_per_request:.0%} labelled "
                f"{when} ({self.basis})")

    def warnings(self) -> list[str]:
        """One line per stage that cannot decide within its ``max_duration``."""
        out = []
        for s in self.stages:
            if s.exceeds_max_duration and s.max_duration_s is not None:
                then = {"rollback": "it will be rolled back then",
                        "hold_and_alert": "it will hold and alert then",
                        "promote_if_no_guardrail_fails": "it will promote without having "
                                                         "shown non-inferiority"
                        }.get(s.on_timeout, f"on_timeout {s.on_timeout} applies")
                out.append(f"{s.stage} cannot decide within its max_duration "
                           f"{format_duration(s.max_duration_s)} at {self.request_rate:g} "
                           f"requests/s: an equal candidate needs {fmt_eta(s.duration_s)} "
                           f"({s.binds} binds); {then}")
        return out

    def rows(self) -> list[list[str]]:
        """Table rows: stage, starts, decides (equal), lasts, −detect caught, binds, limit."""
        out = []
        for s in self.stages:
            limit = DASH if s.max_duration_s is None else format_duration(s.max_duration_s)
            if s.exceeds_max_duration:
                limit += " (exceeded)"
            out.append([s.stage, _when(s.start_s), _when(s.equal_s), fmt_eta(s.duration_s),
                        fmt_eta(s.margin_duration_s), s.binds or DASH,
                        s.margin_binds or DASH, limit])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (infinity as null)."""
        data = asdict(self)
        return _json(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Forecast:
        """Inverse of :meth:`to_dict`."""
        stages = []
        for s in data.get("stages") or ():
            kpis = tuple(KpiEta(str(k["kpi"]), str(k.get("unit", "")), _num(k.get("equal_s")),
                                _num(k.get("at_margin_s")),
                                _nan(k.get("more_units")), _nan(k.get("unit_rate")))
                         for k in s.get("kpis") or ())
            limit = s.get("max_duration_s")
            stages.append(StageEta(int(s["stage_index"]), str(s["stage"]), _num(s["start_s"]),
                                   _num(s.get("equal_s")), _num(s.get("at_margin_s")),
                                   str(s.get("binds", "")), str(s.get("margin_binds", "")),
                                   None if limit is None else float(limit),
                                   str(s.get("on_timeout", "")), kpis))
        return cls(float(data["at"]), int(data["stage_index"]), _nan(data.get("request_rate")),
                   _nan(data.get("labels_per_request")), _nan(data.get("label_lag_s")),
                   str(data.get("basis", "")), tuple(stages),
                   tuple(str(n) for n in data.get("notes") or ()))


#: Table headers of :meth:`Forecast.rows`.
HEADERS = ["stage", "starts", "equal candidate promoted", "stage lasts",
           "−detect caught after", "binds", "−detect slowest", "max_duration"]
DASH = "—"
#: The key of the decision's ``meta`` that carries the forecast.
META_KEY = "forecast"


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _when(relative_s: float) -> str:
    """A relative time: ``in ~3.2 h``, ``now``, ``~2.0 h ago``."""
    if not math.isfinite(relative_s):
        return "never at this traffic"
    if relative_s < 0:
        return f"{fmt_eta(-relative_s)} ago"
    if relative_s == 0:
        return "now"
    return f"in {fmt_eta(relative_s)}"


def forecast_view(decision: Any) -> Forecast | None:
    """The forecast a decision (a :class:`~.decision.Decision` or its dict) carries."""
    data = decision.to_dict() if hasattr(decision, "to_dict") else decision
    meta = (data or {}).get("meta") or {}
    raw = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    if not isinstance(raw, Mapping):
        return None
    try:
        return Forecast.from_dict(raw)
    except (KeyError, TypeError, ValueError):
        return None  # a record from another version: show nothing rather than fail


__all__ = ["HEADERS", "INF", "META_KEY", "MIN_DWELL", "MIN_SAMPLES", "Forecast", "KpiEta",
           "StageEta", "fmt_eta", "fmt_rate", "forecast_view"]
