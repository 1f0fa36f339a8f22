"""What a bake decision says, for people: time baked and left, the detectors against their
thresholds, and how a baked rollout ended.

A bake evaluation (:mod:`mlflow_kpigate.gate.bake`) keeps its progress and its change
detectors in ``decision.meta["bake"]``; the status command, ``watch``, the report, the
pull-request comment and the Prometheus exposition all read it through :func:`bake_view`
so they say the same thing. :func:`outcome_words` names a rollout's outcome with the bake
in it ("promoted after a 24h bake", "rolled back after promotion").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_kpigate.core.decision import Decision
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.state import Phase, RolloutState


@dataclass(frozen=True)
class DetectorView:
    """One change detector: its statistic and threshold, both as natural logs."""

    kpi: str
    label: str
    log_statistic: float  # -inf before its first increment
    log_threshold: float
    steps: int

    @property
    def margin(self) -> float:
        """log threshold − log statistic: how far from an alarm (≤ 0: alarmed)."""
        return self.log_threshold - self.log_statistic

    def describe(self) -> str:
        """``recall 21.4 of threshold 1.73e+05``."""
        name = self.kpi if self.label in ("", self.kpi) else f"{self.kpi} [{self.label}]"
        return f"{name} {fmt_e(self.log_statistic)} of threshold {fmt_e(self.log_threshold)}"


@dataclass(frozen=True)
class BakeView:
    """A bake's progress as of one evaluation."""

    elapsed_s: float
    duration_s: float
    detectors: tuple[DetectorView, ...]

    @property
    def remaining_s(self) -> float:
        """Time left until the bake may end (0 once it is over)."""
        return max(self.duration_s - self.elapsed_s, 0.0)

    @property
    def closest(self) -> DetectorView | None:
        """The detector nearest to its alarm."""
        return min(self.detectors, key=lambda d: d.margin, default=None)

    def line(self) -> str:
        """``12m of the 1h bake, 48m left; closest to an alarm: recall 3.1 of threshold …``."""
        text = (f"{format_duration(self.elapsed_s)} of the {format_duration(self.duration_s)} "
                f"bake, {format_duration(self.remaining_s)} left")
        closest = self.closest
        if closest is not None and closest.steps > 0:
            text += f"; closest to an alarm: {closest.describe()}"
        return text


def fmt_e(log_value: float) -> str:
    """An e-value for people: ``<0.001`` when negligible, ``e^812.3`` past float range."""
    if log_value < math.log(1e-3):
        return "<0.001"
    return f"{math.exp(log_value):.3g}" if log_value < 700 else f"e^{log_value:.1f}"


def _float(value: Any, default: float) -> float:
    return default if value is None else float(value)


def bake_view(decision: Decision | Mapping[str, Any] | None) -> BakeView | None:
    """The bake's progress recorded in ``decision`` (None for a decision made outside it)."""
    data = decision.to_dict() if isinstance(decision, Decision) else decision
    bake = ((data or {}).get("meta") or {}).get("bake")
    if not isinstance(bake, Mapping):
        return None
    detectors = tuple(
        DetectorView(str(s.get("kpi", "")), str(s.get("label", "")),
                     _float(s.get("log_statistic"), -math.inf),
                     _float(s.get("log_threshold"), math.inf), int(s.get("steps", 0)))
        for s in bake.get("streams") or ())
    return BakeView(_float(bake.get("elapsed_s"), 0.0), _float(bake.get("duration_s"), 0.0),
                    detectors)


def outcome_words(state: RolloutState) -> str:
    """The phase in words, with the bake: ``rolled back after promotion``, ``baking`` …"""
    if state.bake_started_at is not None and state.phase is Phase.ROLLED_BACK:
        return "rolled back after promotion"
    if state.phase is Phase.BAKING:
        return "promoted, baking"
    return state.phase.value.replace("_", " ")
