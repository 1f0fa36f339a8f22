"""The validated policy as frozen values: stages, KPIs and the optional sections.

Nothing here validates; ``policy_from_dict`` (in ``loading``) builds these only from a
document that passed every check. Every field is documented in ``docs/policy.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_kpigate.policy.vocabulary import (
    COUNT,
    LATENCY,
    Direction,
    KpiKind,
    OnTimeout,
    ReadinessAction,
    RequestsFrom,
    Role,
)


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
    # The harmful effect the rollback check is tuned to find (None: 1.75 × margin).
    detect: Margin | None = None
    # Weight of this KPI's rollback checks in the split of alpha_rollback.
    alpha_weight: float = 1.0

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

    @property
    def depends_on_served_answer(self) -> bool:
        """Whether the KPI is computed from per-request values (business values posted with
        labels, or a custom query's values) that describe the outcome of the answer the
        caller was *served*. In a shadow stage (and the bake) both roles' rows carry the
        served role's values, so such a KPI cannot compare them there: it is "not
        measurable in shadow"."""
        if self.kind is KpiKind.BUSINESS:
            return True
        if self.kind is KpiKind.MEAN:
            return self.source != LATENCY
        return self.kind is KpiKind.PROPORTION and self.metric == "custom"


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
    """When and how strictly the gate evaluates.

    ``window_share`` is the share of ``alpha_rollback`` spent on the recent-window check
    (the current stage's stratum on its own, :mod:`mlflow_kpigate.gate.window`); 0 turns
    it off and leaves every decision as it was before the check existed.
    """

    interval: float = 300.0
    maturity: float = 0.0
    alpha_rollback: float = 0.05
    alpha_promote: float = 0.05
    power: float = 0.8
    window_share: float = 0.0


#: The bake's default target average run length to a false alarm: 30 days.
DEFAULT_BAKE_ARL = 30 * 86400.0


@dataclass(frozen=True)
class Bake:
    """Watching after promotion (``bake``): how long the previous version keeps scoring as
    a shadow while a change detector watches Δ, and how rarely it may raise a false alarm.

    ``arl`` is the target average run length to a false alarm, in time: with evaluations
    every ``interval`` the detector's threshold is ``arl / interval`` evaluations
    (:mod:`mlflow_kpigate.gate.change_detector`). ``kpis`` names the watched KPIs; empty
    means every critical and guardrail KPI. ``duration`` 0 means no bake.
    """

    duration: float = 0.0
    arl: float = DEFAULT_BAKE_ARL
    kpis: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether the rollout bakes after its final stage is approved."""
        return self.duration > 0


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
    # Other https hosts than Slack's and PagerDuty's, and http on loopback (alert_urls).
    allow_custom_hosts: bool = False


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
    bake: Bake = field(default_factory=Bake)
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

    @property
    def baked_kpis(self) -> tuple[KpiSpec, ...]:
        """The KPIs the bake's change detector watches (critical and guardrail ones)."""
        chosen = set(self.bake.kpis)
        return tuple(k for k in self.kpis if k.decides and (not chosen or k.name in chosen))

    def kpi(self, name: str) -> KpiSpec:
        """The KPI called ``name`` (``KeyError`` if there is none)."""
        for kpi in self.kpis:
            if kpi.name == name:
                return kpi
        raise KeyError(name)

