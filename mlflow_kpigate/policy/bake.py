"""Validation of ``bake``: watching the candidate after promotion.

The section is optional; without it (or with ``duration: 0s``) a rollout is promoted the
moment its final 100% stage is approved, exactly as before bakes existed. Problems are
reported like every other section's, one line naming the field.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.policy.model import DEFAULT_BAKE_ARL, Bake, KpiSpec
from mlflow_kpigate.policy.problems import Problems, as_duration, as_mapping, type_name

_BAKE_KEYS = ("duration", "arl", "kpis")


def _kpi_names(p: Problems, raw: Any, kpis: Sequence[KpiSpec]) -> tuple[str, ...] | None:
    """``bake.kpis``: names of critical or guardrail KPIs of the policy."""
    if not isinstance(raw, list) or not raw:
        p.add("bake.kpis", f"must be a non-empty list of KPI names, got {type_name(raw)} "
              "(leave it out to watch every critical and guardrail KPI)")
        return None
    by_name = {k.name: k for k in kpis}
    names: list[str] = []
    ok = True
    for i, name in enumerate(raw):
        path = f"bake.kpis[{i}]"
        if not isinstance(name, str):
            p.add(path, f"must be a KPI name, got {type_name(name)}")
            ok = False
            continue
        kpi = by_name.get(name)
        if kpi is None:
            hint = difflib.get_close_matches(name, list(by_name), n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            p.add(path, f"{name!r} is not a KPI of this policy{more}")
            ok = False
        elif not kpi.decides:
            p.add(path, f"{name!r} is a {kpi.role.value} KPI; the bake watches critical and "
                  "guardrail KPIs only")
            ok = False
        elif name in names:
            p.add(path, f"{name!r} is listed twice")
            ok = False
        else:
            names.append(name)
    return tuple(names) if ok else None


def validate_bake(p: Problems, raw: Any, kpis: Sequence[KpiSpec], interval: float | None
                  ) -> Bake:
    """``bake``: duration, the detector's target ARL, and which KPIs it watches.

    ``kpis`` are the policy's validated KPIs (for the names in ``bake.kpis``), ``interval``
    its evaluation interval (``None`` when that was invalid).
    """
    cfg = as_mapping(p, "bake", raw)
    if cfg is None:
        return Bake()
    p.unknown_keys("bake", cfg, _BAKE_KEYS)
    duration = as_duration(p, "bake.duration", cfg.get("duration", 0))
    arl = as_duration(p, "bake.arl", cfg.get("arl", DEFAULT_BAKE_ARL))
    if arl is not None and arl <= 0:
        p.add("bake.arl", "must be > 0, e.g. 30d (the average time to a false alarm)")
        arl = None
    if arl is not None and interval is not None and arl < interval:
        p.add("bake.arl", f"({format_duration(arl)}) is shorter than evaluation.interval "
              f"({format_duration(interval)}); the detector's run length counts evaluations, "
              "give e.g. 30d")
        arl = None
    if duration and arl is not None and duration is not None and arl <= duration:
        p.add("bake.arl", f"({format_duration(arl)}) is not longer than bake.duration "
              f"({format_duration(duration)}): a false alarm would be expected within every "
              "bake; raise it (e.g. 30d)")
        arl = None
    names: tuple[str, ...] | None = ()
    if "kpis" in cfg:
        names = _kpi_names(p, cfg["kpis"], kpis)
    elif duration and kpis and not any(k.decides for k in kpis):
        p.add("bake", "has no critical or guardrail KPI to watch; give one a role of "
              "critical or guardrail, or set duration: 0s")
    if duration is None or arl is None or names is None:
        return Bake()
    return Bake(duration, arl, names)
