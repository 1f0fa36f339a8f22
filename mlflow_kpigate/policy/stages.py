"""Validation of ``stages`` and ``stage_defaults``, including the ``shadow,5,25,100`` shortcut.

``on_timeout`` defaults to ``hold_and_alert``, except on the last canary stage (the last
before 100%), where it defaults to ``rollback``: a candidate that could not show
non-inferiority at the largest canary share should not keep serving that share
indefinitely. Setting ``on_timeout`` on the stage or in ``stage_defaults`` overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.policy.model import MinSamples, Stage
from mlflow_kpigate.policy.problems import (
    Problems,
    as_duration,
    as_enum,
    as_mapping,
    as_name,
    as_number,
    join_path,
    type_name,
)
from mlflow_kpigate.policy.vocabulary import OnTimeout

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


def _validate_stage(p: Problems, path: str, raw: Any, defaults: Mapping[str, Any],
                    index: int) -> Stage | None:
    st = as_mapping(p, path, raw)
    if st is None:
        return None
    p.unknown_keys(path, st, _STAGE_KEYS)
    merged = {**defaults, **st}
    shadow = merged.get("shadow", False)
    if not isinstance(shadow, bool):
        p.add(join_path(path, "shadow"), f"must be true or false, got {type_name(shadow)}")
        shadow = False
    if shadow:
        if "traffic" in st and st["traffic"] not in (0, None):
            p.add(join_path(path, "traffic"), "a shadow stage serves no traffic: remove 'traffic'")
        traffic: float | None = 0.0
    elif "traffic" not in st:
        p.add(path, "needs 'traffic' (percent of requests to the candidate) or 'shadow: true'")
        traffic = None
    else:
        traffic = as_number(p, join_path(path, "traffic"), st["traffic"], lo=0, hi=100,
                            lo_open=True)
    final = traffic is not None and traffic >= 100
    if final:
        extra = [k for k in st if k in _STAGE_DEFAULT_KEYS]
        for key in extra:
            p.add(join_path(path, key), "the final 100% stage is the promotion itself and is not "
                  "evaluated; move this to an earlier stage")
    ok = True
    ms_raw = merged.get("min_samples", {})
    if isinstance(defaults.get("min_samples"), Mapping) and isinstance(ms_raw, Mapping):
        # A stage that sets only `labelled` keeps stage_defaults' `requests` (and vice versa).
        ms_raw = {**defaults["min_samples"], **ms_raw}
    min_samples = MinSamples()
    ms = as_mapping(p, join_path(path, "min_samples"), ms_raw)
    if ms is None:
        ok = False
    else:
        p.unknown_keys(join_path(path, "min_samples"), ms, _MIN_SAMPLES_KEYS)
        req = ms.get("requests", MinSamples.requests)
        lab = ms.get("labelled", MinSamples.labelled)
        r = as_number(p, join_path(path, "min_samples.requests"), req, lo=0, integer=True)
        la = as_number(p, join_path(path, "min_samples.labelled"), lab, lo=0, integer=True)
        if r is None or la is None:
            ok = False
        else:
            min_samples = MinSamples(requests=int(r), labelled=int(la))
    dwell = as_duration(p, join_path(path, "min_dwell"), merged.get("min_dwell", 0))
    max_raw = merged.get("max_duration")
    max_duration = (None if max_raw is None
                    else as_duration(p, join_path(path, "max_duration"), max_raw))
    if max_raw is not None and max_duration is not None and max_duration <= 0:
        p.add(join_path(path, "max_duration"), "must be > 0 (or omit it for no time limit)")
        ok = False
    if dwell is not None and max_duration is not None and dwell > max_duration:
        p.add(join_path(path, "max_duration"),
              f"({format_duration(max_duration)}) is shorter than min_dwell "
              f"({format_duration(dwell)}); raise max_duration or lower min_dwell")
        ok = False
    on_timeout = as_enum(p, join_path(path, "on_timeout"),
                         merged.get("on_timeout", OnTimeout.HOLD_AND_ALERT.value), OnTimeout)
    scale = as_number(p, join_path(path, "promote_margin_scale"),
                      merged.get("promote_margin_scale", 1.0), lo=1.0)
    name = st.get("name")
    if name is not None:
        name = as_name(p, join_path(path, "name"), name)
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


def validate_stages(p: Problems, raw: Any, defaults_raw: Any) -> tuple[Stage, ...]:
    """``stages`` (a list or the shortcut string) with ``stage_defaults`` merged in."""
    defaults: Mapping[str, Any] = {}
    if defaults_raw is not None:
        d = as_mapping(p, "stage_defaults", defaults_raw)
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
    explicit_timeout: list[bool] = []
    for i, item in enumerate(raw):
        path = f"stages[{i}]"
        if isinstance(item, bool):
            p.add(path, "must be a mapping or a percentage")
            parsed.append(None)
            explicit_timeout.append(False)
            continue
        if isinstance(item, (int, float)):
            item = {"traffic": item}
        elif isinstance(item, str) and item.strip().lower() == "shadow":
            item = {"shadow": True}
        stage = _validate_stage(p, path, item, defaults, i)
        parsed.append(stage)
        explicit_timeout.append("on_timeout" in defaults
                                or (isinstance(item, Mapping) and "on_timeout" in item))
    stages = [s for s in parsed if s is not None]
    if len(stages) != len(parsed):
        return tuple(stages)
    last = len(stages) - 2  # the last stage before the final 100% one
    if (last >= 0 and stages[-1].is_final and not stages[last].shadow
            and not explicit_timeout[last]):
        stages[last] = replace(stages[last], on_timeout=OnTimeout.ROLLBACK)
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

