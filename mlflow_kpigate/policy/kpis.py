"""Validation of ``kpis``: each KPI's kind-specific fields, direction, role, margin and limit,
and the rollback check's tuning (``detect``) and share of ``alpha_rollback``
(``alpha_weight``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mlflow_kpigate.policy.model import KpiSpec, Margin
from mlflow_kpigate.policy.problems import (
    Problems,
    as_enum,
    as_mapping,
    as_name,
    as_number,
    join_path,
    one_of_problem,
)
from mlflow_kpigate.policy.vocabulary import (
    FAIRNESS_RATES,
    LATENCY,
    PROPORTION_METRICS,
    Direction,
    KpiKind,
    Role,
)

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
    "detect",
    "alpha_weight",
)
# Fields each kind accepts beyond the common ones; anything else is flagged.
_COMMON_KPI_KEYS = {"name", "kind", "direction", "role", "margin", "limit", "registry_metric",
                    "description", "detect", "alpha_weight"}
_KIND_KEYS: dict[KpiKind, set[str]] = {
    KpiKind.PROPORTION: {"metric", "numerator", "denominator"},
    KpiKind.MEAN: {"source", "log"},
    KpiKind.QUANTILE: {"source", "q"},
    KpiKind.AUC: set(),
    KpiKind.FAIRNESS: {"metric", "segment_by"},
    KpiKind.BUSINESS: {"numerator", "denominator"},
}


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


def _a(role: Role) -> str:
    """``a success`` / ``an info``."""
    return f"{'an' if role.value[0] in 'aeiou' else 'a'} {role.value}"


def _check_margin(p: Problems, path: str, margin: Margin, k: Mapping[str, Any], kind: KpiKind,
                  metric: Any, log: bool) -> None:
    """The kind's limits on a margin-like value (``margin`` and ``detect``)."""
    if margin.relative and margin.value >= 1 and (
            kind is KpiKind.FAIRNESS or direction_is_higher(k, kind, metric)):
        p.add(path, f"{margin} would allow the KPI to drop to zero "
              "or below; a higher-is-better KPI needs a relative margin under 100%")
    needs_relative = kind is KpiKind.FAIRNESS or (kind is KpiKind.MEAN and log)
    if needs_relative and not margin.relative:
        what = "a fairness ratio" if kind is KpiKind.FAIRNESS else "a log-scale mean"
        p.add(path, f"{what} needs a relative margin such as '10%'")
    if (not margin.relative and kind in (KpiKind.PROPORTION, KpiKind.AUC)
            and margin.value >= 1):
        p.add(path, f"{margin.value:g} is not below 1; proportions "
              "are fractions (write 0.02 for two points, or '2%' for relative)")


def _validate_detect(p: Problems, path: str, k: Mapping[str, Any], role: Role | None,
                     margin: Margin | None, kind: KpiKind, metric: Any, log: bool
                     ) -> Margin | None:
    """``detect``: the harmful effect the rollback check is tuned to find (like a margin)."""
    if "detect" not in k:
        return None
    where = join_path(path, "detect")
    try:
        detect = parse_margin(k["detect"])
    except ValueError as exc:
        p.add(where, str(exc))
        return None
    if role in (Role.SUCCESS, Role.INFO):
        p.add(where, f"{_a(role)} KPI never rolls back on its comparison with the "
              "baseline; remove 'detect'")
        return None
    _check_margin(p, where, detect, k, kind, metric, log)
    if margin is None:
        return detect
    if detect.relative != margin.relative:
        form = "a percentage" if margin.relative else "an absolute number"
        p.add(where, f"must be written like the margin ({margin}), as {form}, so that "
              "the two can be compared")
    elif role is Role.GUARDRAIL and detect.value <= margin.value:
        p.add(where, f"{detect} must exceed the margin {margin}: a guardrail rolls back only "
              "beyond its margin, so the harm to detect lies further out (default: 1.75 × "
              "margin)")
    return detect


