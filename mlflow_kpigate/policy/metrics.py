"""Validation of the ``metrics`` section: the Prometheus connection and custom KPI queries."""

from __future__ import annotations

import difflib
import re
from typing import Any

from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.policy.model import KpiQuery, KpiSpec, MetricsConfig, PrometheusSettings
from mlflow_kpigate.policy.problems import Problems, as_duration, as_enum, as_mapping, as_number
from mlflow_kpigate.policy.vocabulary import (
    COUNT,
    LATENCY,
    QUERY_PLACEHOLDER,
    QUERY_PLACEHOLDERS,
    KpiKind,
    RequestsFrom,
)


def _http_url(p: Problems, path: str, value: Any, example: str) -> str | None:
    if isinstance(value, str):
        scheme, _, rest = value.partition("://")
        host = rest.split("/", 1)[0]
        if scheme in ("http", "https") and host and not any(c.isspace() for c in value):
            return value.rstrip("/")
    p.add(path, f"must be an http(s) URL such as {example}")
    return None


def _validate_prometheus(p: Problems, raw: Any) -> PrometheusSettings:
    path = "metrics.prometheus"
    cfg = as_mapping(p, path, raw)
    if cfg is None:
        return PrometheusSettings()
    p.unknown_keys(path, cfg, ("url", "timeout", "retries", "max_wait", "requests_from"))
    default = PrometheusSettings()
    url = None
    if cfg.get("url") is not None:
        url = _http_url(p, f"{path}.url", cfg["url"],
                        "http://prometheus-operated.monitoring.svc:9090")
    timeout = as_duration(p, f"{path}.timeout", cfg.get("timeout", default.timeout))
    if timeout is not None and timeout <= 0:
        p.add(f"{path}.timeout", "must be > 0, e.g. 10s")
        timeout = None
    retries = as_number(p, f"{path}.retries", cfg.get("retries", default.retries), lo=0, hi=10,
                        integer=True)
    max_wait = as_duration(p, f"{path}.max_wait", cfg.get("max_wait", default.max_wait))
    if max_wait is not None and timeout is not None and max_wait < timeout:
        p.add(f"{path}.max_wait", f"({format_duration(max_wait)}) is shorter than timeout "
              f"({format_duration(timeout)}), the time one query may take; raise max_wait "
              "or lower timeout")
        max_wait = None
    requests_from = None
    if cfg.get("requests_from") is not None:
        requests_from = as_enum(p, f"{path}.requests_from", cfg["requests_from"], RequestsFrom)
    if timeout is None or retries is None or max_wait is None or (
            cfg.get("requests_from") is not None and requests_from is None):
        return default
    return PrometheusSettings(url, timeout, int(retries), max_wait, requests_from)


def _query_template(p: Problems, path: str, value: Any) -> str | None:
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


def validate_metrics(p: Problems, raw: Any, kpis: list[KpiSpec],
                     raw_names: set[Any]) -> MetricsConfig:
    """``metrics``; ``raw_names`` are all KPI names written, valid or not."""
    cfg = as_mapping(p, "metrics", raw)
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


def _validate_queries(p: Problems, raw: Any, kpis: list[KpiSpec],
                      raw_names: set[Any]) -> tuple[KpiQuery, ...]:
    path = "metrics.queries"
    cfg = as_mapping(p, path, raw)
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
        q = as_mapping(p, where, entry)
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


def _check_query_units(p: Problems, queries: list[KpiQuery], kpis: list[KpiSpec]) -> None:
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

