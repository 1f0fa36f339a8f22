"""The gate's output: a Decision with per-KPI Evidence, serialisable to JSON and back."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any


class Action(str, Enum):
    """What the controller should do after an evaluation."""

    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"


class Verdict(str, Enum):
    """What the evidence says about one KPI."""

    WORSE = "worse"  # confidently worse than the rollback threshold
    LIMIT_BREACHED = "limit_breached"  # candidate's own value confidently past its hard limit
    OUTSIDE_CONTROL_LIMITS = "outside_control_limits"  # confidently past registry μ ∓ kσ
    NON_INFERIOR = "non_inferior"  # confidently within the (stage-scaled) margin
    BETTER = "better"  # confidently better than the baseline
    INCONCLUSIVE = "inconclusive"  # neither yet: more samples needed
    INSUFFICIENT_DATA = "insufficient_data"  # too little data for an estimate
    REPORTED = "reported"  # info KPI: estimate only
    NO_REGRESSION = "no_regression"  # while baking: the change detector has not alarmed
    # Its values describe the served answer, so a shadow stage (or the bake) cannot compare
    # the roles: excluded from that stage's decision (neither blocks nor rolls back).
    NOT_MEASURABLE = "not_measurable"

    @property
    def blocks_rollout(self) -> bool:
        """Verdicts that call for a rollback."""
        return self in (Verdict.WORSE, Verdict.LIMIT_BREACHED, Verdict.OUTSIDE_CONTROL_LIMITS)


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: map them to None so the audit log stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Evidence:
    """One KPI's evidence at one evaluation.

    ``delta``, ``lower`` and ``upper`` are on the tested scale (``statistic`` says which),
    oriented so that **positive means the candidate is better**. ``upper`` is the
    anytime-valid rollback bound (level ``alpha_rollback``), ``lower`` the promotion bound
    (level ``alpha_promote``). Rollback when ``upper < rollback_threshold``; the KPI allows
    promotion when ``lower > promote_threshold``.
    """

    kpi: str
    kind: str
    role: str
    direction: str
    verdict: Verdict
    reason: str
    statistic: str = ""
    baseline_value: float = math.nan
    candidate_value: float = math.nan
    delta: float = math.nan
    lower: float = math.nan
    upper: float = math.nan
    rollback_threshold: float = math.nan
    promote_threshold: float = math.nan
    margin: str | None = None
    limit: float | None = None
    samples: int = 0
    samples_needed: int | None = None
    alpha_rollback: float = math.nan
    alpha_promote: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping (NaN becomes null)."""
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        """Inverse of :meth:`to_dict`."""
        kwargs: dict[str, Any] = {}
        floats = {"baseline_value", "candidate_value", "delta", "lower", "upper",
                  "rollback_threshold", "promote_threshold", "alpha_rollback", "alpha_promote"}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "verdict":
                value = Verdict(value)
            elif f.name in floats:
                value = _nan(value)
            kwargs[f.name] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class Check:
    """A stage requirement (samples, dwell) and whether it is met."""

    name: str
    seen: float
    needed: float
    met: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping."""
        return _clean(asdict(self))


@dataclass(frozen=True)
class Decision:
    """The gate's answer for one evaluation: action, reason and the evidence behind it."""

    action: Action
    reason: str
    stage_index: int
    stage_name: str
    next_stage_index: int | None = None
    evidence: tuple[Evidence, ...] = ()
    checks: tuple[Check, ...] = ()
    timed_out: bool = False
    alert: bool = False
    alpha_rollback_per_test: float = math.nan
    rollback_tests: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def evidence_for(self, kpi: str) -> Evidence:
        """The evidence entry of ``kpi`` (``KeyError`` if absent)."""
        for ev in self.evidence:
            if ev.kpi == kpi:
                return ev
        raise KeyError(kpi)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready mapping (the audit log's and the PR comment's format)."""
        return {
            "action": self.action.value,
            "reason": self.reason,
            "stage_index": self.stage_index,
            "stage_name": self.stage_name,
            "next_stage_index": self.next_stage_index,
            "evidence": [e.to_dict() for e in self.evidence],
            "checks": [c.to_dict() for c in self.checks],
            "timed_out": self.timed_out,
            "alert": self.alert,
            "alpha_rollback_per_test": _clean(self.alpha_rollback_per_test),
            "rollback_tests": self.rollback_tests,
            "meta": _clean(self.meta),
        }

    def to_json(self, **kwargs: Any) -> str:
        """Strict JSON (no NaN)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """Inverse of :meth:`to_dict`."""
        return cls(
            action=Action(data["action"]),
            reason=data["reason"],
            stage_index=int(data["stage_index"]),
            stage_name=data["stage_name"],
            next_stage_index=data.get("next_stage_index"),
            evidence=tuple(Evidence.from_dict(e) for e in data.get("evidence", [])),
            checks=tuple(Check(**c) for c in data.get("checks", [])),
            timed_out=bool(data.get("timed_out", False)),
            alert=bool(data.get("alert", False)),
            alpha_rollback_per_test=_nan(data.get("alpha_rollback_per_test")),
            rollback_tests=int(data.get("rollback_tests", 0)),
            meta=dict(data.get("meta") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> Decision:
        """Parse :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))