def _validate_kpi(p: Problems, path: str, raw: Any) -> KpiSpec | None:
    k = as_mapping(p, path, raw)
    if k is None:
        return None
    p.unknown_keys(path, k, _KPI_KEYS)
    name = as_name(p, join_path(path, "name"), k.get("name")) if "name" in k else None
    if "name" not in k:
        p.add(path, "needs a 'name'")
    if "kind" not in k:
        p.add(path, f"needs a 'kind' ({', '.join(e.value for e in KpiKind)})")
        return None
    kind = as_enum(p, join_path(path, "kind"), k["kind"], KpiKind)
    if kind is None:
        return None
    allowed = _COMMON_KPI_KEYS | _KIND_KEYS[kind]
    for key in k:
        if key in _KPI_KEYS and key not in allowed:
            p.add(join_path(path, key), f"does not apply to kind {kind.value}; remove it")
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
                    as_name(p, join_path(path, key), val)
        elif not isinstance(metric, str) or metric not in PROPORTION_METRICS:
            one_of_problem(p, join_path(path, "metric"), metric, [*PROPORTION_METRICS, "custom"])
        else:
            default_direction = PROPORTION_METRICS[metric]
            for key in ("numerator", "denominator"):
                if key in k:
                    p.add(join_path(path, key), "only for metric: custom; remove it")
    elif kind is KpiKind.MEAN:
        if source is None:
            p.add(path, "needs 'source': 'latency' or the name of a logged value")
        else:
            as_name(p, join_path(path, "source"), source)
        if "log" in k and not isinstance(log, bool):
            p.add(join_path(path, "log"), "must be true or false")
            log = False
        if "log" not in k:
            log = source == LATENCY
        elif isinstance(log, bool) and log != (source == LATENCY) and source is not None:
            if source == LATENCY:
                p.add(join_path(path, "log"), "latency means are compared on the log scale "
                      "(heavy tails); remove 'log: false' or use a quantile KPI")
            else:
                p.add(join_path(path, "log"), "only latency is compared on the log scale; "
                      "logged values are compared as plain means: remove 'log'")
        if source == LATENCY:
            default_direction = Direction.LOWER
    elif kind is KpiKind.QUANTILE:
        if source not in (None, LATENCY):
            p.add(join_path(path, "source"), "quantile KPIs are measured on 'latency' only")
        source = LATENCY
        default_direction = Direction.LOWER
        if "q" not in k:
            p.add(path, "needs 'q', the quantile as a fraction (0.95 for p95)")
        else:
            q = as_number(p, join_path(path, "q"), k["q"], lo=0.5, hi=1, hi_open=True)
    elif kind is KpiKind.AUC:
        default_direction = Direction.HIGHER
    elif kind is KpiKind.FAIRNESS:
        default_direction = Direction.HIGHER
        if metric is None:
            p.add(path, f"needs 'metric', the rate compared across segments "
                  f"({', '.join(FAIRNESS_RATES)})")
        elif metric not in FAIRNESS_RATES:
            one_of_problem(p, join_path(path, "metric"), metric, list(FAIRNESS_RATES))
        if segment_by is None:
            p.add(path, "needs 'segment_by', the field whose values are the segments")
        else:
            as_name(p, join_path(path, "segment_by"), segment_by)
    elif kind is KpiKind.BUSINESS:
        if numerator is None:
            p.add(path, "needs 'numerator' (a logged value such as approved_amount)")
        else:
            as_name(p, join_path(path, "numerator"), numerator)
        if denominator is None:
            p.add(path, "needs 'denominator' (a logged value, or 'count' for per prediction)")
        else:
            as_name(p, join_path(path, "denominator"), denominator)

    direction = None
    if "direction" in k:
        direction = as_enum(p, join_path(path, "direction"), k["direction"], Direction)
        if (kind is KpiKind.FAIRNESS and direction is Direction.LOWER):
            p.add(join_path(path, "direction"), "a fairness index (min/max ratio) is always "
                  "higher-is-better; remove 'direction'")
    elif default_direction is None and (
            kind in (KpiKind.MEAN, KpiKind.BUSINESS)
            or (kind is KpiKind.PROPORTION and metric == "custom")):
        # (an unknown proportion metric is reported above; it does not also need a direction)
        p.add(path, "needs 'direction' (higher or lower is better) for this metric")
    direction = direction or default_direction

    role = as_enum(p, join_path(path, "role"), k.get("role", Role.GUARDRAIL.value), Role)
    margin = None
    if "margin" in k:
        try:
            margin = parse_margin(k["margin"])
        except ValueError as exc:
            p.add(join_path(path, "margin"), str(exc))
        else:
            _check_margin(p, join_path(path, "margin"), margin, k, kind, metric, bool(log))
    elif role in (Role.CRITICAL, Role.GUARDRAIL):
        p.add(path, f"a {role.value} KPI needs a 'margin' (the non-inferiority margin: an "
              "absolute number in the KPI's units or a percentage such as '5%')")
    detect = _validate_detect(p, path, k, role, margin, kind, metric, bool(log))
    limit = None
    if "limit" in k and k["limit"] is not None:
        limit = as_number(p, join_path(path, "limit"), k["limit"])
        if limit is not None and kind in (KpiKind.PROPORTION, KpiKind.AUC, KpiKind.FAIRNESS) \
                and not 0 <= limit <= 1:
            p.add(join_path(path, "limit"), f"must be between 0 and 1 for a {kind.value} KPI")
        if limit is not None and kind is KpiKind.QUANTILE and limit <= 0:
            p.add(join_path(path, "limit"), "must be > 0 seconds")
    registry_metric = k.get("registry_metric")
    if registry_metric is not None and not isinstance(registry_metric, str):
        p.add(join_path(path, "registry_metric"), "must be the name of a metric in the MLflow run")
    description = k.get("description")
    if description is not None and not isinstance(description, str):
        p.add(join_path(path, "description"), "must be text")
    alpha_weight = 1.0
    if "alpha_weight" in k:
        weight = as_number(p, join_path(path, "alpha_weight"), k["alpha_weight"], lo=0,
                           lo_open=True)
        alpha_weight = weight if weight is not None else 1.0
        if role in (Role.SUCCESS, Role.INFO) and limit is None and "limit" not in k:
            p.add(join_path(path, "alpha_weight"), f"{_a(role)} KPI without a 'limit' has "
                  "no rollback check to weight; remove it")
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
        detect=detect,
        alpha_weight=alpha_weight,
    )


def validate_kpis(p: Problems, raw: Any) -> list[KpiSpec]:
    """``kpis``: every KPI, unique names, and at least one KPI that can decide."""
    kpis: list[KpiSpec] = []
    if raw is None:
        p.add("kpis", "is required: a list of KPIs, at least one with role critical or guardrail")
        return kpis
    if not isinstance(raw, list) or not raw:
        p.add("kpis", "must be a non-empty list of KPIs")
        return kpis
    for i, item in enumerate(raw):
        spec = _validate_kpi(p, f"kpis[{i}]", item)
        if spec is not None:
            kpis.append(spec)
    names = [k.get("name") if isinstance(k, Mapping) else None for k in raw]
    for i, n in enumerate(names):
        if n is not None and names.index(n) != i:
            p.add(f"kpis[{i}].name", f"{n!r} is already used by kpis[{names.index(n)}]")
    if kpis and len(kpis) == len(raw) and not any(k.decides for k in kpis):
        p.add("kpis", "at least one KPI must have role critical or guardrail, or "
              "nothing could ever justify a promotion")
    return kpis
