"""The rollout policy: stages, KPIs, error budget and registry guard, validated from YAML.

A policy is written once per model (the counterpart of Argo Rollouts' AnalysisTemplate or
Flagger's ``analysis`` block). ``load_policy`` turns a YAML file into frozen dataclasses or
raises :class:`~mlflow_kpigate.core.errors.PolicyError` listing *every* problem, each as
``path.in.file: what is wrong and how to fix it``. Every field is documented in
``docs/policy.md``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from mlflow_kpigate.core.durations import format_duration, parse_duration
from mlflow_kpigate.core.errors import PolicyError


class Role(str, Enum):
    """What a KPI is allowed to decide."""

    CRITICAL = "critical"  # any confident degradation (margin 0) rolls back
    GUARDRAIL = "guardrail"  # confident degradation beyond the margin rolls back
    SUCCESS = "success"  # the improvement the candidate is for: reported, never rolls back
    INFO = "info"  # reported only


class Direction(str, Enum):
    """Which way is better for a KPI."""

    HIGHER = "higher"
    LOWER = "lower"


class KpiKind(str, Enum):
    """How a KPI is measured, which fixes its estimator and variance (see docs/statistics.md)."""

    PROPORTION = "proportion"
    MEAN = "mean"
    QUANTILE = "quantile"
    AUC = "auc"
    FAIRNESS = "fairness"
    BUSINESS = "business"


class OnTimeout(str, Enum):
    """What happens when a stage reaches ``max_duration`` without a promote or rollback."""

    HOLD_AND_ALERT = "hold_and_alert"
    ROLLBACK = "rollback"
    PROMOTE_IF_NO_GUARDRAIL_FAILS = "promote_if_no_guardrail_fails"


#: Proportion metrics computed from the confusion matrix, with their better direction.
PROPORTION_METRICS: dict[str, Direction] = {
    "precision": Direction.HIGHER,
    "recall": Direction.HIGHER,
    "f1": Direction.HIGHER,
    "accuracy": Direction.HIGHER,
    "true_negative_rate": Direction.HIGHER,
    "false_positive_rate": Direction.LOWER,
    "false_negative_rate": Direction.LOWER,
    "error_rate": Direction.LOWER,
}

#: Rates whose ratio across segments a fairness KPI compares.
FAIRNESS_RATES: tuple[str, ...] = (
    "false_positive_rate",
    "false_negative_rate",
    "recall",
    "precision",
    "accuracy",
    "positive_rate",
)

#: The latency source name (seconds, measured by the router for every request).
LATENCY = "latency"
#: The business-KPI denominator meaning "per labelled prediction".
COUNT = "count"


@dataclass(frozen=True)
class Margin:
    """A non-inferiority margin: absolute (in the KPI's units) or relative (a fraction)."""

    value: float
    relative: bool

    def __str__(self) -> str:
        if self.relative:
            return f"{self.value * 100:g}%"
        return f"{self.value:g}"


@dataclass(frozen=True)
class KpiSpec:
    """One KPI of the policy; see ``docs/policy.md`` for each field."""

    name: str
    kind: KpiKind
    direction: Direction
    role: Role
    margin: Margin | None = None
    limit: float | None = None
    metric: str | None = None
    source: str | None = None
    log: bool = False
    q: float | None = None
    segment_by: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    registry_metric: str | None = None
    description: str | None = None

    @property
    def decides(self) -> bool:
        """Whether this KPI can trigger rollback or block promotion."""
        return self.role in (Role.CRITICAL, Role.GUARDRAIL)

    @property
    def needs_labels(self) -> bool:
        """Whether the KPI is computed from labelled predictions (vs. every request)."""
        if self.kind in (KpiKind.QUANTILE,):
            return False
        if self.kind is KpiKind.MEAN and self.source == LATENCY:
            return False
        return not (self.kind is KpiKind.PROPORTION and self.metric == "error_rate")


@dataclass(frozen=True)
class MinSamples:
    """Minimum candidate samples in a stage before it may be promoted."""

    requests: int = 1000
    labelled: int = 100


@dataclass(frozen=True)
class Stage:
    """One step of the rollout. ``traffic`` is the candidate's share in percent (0 in shadow)."""

    name: str
    traffic: float
    shadow: bool = False
    min_samples: MinSamples = field(default_factory=MinSamples)
    min_dwell: float = 0.0
    max_duration: float | None = None
    on_timeout: OnTimeout = OnTimeout.HOLD_AND_ALERT
    promote_margin_scale: float = 1.0

    @property
    def is_final(self) -> bool:
        """The final stage (100%) is the promotion itself: nothing is evaluated in it."""
        return not self.shadow and self.traffic >= 100.0

    def describe(self) -> str:
        """Short label such as ``shadow`` or ``25%``."""
        return "shadow" if self.shadow else f"{self.traffic:g}%"


@dataclass(frozen=True)
class Evaluation:
    """When and how strictly the gate evaluates."""

    interval: float = 300.0
    maturity: float = 0.0
    alpha_rollback: float = 0.05
    alpha_promote: float = 0.05
    power: float = 0.8


@dataclass(frozen=True)
class ControlLimits:
    """The registry guard: rollback when the candidate is confidently beyond μ ∓ kσ."""

    k: float | None = None

    @property
    def enabled(self) -> bool:
        """True when a σ multiple is set."""
        return self.k is not None


@dataclass(frozen=True)
class AlertsConfig:
    """Alert channels; secrets come from the named environment variables."""

    slack_webhook_env: str | None = None
    pagerduty_key_env: str | None = None
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    min_severity: str = "warning"


class RequestsFrom(str, Enum):
    """Which Prometheus series give a cluster rollout's requests, errors and latency."""

    SELDON = "seldon"  # Seldon's own executor / model-server metrics
    KPIGATE = "kpigate"  # the in-cluster kpigate collector's kpigate_stage_* series

    def __str__(self) -> str:
        return self.value


class ReadinessAction(str, Enum):
    """What happens when a stage's traffic is not ready within ``readiness.timeout``."""

    HOLD = "hold"  # alert and keep waiting
    ABORT = "abort"  # send all traffic to the baseline and end the rollout

    def __str__(self) -> str:
        # The controller reads it with str(); Python 3.11 would otherwise give the member name.
        return self.value


#: Placeholders a custom PromQL template may use (see :data:`QUERY_PLACEHOLDER`).
QUERY_PLACEHOLDERS: tuple[str, ...] = (
    "deployment", "namespace", "role", "stage", "window", "start", "end",
)
#: ``{name}`` in a template. PromQL's own braces always hold ``label="value"`` matchers,
#: never a bare word, so they need no escaping.
QUERY_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class PrometheusSettings:
    """Where a cluster rollout reads its metrics and how patiently (``metrics.prometheus``)."""

    url: str | None = None
    timeout: float = 10.0
    retries: int = 3
    max_wait: float = 60.0
    requests_from: RequestsFrom | None = None  # None: seldon for Seldon v1, else kpigate


@dataclass(frozen=True)
class KpiQuery:
    """Custom PromQL feeding one KPI's values (``metrics.queries.<kpi>``).

    ``count`` counts the units (sessions, orders …) of one role in one stage, ``sum`` adds
    the KPI's value over them and ``sum_squares`` its squares.
    """

    kpi: str
    count: str
    sum: str
    sum_squares: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    """The ``metrics`` section: the Prometheus connection and custom KPI queries."""

    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    queries: tuple[KpiQuery, ...] = ()

    def query(self, kpi_name: str) -> KpiQuery | None:
        """The custom query of the KPI called ``kpi_name``, if it has one."""
        return next((q for q in self.queries if q.kpi == kpi_name), None)


@dataclass(frozen=True)
class Readiness:
    """How long a stage's traffic may take to become ready (``readiness``)."""

    timeout: float = 600.0
    on_timeout: ReadinessAction = ReadinessAction.HOLD


@dataclass(frozen=True)
class Policy:
    """A validated rollout policy."""

    stages: tuple[Stage, ...]
    kpis: tuple[KpiSpec, ...]
    evaluation: Evaluation = field(default_factory=Evaluation)
    control_limits: ControlLimits = field(default_factory=ControlLimits)
    alerts: AlertsConfig | None = None
    name: str | None = None
    version: int = 1
    source: str | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    readiness: Readiness = field(default_factory=Readiness)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def gated_stages(self) -> tuple[Stage, ...]:
        """Stages in which the gate evaluates (all but the final 100% stage)."""
        return tuple(s for s in self.stages if not s.is_final)

    @property
    def segment_fields(self) -> tuple[str, ...]:
        """Segment fields the collector must keep (from fairness KPIs), in policy order."""
        seen: dict[str, None] = {}
        for kpi in self.kpis:
            if kpi.segment_by:
                seen.setdefault(kpi.segment_by, None)
        return tuple(seen)

    @property
    def value_names(self) -> tuple[str, ...]:
        """Named per-prediction values the collector must keep (business/custom KPIs)."""
        seen: dict[str, None] = {}
        for kpi in self.kpis:
            for name in (kpi.numerator, kpi.denominator):
                if name and name != COUNT:
                    seen.setdefault(name, None)
            if kpi.kind is KpiKind.MEAN and kpi.source and kpi.source != LATENCY:
                seen.setdefault(kpi.source, None)
        return tuple(seen)

    def kpi(self, name: str) -> KpiSpec:
        """The KPI called ``name`` (``KeyError`` if there is none)."""
        for kpi in self.kpis:
            if kpi.name == name:
                return kpi
        raise KeyError(name)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

_TOP_KEYS = ("version", "name", "evaluation", "stages", "stage_defaults", "kpis", "control_limits",
             "alerts", "metrics", "readiness")
_EVAL_KEYS = ("interval", "maturity", "alpha_rollback", "alpha_promote", "power")
_STAGE_KEYS = (
    "name",
    "traffic",
    "shadow",
    "min_samples",
    "min_dwell",
    "max_duration",
    "on_timeout",
    "promote_margin_scale",
)
_STAGE_DEFAULT_KEYS = tuple(k for k in _STAGE_KEYS if k not in ("name", "traffic", "shadow"))
_MIN_SAMPLES_KEYS = ("requests", "labelled")
_KPI_KEYS = (
    "name",
    "kind",
    "direction",
    "role",
    "margin",
    "limit",
    "metric",
    "source",
    "log",
    "q",
    "segment_by",
    "numerator",
    "denominator",
    "registry_metric",
    "description",
)
# Fields each kind accepts beyond the common ones; anything else is flagged.
_COMMON_KPI_KEYS = {"name", "kind", "direction", "role", "margin", "limit", "registry_metric",
                    "description"}
_KIND_KEYS: dict[KpiKind, set[str]] = {
    KpiKind.PROPORTION: {"metric", "numerator", "denominator"},
    KpiKind.MEAN: {"source", "log"},
    KpiKind.QUANTILE: {"source", "q"},
    KpiKind.AUC: set(),
    KpiKind.FAIRNESS: {"metric", "segment_by"},
    KpiKind.BUSINESS: {"numerator", "denominator"},
}


class _Problems:
    """Collects ``path: message`` lines so that validation reports every problem at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def unknown_keys(self, path: str, mapping: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        for key in mapping:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = (f"; did you mean {hint[0]!r}?" if hint
                          else f"; allowed: {', '.join(allowed)}")
            self.add(_join(path, str(key)), f"unknown field{suggestion}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "a number", float: "a number", str: "text",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _number(p: _Problems, path: str, value: Any, *, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
            integer: bool = False) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        p.add(path, f"must be a number, got {_type_name(value)}")
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


def _duration(p: _Problems, path: str, value: Any) -> float | None:
    try:
        return parse_duration(value)
    except ValueError as exc:
        p.add(path, str(exc))
        return None


def _enum(p: _Problems, path: str, value: Any, enum: type[Enum]) -> Any:
    allowed = [e.value for e in enum]  # type: ignore[attr-defined]
    if value in allowed:
        return enum(value)
    hint = difflib.get_close_matches(str(value), allowed, n=1)
    extra = f"did you mean {hint[0]!r}? " if hint else ""
    p.add(path, f"must be one of {', '.join(allowed)}; got {value!r}. {extra}".rstrip())
    return None


def _mapping(p: _Problems, path: str, value: Any) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping):
        p.add(path, f"must be a mapping (key: value lines), got {_type_name(value)}")
        return None
    return value


def _name(p: _Problems, path: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        p.add(path, "must be a non-empty name")
        return None
    if any(c.isspace() for c in value) or not all(c.isalnum() or c in "_-." for c in value):
        p.add(path, f"{value!r}: use letters, digits, '_', '-' or '.' only")
        return None
    return value


def direction_is_higher(raw: Mapping[str, Any], kind: KpiKind, metric: Any) -> bool:
    """Whether a KPI being validated is higher-is-better (explicit or by default)."""
    if raw.get("direction") in ("higher", "lower"):
        return raw["direction"] == "higher"
    if kind in (KpiKind.AUC, KpiKind.FAIRNESS):
        return True
    if kind is KpiKind.PROPORTION and isinstance(metric, str) and metric in PROPORTION_METRICS:
        return PROPORTION_METRICS[metric] is Direction.HIGHER
    return False


def parse_margin(value: Any) -> Margin:
    """Parse ``0.02`` (absolute) or ``"10%"`` (relative). Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError("must be a number (absolute) or a percentage such as '10%'")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be > 0, got {value:g}")
        return Margin(float(value), relative=False)
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            pct = float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage such as '10%'") from None
        if not math.isfinite(pct) or pct <= 0 or pct > 1000:
            raise ValueError(f"a relative margin must be above 0% and at most 1000%, "
                             f"got {value!r}")
        return Margin(pct / 100.0, relative=True)
    raise ValueError("must be a number (absolute) or a percentage such as '10%'")


def parse_stage_shortcut(text: str) -> list[dict[str, Any]]:
    """Turn ``shadow,5,25,50,100`` into stage mappings (raises ``ValueError``)."""
    stages: list[dict[str, Any]] = []
    for i, part in enumerate(p.strip() for p in str(text).split(",")):
        if not part:
            raise ValueError(f"item {i + 1} is empty; write e.g. 'shadow,5,25,50,100'")
        if part.lower() == "shadow":
            stages.append({"shadow": True})
            continue
        try:
            stages.append({"traffic": float(part.rstrip("%"))})
        except ValueError:
            raise ValueError(
                f"item {i + 1} ({part!r}) is neither 'shadow' nor a percentage; "
                "write e.g. 'shadow,5,25,50,100'"
            ) from None
    return stages


def _validate_stage(p: _Problems, path: str, raw: Any, defaults: Mapping[str, Any],
                    index: int) -> Stage | None:
    st = _mapping(p, path, raw)
    if st is None:
        return None
    p.unknown_keys(path, st, _STAGE_KEYS)
    merged = {**defaults, **st}
    shadow = merged.get("shadow", False)
    if not isinstance(shadow, bool):
        p.add(_join(path, "shadow"), f"must be true or false, got {_type_name(shadow)}")
        shadow = False
    if shadow:
        if "traffic" in st and st["traffic"] not in (0, None):
            p.add(_join(path, "traffic"), "a shadow stage serves no traffic: remove 'traffic'")
        traffic: float | None = 0.0
    elif "traffic" not in st:
        p.add(path, "needs 'traffic' (percent of requests to the candidate) or 'shadow: true'")
        traffic = None
    else:
        traffic = _number(p, _join(path, "traffic"), st["traffic"], lo=0, hi=100, lo_open=True)
    final = traffic is not None and traffic >= 100
    if final:
        extra = [k for k in st if k in _STAGE_DEFAULT_KEYS]
        for key in extra:
            p.add(_join(path, key), "the final 100% stage is the promotion itself and is not "
                  "evaluated; move this to an earlier stage")
    ok = True
    ms_raw = merged.get("min_samples", {})
    if isinstance(defaults.get("min_samples"), Mapping) and isinstance(ms_raw, Mapping):
        # A stage that sets only `labelled` keeps stage_defaults' `requests` (and vice versa).
        ms_raw = {**defaults["min_samples"], **ms_raw}
    min_samples = MinSamples()
    ms = _mapping(p, _join(path, "min_samples"), ms_raw)
    if ms is None:
        ok = False
    else:
        p.unknown_keys(_join(path, "min_samples"), ms, _MIN_SAMPLES_KEYS)
        req = ms.get("requests", MinSamples.requests)
        lab = ms.get("labelled", MinSamples.labelled)
        r = _number(p, _join(path, "min_samples.requests"), req, lo=0, integer=True)
        la = _number(p, _join(path, "min_samples.labelled"), lab, lo=0, integer=True)
        if r is None or la is None:
            ok = False
        else:
            min_samples = MinSamples(requests=int(r), labelled=int(la))
    dwell = _duration(p, _join(path, "min_dwell"), merged.get("min_dwell", 0))
    max_raw = merged.get("max_duration")
    max_duration = None if max_raw is None else _duration(p, _join(path, "max_duration"), max_raw)
    if max_raw is not None and max_duration is not None and max_duration <= 0:
        p.add(_join(path, "max_duration"), "must be > 0 (or omit it for no time limit)")
        ok = False
    if dwell is not None and max_duration is not None and dwell > max_duration:
        p.add(_join(path, "max_duration"),
              f"({format_duration(max_duration)}) is shorter than min_dwell "
              f"({format_duration(dwell)}); raise max_duration or lower min_dwell")
        ok = False
    on_timeout = _enum(p, _join(path, "on_timeout"),
                       merged.get("on_timeout", OnTimeout.HOLD_AND_ALERT.value), OnTimeout)
    scale = _number(p, _join(path, "promote_margin_scale"),
                    merged.get("promote_margin_scale", 1.0), lo=1.0)
    name = st.get("name")
    if name is not None:
        name = _name(p, _join(path, "name"), name)
    if traffic is None or dwell is None or on_timeout is None or scale is None or not ok:
        return None
    label = name or ("shadow" if shadow else f"canary-{traffic:g}" if not final else "full")
    return Stage(
        name=label,
        traffic=traffic,
        shadow=shadow,
        min_samples=min_samples,
        min_dwell=dwell,
        max_duration=max_duration,
        on_timeout=on_timeout,
        promote_margin_scale=scale,
    )


def _validate_stages(p: _Problems, raw: Any, defaults_raw: Any) -> tuple[Stage, ...]:
    defaults: Mapping[str, Any] = {}
    if defaults_raw is not None:
        d = _mapping(p, "stage_defaults", defaults_raw)
        if d is not None:
            p.unknown_keys("stage_defaults", d, _STAGE_DEFAULT_KEYS)
            defaults = {k: v for k, v in d.items() if k in _STAGE_DEFAULT_KEYS}
    if isinstance(raw, str):
        try:
            raw = parse_stage_shortcut(raw)
        except ValueError as exc:
            p.add("stages", str(exc))
            return ()
    if not isinstance(raw, list) or not raw:
        p.add("stages", "must be a non-empty list of stages ending with traffic: 100 "
              "(or a shortcut string such as 'shadow,5,25,50,100')")
        return ()
    stages: list[Stage] = []
    parsed: list[Stage | None] = []
    for i, item in enumerate(raw):
        path = f"stages[{i}]"
        if isinstance(item, bool):
            p.add(path, "must be a mapping or a percentage")
            parsed.append(None)
            continue
        if isinstance(item, (int, float)):
            item = {"traffic": item}
        elif isinstance(item, str) and item.strip().lower() == "shadow":
            item = {"shadow": True}
        stage = _validate_stage(p, path, item, defaults, i)
        parsed.append(stage)
    stages = [s for s in parsed if s is not None]
    if len(stages) != len(parsed):
        return tuple(stages)
    for i, stage in enumerate(stages):
        if stage.shadow and i != 0:
            p.add(f"stages[{i}].shadow", "only the first stage can be a shadow stage")
    traffic = [s.traffic for s in stages if not s.shadow]
    for i in range(1, len(stages)):
        a, b = stages[i - 1], stages[i]
        if not a.shadow and not b.shadow and b.traffic <= a.traffic:
            p.add(f"stages[{i}].traffic", f"must be greater than the previous stage's "
                  f"{a.traffic:g}; traffic only increases during a rollout")
    if not traffic or traffic[-1] != 100:
        p.add(f"stages[{len(stages) - 1}]", "the last stage must be traffic: 100 (full rollout)")
    if len(stages) < 2:
        p.add("stages", "needs at least one evaluated stage before the final 100% stage")
    names = [s.name for s in stages]
    for i, n in enumerate(names):
        if names.index(n) != i:
            p.add(f"stages[{i}].name", f"{n!r} is already used by stages[{names.index(n)}]")
    return tuple(stages)


def _validate_kpi(p: _Problems, path: str, raw: Any) -> KpiSpec | None:
    k = _mapping(p, path, raw)
    if k is None:
        return None
    p.unknown_keys(path, k, _KPI_KEYS)
    name = _name(p, _join(path, "name"), k.get("name")) if "name" in k else None
    if "name" not in k:
        p.add(path, "needs a 'name'")
    if "kind" not in k:
        p.add(path, f"needs a 'kind' ({', '.join(e.value for e in KpiKind)})")
        return None
    kind = _enum(p, _join(path, "kind"), k["kind"], KpiKind)
    if kind is None:
        return None
    allowed = _COMMON_KPI_KEYS | _KIND_KEYS[kind]
    for key in k:
        if key in _KPI_KEYS and key not in allowed:
            p.add(_join(path, key), f"does not apply to kind {kind.value}; remove it")
    before = len(p.items)
    metric = k.get("metric")
    source = k.get("source")
    numerator = k.get("numerator")
    denominator = k.get("denominator")
    log = k.get("log", False)
    q = None
    segment_by = k.get("segment_by")
    default_direction: Direction | None = None

    if kind is KpiKind.PROPORTION:
        if metric is None:
            p.add(path, "needs 'metric' (one of "
                  f"{', '.join([*PROPORTION_METRICS, 'custom'])})")
        elif metric == "custom":
            for key, val in (("numerator", numerator), ("denominator", denominator)):
                if val is None:
                    p.add(path, f"a custom proportion needs '{key}' (a counter name)")
                else:
                    _name(p, _join(path, key), val)
        elif not isinstance(metric, str) or metric not in PROPORTION_METRICS:
            _enum_problem(p, _join(path, "metric"), metric, [*PROPORTION_METRICS, "custom"])
        else:
            default_direction = PROPORTION_METRICS[metric]
            for key in ("numerator", "denominator"):
                if key in k:
                    p.add(_join(path, key), "only for metric: custom; remove it")
    elif kind is KpiKind.MEAN:
        if source is None:
            p.add(path, "needs 'source': 'latency' or the name of a logged value")
        else:
            _name(p, _join(path, "source"), source)
        if "log" in k and not isinstance(log, bool):
            p.add(_join(path, "log"), "must be true or false")
            log = False
        if "log" not in k:
            log = source == LATENCY
        elif isinstance(log, bool) and log != (source == LATENCY) and source is not None:
            if source == LATENCY:
                p.add(_join(path, "log"), "latency means are compared on the log scale "
                      "(heavy tails); remove 'log: false' or use a quantile KPI")
            else:
                p.add(_join(path, "log"), "only latency is compared on the log scale; "
                      "logged values are compared as plain means: remove 'log'")
        if source == LATENCY:
            default_direction = Direction.LOWER
    elif kind is KpiKind.QUANTILE:
        if source not in (None, LATENCY):
            p.add(_join(path, "source"), "quantile KPIs are measured on 'latency' only")
        source = LATENCY
        default_direction = Direction.LOWER
        if "q" not in k:
            p.add(path, "needs 'q', the quantile as a fraction (0.95 for p95)")
        else:
            q = _number(p, _join(path, "q"), k["q"], lo=0.5, hi=1, hi_open=True)
    elif kind is KpiKind.AUC:
        default_direction = Direction.HIGHER
    elif kind is KpiKind.FAIRNESS:
        default_direction = Direction.HIGHER
        if metric is None:
            p.add(path, f"needs 'metric', the rate compared across segments "
                  f"({', '.join(FAIRNESS_RATES)})")
        elif metric not in FAIRNESS_RATES:
            _enum_problem(p, _join(path, "metric"), metric, list(FAIRNESS_RATES))
        if segment_by is None:
            p.add(path, "needs 'segment_by', the field whose values are the segments")
        else:
            _name(p, _join(path, "segment_by"), segment_by)
    elif kind is KpiKind.BUSINESS:
        if numerator is None:
            p.add(path, "needs 'numerator' (a logged value such as approved_amount)")
        else:
            _name(p, _join(path, "numerator"), numerator)
        if denominator is None:
            p.add(path, "needs 'denominator' (a logged value, or 'count' for per prediction)")
        else:
            _name(p, _join(path, "denominator"), denominator)

    direction = None
    if "direction" in k:
        direction = _enum(p, _join(path, "direction"), k["direction"], Direction)
        if (kind is KpiKind.FAIRNESS and direction is Direction.LOWER):
            p.add(_join(path, "direction"), "a fairness index (min/max ratio) is always "
                  "higher-is-better; remove 'direction'")
    elif default_direction is None and (
            kind in (KpiKind.MEAN, KpiKind.BUSINESS)
            or (kind is KpiKind.PROPORTION and metric == "custom")):
        # (an unknown proportion metric is reported above; it does not also need a direction)
        p.add(path, "needs 'direction' (higher or lower is better) for this metric")
    direction = direction or default_direction

    role = _enum(p, _join(path, "role"), k.get("role", Role.GUARDRAIL.value), Role)
    margin = None
    if "margin" in k:
        try:
            margin = parse_margin(k["margin"])
        except ValueError as exc:
            p.add(_join(path, "margin"), str(exc))
        else:
            if margin.relative and margin.value >= 1 and (
                    kind is KpiKind.FAIRNESS or direction_is_higher(k, kind, metric)):
                p.add(_join(path, "margin"), f"{margin} would allow the KPI to drop to zero "
                      "or below; a higher-is-better KPI needs a relative margin under 100%")
            needs_relative = kind is KpiKind.FAIRNESS or (kind is KpiKind.MEAN and log)
            if needs_relative and not margin.relative:
                what = "a fairness ratio" if kind is KpiKind.FAIRNESS else "a log-scale mean"
                p.add(_join(path, "margin"), f"{what} needs a relative margin such as '10%'")
            if (not margin.relative and kind in (KpiKind.PROPORTION, KpiKind.AUC)
                    and margin.value >= 1):
                p.add(_join(path, "margin"), f"{margin.value:g} is not below 1; proportions "
                      "are fractions (write 0.02 for two points, or '2%' for relative)")
    elif role in (Role.CRITICAL, Role.GUARDRAIL):
        p.add(path, f"a {role.value} KPI needs a 'margin' (the non-inferiority margin: an "
              "absolute number in the KPI's units or a percentage such as '5%')")
    limit = None
    if "limit" in k and k["limit"] is not None:
        limit = _number(p, _join(path, "limit"), k["limit"])
        if limit is not None and kind in (KpiKind.PROPORTION, KpiKind.AUC, KpiKind.FAIRNESS) \
                and not 0 <= limit <= 1:
            p.add(_join(path, "limit"), f"must be between 0 and 1 for a {kind.value} KPI")
        if limit is not None and kind is KpiKind.QUANTILE and limit <= 0:
            p.add(_join(path, "limit"), "must be > 0 seconds")
    registry_metric = k.get("registry_metric")
    if registry_metric is not None and not isinstance(registry_metric, str):
        p.add(_join(path, "registry_metric"), "must be the name of a metric in the MLflow run")
    description = k.get("description")
    if description is not None and not isinstance(description, str):
        p.add(_join(path, "description"), "must be text")
    if len(p.items) > before or name is None or role is None or direction is None:
        return None
    return KpiSpec(
        name=name,
        kind=kind,
        direction=direction,
        role=role,
        margin=margin,
        limit=limit,
        metric=metric,
        source=source,
        log=bool(log),
        q=q,
        segment_by=segment_by,
        numerator=numerator,
        denominator=denominator,
        registry_metric=registry_metric,
        description=description,
    )


def _enum_problem(p: _Problems, path: str, value: Any, allowed: list[str]) -> None:
    hint = difflib.get_close_matches(str(value), allowed, n=1)
    extra = f" Did you mean {hint[0]!r}?" if hint else ""
    p.add(path, f"must be one of {', '.join(allowed)}; got {value!r}.{extra}")


def _env_name(p: _Problems, path: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value or not all(
            c.isalnum() or c == "_" for c in value) or value[0].isdigit():
        p.add(path, "must be the NAME of an environment variable holding the secret "
              "(e.g. KPIGATE_SLACK_WEBHOOK), not the secret itself")
        return None
    return value


def _secret_env(p: _Problems, path: str, section: Mapping[str, Any], key: str,
                what: str) -> str | None:
    """The environment-variable name under ``section[key]`` (required)."""
    if key not in section:
        p.add(path, f"needs '{key}' (the environment variable holding {what})")
        return None
    return _env_name(p, f"{path}.{key}", section[key])


def _validate_alerts(p: _Problems, raw: Any) -> AlertsConfig | None:
    cfg = _mapping(p, "alerts", raw)
    if cfg is None:
        return None
    p.unknown_keys("alerts", cfg, ("slack", "pagerduty", "min_severity"))
    slack_env = pd_env = None
    pd_url = AlertsConfig.pagerduty_url
    if "slack" in cfg:
        slack = _mapping(p, "alerts.slack", cfg["slack"])
        if slack is not None:
            p.unknown_keys("alerts.slack", slack, ("webhook_url_env",))
            slack_env = _secret_env(p, "alerts.slack", slack, "webhook_url_env",
                                    "the incoming-webhook URL")
    if "pagerduty" in cfg:
        pd = _mapping(p, "alerts.pagerduty", cfg["pagerduty"])
        if pd is not None:
            p.unknown_keys("alerts.pagerduty", pd, ("routing_key_env", "url"))
            pd_env = _secret_env(p, "alerts.pagerduty", pd, "routing_key_env",
                                 "the Events API v2 routing key")
            if "url" in pd:
                url = pd["url"]
                if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                    p.add("alerts.pagerduty.url", "must be an http(s) URL")
                else:
                    pd_url = url
    severity = cfg.get("min_severity", "warning")
    if severity not in ("info", "warning", "critical"):
        p.add("alerts.min_severity", f"must be info, warning or critical; got {severity!r}")
        severity = "warning"
    return AlertsConfig(slack_env, pd_env, pd_url, severity)


def _validate_readiness(p: _Problems, raw: Any) -> Readiness:
    cfg = _mapping(p, "readiness", raw)
    if cfg is None:
        return Readiness()
    p.unknown_keys("readiness", cfg, ("timeout", "on_timeout"))
    timeout = _duration(p, "readiness.timeout", cfg.get("timeout", Readiness.timeout))
    if timeout is not None and timeout <= 0:
        p.add("readiness.timeout", "must be > 0, e.g. 10m")
        timeout = None
    action = _enum(p, "readiness.on_timeout", cfg.get("on_timeout", ReadinessAction.HOLD.value),
                   ReadinessAction)
    if timeout is None or action is None:
        return Readiness()
    return Readiness(timeout, action)


def _http_url(p: _Problems, path: str, value: Any, example: str) -> str | None:
    if isinstance(value, str):
        scheme, _, rest = value.partition("://")
        host = rest.split("/", 1)[0]
        if scheme in ("http", "https") and host and not any(c.isspace() for c in value):
            return value.rstrip("/")
    p.add(path, f"must be an http(s) URL such as {example}")
    return None


def _validate_prometheus(p: _Problems, raw: Any) -> PrometheusSettings:
    path = "metrics.prometheus"
    cfg = _mapping(p, path, raw)
    if cfg is None:
        return PrometheusSettings()
    p.unknown_keys(path, cfg, ("url", "timeout", "retries", "max_wait", "requests_from"))
    default = PrometheusSettings()
    url = None
    if cfg.get("url") is not None:
        url = _http_url(p, f"{path}.url", cfg["url"],
                        "http://prometheus-operated.monitoring.svc:9090")
    timeout = _duration(p, f"{path}.timeout", cfg.get("timeout", default.timeout))
    if timeout is not None and timeout <= 0:
        p.add(f"{path}.timeout", "must be > 0, e.g. 10s")
        timeout = None
    retries = _number(p, f"{path}.retries", cfg.get("retries", default.retries), lo=0, hi=10,
                      integer=True)
    max_wait = _duration(p, f"{path}.max_wait", cfg.get("max_wait", default.max_wait))
    if max_wait is not None and timeout is not None and max_wait < timeout:
        p.add(f"{path}.max_wait", f"({format_duration(max_wait)}) is shorter than timeout "
              f"({format_duration(timeout)}), the time one query may take; raise max_wait "
              "or lower timeout")
        max_wait = None
    requests_from = None
    if cfg.get("requests_from") is not None:
        requests_from = _enum(p, f"{path}.requests_from", cfg["requests_from"], RequestsFrom)
    if None in (timeout, retries, max_wait) or (
            cfg.get("requests_from") is not None and requests_from is None):
        return default
    return PrometheusSettings(url, timeout, int(retries), max_wait,  # type: ignore[arg-type]
                              requests_from)


def _query_template(p: _Problems, path: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        p.add(path, "must be a PromQL query (text)")
        return None
    used = QUERY_PLACEHOLDER.findall(value)
    known = ", ".join(f"{{{n}}}" for n in QUERY_PLACEHOLDERS)
    unknown = [n for n in used if n not in QUERY_PLACEHOLDERS]
    ok = True
    for name in dict.fromkeys(unknown):
        hint = difflib.get_close_matches(name, QUERY_PLACEHOLDERS, n=1)
        extra = f"did you mean {{{hint[0]}}}? " if hint else ""
        p.add(path, f"unknown placeholder {{{name}}}; {extra}the placeholders are {known}")
        ok = False
    if "role" not in used:
        p.add(path, "must select one role's series with {role} (baseline or candidate)")
        ok = False
    if not {"stage", "window", "start", "end"} & set(used):
        p.add(path, "must limit the query to one stage with {window} (e.g. "
              "increase(orders_total[{window}])), {stage}, {start} or {end}; otherwise every "
              "stage would count the same data")
        ok = False
    return value if ok else None


def _query_fit(kpi: KpiSpec) -> tuple[bool, str | None]:
    """(whether a query feeding ``kpi`` needs ``sum_squares``, why no query can feed it)."""
    if kpi.kind is KpiKind.PROPORTION and kpi.metric == "custom":
        return False, None
    if kpi.kind is KpiKind.MEAN and kpi.source not in (None, LATENCY):
        return True, None
    if kpi.kind is KpiKind.BUSINESS and kpi.denominator == COUNT:
        return True, None
    if kpi.kind is KpiKind.BUSINESS:
        return False, (f"is a business KPI per {kpi.denominator!r}, whose variance needs the "
                       "covariance of two values, which per-unit sums cannot give; use "
                       "'denominator: count' with the query counting the units")
    what = kpi.kind.value + (f" ({kpi.metric})" if kpi.metric else "") + (
        f" of {kpi.source}" if kpi.source else "")
    return False, (f"is a {what} KPI; custom queries feed only custom proportions "
                   "('metric: custom'), means of a logged value and business KPIs with "
                   "'denominator: count'")


def _validate_metrics(p: _Problems, raw: Any, kpis: list[KpiSpec],
                      raw_names: set[str]) -> MetricsConfig:
    cfg = _mapping(p, "metrics", raw)
    if cfg is None:
        return MetricsConfig()
    p.unknown_keys("metrics", cfg, ("prometheus", "queries"))
    prometheus = PrometheusSettings()
    if cfg.get("prometheus") is not None:
        prometheus = _validate_prometheus(p, cfg["prometheus"])
    queries: tuple[KpiQuery, ...] = ()
    if cfg.get("queries") is not None:
        queries = _validate_queries(p, cfg["queries"], kpis, raw_names)
    return MetricsConfig(prometheus, queries)


def _validate_queries(p: _Problems, raw: Any, kpis: list[KpiSpec],
                      raw_names: set[str]) -> tuple[KpiQuery, ...]:
    path = "metrics.queries"
    cfg = _mapping(p, path, raw)
    if cfg is None:
        return ()
    by_name = {k.name: k for k in kpis}
    out: list[KpiQuery] = []
    for name, entry in cfg.items():
        where = f"{path}.{name}"
        kpi = by_name.get(str(name))
        if kpi is None:
            if name not in raw_names:  # an invalid KPI reports its own problems
                hint = difflib.get_close_matches(str(name), list(by_name), n=1)
                extra = f"did you mean {hint[0]!r}?" if hint else \
                    f"the KPIs are {', '.join(by_name) or 'none'}"
                p.add(where, f"is not the name of a KPI in 'kpis'; {extra}")
            continue
        q = _mapping(p, where, entry)
        if q is None:
            continue
        p.unknown_keys(where, q, ("count", "sum", "sum_squares"))
        before = len(p.items)
        needs_squares, why = _query_fit(kpi)
        if why is not None:
            p.add(where, f"KPI {kpi.name!r} {why}")
            continue
        templates: dict[str, str | None] = {}
        for key in ("count", "sum"):
            if key not in q:
                p.add(where, f"needs '{key}' (a PromQL query: "
                      + ("the number of units of one role in one stage)" if key == "count"
                         else "the sum of the KPI's value over those units)"))
            else:
                templates[key] = _query_template(p, f"{where}.{key}", q[key])
        squares = None
        if "sum_squares" in q:
            if not needs_squares:
                p.add(f"{where}.sum_squares", "does not apply to a proportion, whose variance "
                      "follows from its counts; remove it")
            else:
                squares = _query_template(p, f"{where}.sum_squares", q["sum_squares"])
        elif needs_squares:
            p.add(where, "needs 'sum_squares' (the sum of the squared values): a mean's "
                  "confidence interval needs the values' spread")
        if len(p.items) == before:
            out.append(KpiQuery(kpi.name, str(templates["count"]), str(templates["sum"]),
                                squares))
    if out and len(out) == len(cfg):
        _check_query_units(p, out, kpis)
    return tuple(out)


def _squash(promql: str) -> str:
    """The query without whitespace outside quoted label values (for comparing queries)."""
    parts = re.split(r'("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')', promql)
    return "".join(part if i % 2 else "".join(part.split()) for i, part in enumerate(parts))


def _check_query_units(p: _Problems, queries: list[KpiQuery], kpis: list[KpiSpec]) -> None:
    """One unit count per role for all values: the constraint of the gate's co-moments."""
    path = "metrics.queries"
    first = queries[0]
    for q in queries[1:]:
        if _squash(q.count) != _squash(first.count):
            p.add(f"{path}.{q.kpi}.count", f"differs from {path}.{first.kpi}.count; the gate "
                  "keeps one unit count per role for all values, so every query must count "
                  "the same units (write the same count query)")
    fed = {q.kpi for q in queries}
    uses: dict[str, list[tuple[str, str]]] = {}
    for kpi in kpis:
        names = [(n, "value") for n in (kpi.numerator, kpi.source) if n and n != LATENCY]
        if kpi.denominator and kpi.denominator != COUNT:
            unit = kpi.kind is KpiKind.PROPORTION and kpi.name in fed
            names.append((kpi.denominator, "unit" if unit else "value"))
        if names and kpi.name not in fed:
            p.add(path, f"KPI {kpi.name!r} uses the logged value {names[0][0]!r} but has no "
                  "query; once custom queries are used every KPI of logged values needs one, "
                  "because the gate keeps one unit count per role for all values")
        for name, use in names:
            uses.setdefault(name, []).append((kpi.name, use))
    for name, users in uses.items():
        values = [k for k, use in users if use == "value"]
        if len(values) > 1 or (values and len(users) > 1):
            p.add(path, f"the value {name!r} is used by KPIs {', '.join(k for k, _ in users)}; "
                  "each query feeds its own KPI's value, so give each KPI its own value name")


def policy_from_dict(data: Any, source: str | None = None) -> Policy:
    """Validate a parsed policy document; raise ``PolicyError`` listing every problem."""
    p = _Problems()
    if not isinstance(data, Mapping):
        raise PolicyError([f"the policy must be a YAML mapping, got {_type_name(data)}"], source)
    p.unknown_keys("", data, _TOP_KEYS)
    version = data.get("version", 1)
    if isinstance(version, bool) or version != 1:
        p.add("version", f"only version 1 is supported, got {version!r}")
    name = data.get("name")
    if name is not None:
        name = _name(p, "name", name)

    evaluation = Evaluation()
    ev_raw = data.get("evaluation", {})
    ev = _mapping(p, "evaluation", ev_raw) if ev_raw is not None else {}
    if ev is not None:
        p.unknown_keys("evaluation", ev, _EVAL_KEYS)
        interval = _duration(p, "evaluation.interval", ev.get("interval", evaluation.interval))
        if interval is not None and interval <= 0:
            p.add("evaluation.interval", "must be > 0, e.g. 5m")
            interval = None
        maturity = _duration(p, "evaluation.maturity", ev.get("maturity", evaluation.maturity))
        a_r = _number(p, "evaluation.alpha_rollback", ev.get("alpha_rollback", 0.05),
                      lo=0, hi=0.5, lo_open=True)
        a_p = _number(p, "evaluation.alpha_promote", ev.get("alpha_promote", 0.05),
                      lo=0, hi=0.5, lo_open=True)
        power = _number(p, "evaluation.power", ev.get("power", 0.8), lo=0.5, hi=1, hi_open=True)
        if None not in (interval, maturity, a_r, a_p, power):
            evaluation = Evaluation(interval, maturity, a_r, a_p, power)  # type: ignore[arg-type]

    control = ControlLimits()
    cl_raw = data.get("control_limits")
    if cl_raw is not None:
        cl = _mapping(p, "control_limits", cl_raw)
        if cl is not None:
            p.unknown_keys("control_limits", cl, ("k",))
            kval = cl.get("k")
            if kval is not None:
                kk = _number(p, "control_limits.k", kval, lo=0, lo_open=True)
                control = ControlLimits(kk)

    alerts = None if data.get("alerts") is None else _validate_alerts(p, data["alerts"])

    if "stages" not in data:
        p.add("stages", "is required (e.g. 'shadow,5,25,50,100' or a list of stages)")
        stages: tuple[Stage, ...] = ()
    else:
        stages = _validate_stages(p, data["stages"], data.get("stage_defaults"))

    kpis: list[KpiSpec] = []
    raw_kpis = data.get("kpis")
    if raw_kpis is None:
        p.add("kpis", "is required: a list of KPIs, at least one with role critical or guardrail")
    elif not isinstance(raw_kpis, list) or not raw_kpis:
        p.add("kpis", "must be a non-empty list of KPIs")
    else:
        for i, item in enumerate(raw_kpis):
            spec = _validate_kpi(p, f"kpis[{i}]", item)
            if spec is not None:
                kpis.append(spec)
        names = [k.get("name") if isinstance(k, Mapping) else None for k in raw_kpis]
        for i, n in enumerate(names):
            if n is not None and names.index(n) != i:
                p.add(f"kpis[{i}].name", f"{n!r} is already used by kpis[{names.index(n)}]")
        if kpis and len(kpis) == len(raw_kpis) and not any(k.decides for k in kpis):
            p.add("kpis", "at least one KPI must have role critical or guardrail, or "
                  "nothing could ever justify a promotion")
    metrics = MetricsConfig()
    if data.get("metrics") is not None:
        raw_names = {k.get("name") for k in raw_kpis if isinstance(k, Mapping)} \
            if isinstance(raw_kpis, list) else set()
        metrics = _validate_metrics(p, data["metrics"], kpis, raw_names)
    readiness = Readiness()
    if data.get("readiness") is not None:
        readiness = _validate_readiness(p, data["readiness"])
    if p.items:
        raise PolicyError(p.items, source)
    return Policy(
        stages=stages,
        kpis=tuple(kpis),
        evaluation=evaluation,
        control_limits=control,
        alerts=alerts,
        name=name,
        version=1,
        source=source,
        metrics=metrics,
        readiness=readiness,
        raw=dict(data),
    )


def load_policy(path: str | Path, *, override: Callable[[dict[str, Any]], None] | None = None
                ) -> Policy:
    """Read and validate a policy file. ``override`` may edit the parsed document first."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(["file not found; check the path"], source) from None
    except IsADirectoryError:
        raise PolicyError(["is a directory; give the policy YAML file"], source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"cannot be read: {exc}"], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError([f"{where}not valid YAML ({problem})"], source) from None
    if data is None:
        raise PolicyError(["is empty; see examples/policies/fraud.yaml"], source)
    if override is not None and isinstance(data, dict):
        override(data)
    return policy_from_dict(data, source)
