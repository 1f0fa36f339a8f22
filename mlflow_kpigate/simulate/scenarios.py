"""Named scenarios and the scenario file format (YAML or JSON).

A scenario file holds one scenario, or several under ``scenarios:``::

    name: recall-minus-5
    description: candidate misses more fraud
    stream:
      requests_per_interval: 100000   # all requests in one evaluation interval
      requests_per_second: 2          # or: a rate (times the policy's interval; not both)
      prevalence: 0.015
      segment_field: region
      segments: {eu: 0.5, us: 0.3, apac: 0.2}   # traffic shares
      label_delay: 0s                 # labels arrive this long after the prediction
      horizon: 48                     # evaluation intervals before the run stops, or a
                                      # duration such as 30d (default: enough for every
                                      # stage's max_duration)
    baseline:                         # the serving model's truth
      recall: 0.876
      precision: 0.918
      latency_mean_ms: 85
      latency_log_sd: 0.35
      error_rate: 0.001
    candidate:                        # changes relative to the baseline
      recall_delta: -0.05
      precision_delta: 0.0
      latency_delta_ms: 0
      error_rate: 0.001               # absolute
      fpr_multiplier: {eu: 1.5}       # per-segment false-positive-rate factors
      recall_drift: 0.0               # recall change, linear over the drift's span
      drift_start: 0s                 # when the drift starts: a duration after the
                                      # rollout's start, or "promotion" (the first interval
                                      # in which the candidate serves 100%)
      drift_duration: 4h              # how long the drift takes (default: until the
                                      # horizon's last interval)
      correlation: 0.8                # correlation of the two models' latent values on a
                                      # request, where both answer it (shadow, bake)

``requests_per_second``, a duration ``horizon``, ``drift_start`` and ``drift_duration``
were added in Gate v2 (decision-efficiency benchmark); a file without them means what it
meant before. ``candidate.correlation`` (optional, default 0.8, in [0, 0.999]) came with
paired shadow comparisons: where both models score every request their outcomes are drawn
jointly (:mod:`.paired_stream`); split traffic is drawn as before. Errors name the
offending field (``scenario.stream.horizon: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlflow_kpigate.core.datafiles import read_yaml_or_json
from mlflow_kpigate.core.durations import parse_duration
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.simulate.stream import RoleModel, StreamSpec

_STREAM_KEYS = {"requests_per_interval", "requests_per_second", "prevalence", "segment_field",
                "segments", "label_delay", "horizon"}
_BASE_KEYS = {"recall", "precision", "latency_mean_ms", "latency_log_sd", "error_rate"}
_CAND_KEYS = {"recall_delta", "precision_delta", "latency_delta_ms", "error_rate",
              "fpr_multiplier", "recall_drift", "drift_start", "drift_duration",
              "correlation"}
#: ``candidate.drift_start`` value that starts the drift when the candidate has 100%.
PROMOTION = "promotion"


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            raise UsageError(f"{where}.{key}: unknown field; allowed: {', '.join(sorted(allowed))}")


def _num(where: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: must be a number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UsageError(f"{where}: must be between {lo} and {hi}, got {value}")
    return float(value)


def scenario_from_dict(data: Any, where: str = "scenario") -> StreamSpec:
    """Build a :class:`StreamSpec` from a mapping (raises ``UsageError`` naming the field)."""
    if not isinstance(data, Mapping):
        raise UsageError(f"{where}: must be a mapping")
    _check_keys(where, data, {"name", "description", "stream", "baseline", "candidate"})
    spec = StreamSpec(name=str(data.get("name", "custom")),
                      description=str(data.get("description", "")))
    stream = data.get("stream") or {}
    if not isinstance(stream, Mapping):
        raise UsageError(f"{where}.stream: must be a mapping")
    _check_keys(f"{where}.stream", stream, _STREAM_KEYS)
    changes: dict[str, Any] = {}
    if "requests_per_interval" in stream:
        changes["requests_per_interval"] = int(_num(f"{where}.stream.requests_per_interval",
                                                    stream["requests_per_interval"], 1))
    if "prevalence" in stream:
        changes["prevalence"] = _num(f"{where}.stream.prevalence", stream["prevalence"],
                                     1e-6, 0.5)
    if "segment_field" in stream:
        changes["segment_field"] = str(stream["segment_field"])
    if "segments" in stream:
        segs = stream["segments"]
        if not isinstance(segs, Mapping) or len(segs) < 1:
            raise UsageError(f"{where}.stream.segments: a mapping of segment name to share")
        changes["segments"] = {str(k): _num(f"{where}.stream.segments.{k}", v, 1e-9, 1)
                               for k, v in segs.items()}
    if "label_delay" in stream:
        try:
            changes["label_delay_s"] = parse_duration(stream["label_delay"])
        except ValueError as exc:
            raise UsageError(f"{where}.stream.label_delay: {exc}") from None
    if "requests_per_second" in stream:
        if "requests_per_interval" in stream:
            raise UsageError(f"{where}.stream.requests_per_second: give either "
                             "requests_per_interval or requests_per_second, not both")
        changes["requests_per_second"] = _num(f"{where}.stream.requests_per_second",
                                              stream["requests_per_second"], 1e-6, 1e9)
    if "horizon" in stream:
        changes.update(_horizon(f"{where}.stream.horizon", stream["horizon"]))
    spec = replace(spec, **changes)

    base = data.get("baseline") or {}
    if not isinstance(base, Mapping):
        raise UsageError(f"{where}.baseline: must be a mapping")
    _check_keys(f"{where}.baseline", base, _BASE_KEYS)
    bm = RoleModel(
        recall=_num(f"{where}.baseline.recall", base.get("recall", 0.876), 0.01, 0.999),
        precision=_num(f"{where}.baseline.precision", base.get("precision", 0.918), 0.01,
                       0.999),
        latency_mean_s=_num(f"{where}.baseline.latency_mean_ms",
                            base.get("latency_mean_ms", 85.0), 0.01) / 1000.0,
        latency_log_sd=_num(f"{where}.baseline.latency_log_sd",
                            base.get("latency_log_sd", 0.35), 0.01, 3),
        error_rate=_num(f"{where}.baseline.error_rate", base.get("error_rate", 0.001), 0, 1),
    )
    cand = data.get("candidate") or {}
    if not isinstance(cand, Mapping):
        raise UsageError(f"{where}.candidate: must be a mapping")
    _check_keys(f"{where}.candidate", cand, _CAND_KEYS)
    fpr_mult = cand.get("fpr_multiplier") or {}
    if not isinstance(fpr_mult, Mapping):
        raise UsageError(f"{where}.candidate.fpr_multiplier: a mapping of segment to factor")
    for seg in fpr_mult:
        if str(seg) not in spec.segments:
            raise UsageError(f"{where}.candidate.fpr_multiplier.{seg}: not one of the stream's "
                             f"segments ({', '.join(spec.segments)})")
    cm = RoleModel(
        recall=bm.recall + _num(f"{where}.candidate.recall_delta",
                                cand.get("recall_delta", 0.0), -0.99, 0.99),
        precision=bm.precision + _num(f"{where}.candidate.precision_delta",
                                      cand.get("precision_delta", 0.0), -0.99, 0.99),
        latency_mean_s=bm.latency_mean_s + _num(f"{where}.candidate.latency_delta_ms",
                                                cand.get("latency_delta_ms", 0.0)) / 1000.0,
        latency_log_sd=bm.latency_log_sd,
        error_rate=_num(f"{where}.candidate.error_rate",
                        cand.get("error_rate", bm.error_rate), 0, 1),
        fpr_multiplier={str(k): _num(f"{where}.candidate.fpr_multiplier.{k}", v, 0.01, 100)
                        for k, v in fpr_mult.items()},
    )
    if not 0.01 <= cm.recall <= 0.999 or not 0.01 <= cm.precision <= 0.999:
        raise UsageError(f"{where}.candidate: recall/precision after the change must stay in "
                         "[0.01, 0.999]")
    if cm.latency_mean_s <= 0:
        raise UsageError(f"{where}.candidate.latency_delta_ms: latency must stay positive")
    drift = _num(f"{where}.candidate.recall_drift", cand.get("recall_drift", 0.0), -0.9, 0.9)
    timing = _drift_timing(f"{where}.candidate", cand, drift)
    if not 0.01 <= cm.recall + drift <= 0.999:
        raise UsageError(f"{where}.candidate.recall_drift: recall after the drift must stay "
                         "in [0.01, 0.999]")
    correlation = _num(f"{where}.candidate.correlation", cand.get("correlation", 0.8), 0.0,
                       0.999)
    return replace(spec, baseline=bm, candidate=cm, candidate_recall_drift=drift,
                   correlation=correlation, **timing)


def _horizon(where: str, value: Any) -> dict[str, Any]:
    """``horizon``: evaluation intervals (a number) or a duration (a string such as 30d)."""
    if isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if seconds <= 0:
            raise UsageError(f"{where}: must be longer than 0s")
        return {"horizon_s": seconds, "horizon_intervals": 0}
    return {"horizon_intervals": int(_num(where, value, 1, 100_000)), "horizon_s": 0.0}


def _drift_timing(where: str, cand: Mapping[str, Any], drift: float) -> dict[str, Any]:
    """``drift_start`` and ``drift_duration`` as StreamSpec fields."""
    out: dict[str, Any] = {}
    for key in ("drift_start", "drift_duration"):
        if key in cand and not drift:
            raise UsageError(f"{where}.{key}: only applies with a recall_drift")
    start = cand.get("drift_start")
    if isinstance(start, str) and start.strip().lower() == PROMOTION:
        out["drift_after_promotion"] = True
    elif start is not None:
        try:
            out["drift_start_s"] = parse_duration(start)
        except ValueError as exc:
            raise UsageError(f"{where}.drift_start: {exc} (or '{PROMOTION}')") from None
    if "drift_duration" in cand:
        try:
            out["drift_duration_s"] = parse_duration(cand["drift_duration"])
        except ValueError as exc:
            raise UsageError(f"{where}.drift_duration: {exc}") from None
    return out


# The decision-efficiency scenarios (issue: fraud prevalence 1.5%, baseline recall 0.876,
# precision 0.918, latency lognormal around 85 ms, three regions).
BUILTIN: dict[str, dict[str, Any]] = {
    "equal": {"description": "candidate identical to the baseline", "candidate": {}},
    "recall-plus-3.2": {"description": "candidate catches more fraud (+3.2 recall points)",
                        "candidate": {"recall_delta": 0.032}},
    "recall-minus-2": {"description": "recall −2 points", "candidate": {"recall_delta": -0.02}},
    "recall-minus-5": {"description": "recall −5 points", "candidate": {"recall_delta": -0.05}},
    "recall-minus-10": {"description": "recall −10 points",
                        "candidate": {"recall_delta": -0.10}},
    "latency-plus-10ms": {"description": "mean latency +10 ms (85 → 95 ms)",
                          "candidate": {"latency_delta_ms": 10}},
    "segment-fpr-x1.5": {"description": "false-positive rate ×1.5 in the EU region only",
                         "candidate": {"fpr_multiplier": {"eu": 1.5}}},
    "recall-drift": {"description": "candidate recall drifts from 0.876 down by 5 points "
                                    "over 4 h from the rollout's start",
                     "candidate": {"recall_drift": -0.05, "drift_duration": "4h"}},
    "drift-after-promotion": {"description": "candidate equal during the rollout; its recall "
                                             "drifts down by 5 points over 4 h once it "
                                             "serves 100%",
                              "candidate": {"recall_drift": -0.05, "drift_start": PROMOTION,
                                            "drift_duration": "4h"}},
}

#: Scenarios in which the candidate should be promoted (a rollback before promotion is a
#: false rollback); ``drift-after-promotion`` should then be rolled back in the bake period.
GOOD = ("equal", "recall-plus-3.2", "drift-after-promotion")


def should_promote(spec: StreamSpec) -> bool:
    """Whether the candidate is no worse than the baseline while the rollout runs.

    Then a rollback before promotion is a false rollback. A drift that starts only once the
    candidate serves 100% does not count (the bake period should catch it).
    """
    c, b = spec.candidate, spec.baseline
    drifts_worse = spec.candidate_recall_drift < 0 and not spec.drift_after_promotion
    return (not drifts_worse and c.recall >= b.recall and c.precision >= b.precision
            and c.latency_mean_s <= b.latency_mean_s and c.error_rate <= b.error_rate
            and all(f == 1.0 for f in c.fpr_multiplier.values()))


def builtin(name: str, stream: Mapping[str, Any] | None = None) -> StreamSpec:
    """A built-in scenario, optionally with stream settings overridden."""
    if name not in BUILTIN:
        raise UsageError(f"--scenario: unknown scenario {name!r}; built-in: "
                         f"{', '.join(BUILTIN)} (or give a YAML/JSON file)")
    data = {"name": name, **BUILTIN[name]}
    if stream:
        data["stream"] = dict(stream)
    return scenario_from_dict(data, f"scenario {name}")


def load_scenarios(path: str | Path) -> list[StreamSpec]:
    """Read a scenario file (one scenario, or several under ``scenarios:``)."""
    data = read_yaml_or_json(path, "scenario file")
    if isinstance(data, Mapping) and "scenarios" in data:
        items = data["scenarios"]
        if not isinstance(items, list) or not items:
            raise UsageError(f"{path}: scenarios: must be a non-empty list")
        shared = {k: v for k, v in data.items() if k != "scenarios"}
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise UsageError(f"{path}: scenarios[{i}]: must be a mapping")
            merged = {**shared, **item}
            for key in ("stream", "baseline"):
                if key in shared and key in item:
                    merged[key] = {**shared[key], **item[key]}
            out.append(scenario_from_dict(merged, f"{path}: scenarios[{i}]"))
        return out
    return [scenario_from_dict(data, str(path))]


def resolve(scenario: str) -> list[StreamSpec]:
    """A built-in name or a file path."""
    if scenario in BUILTIN:
        return [builtin(scenario)]
    if Path(scenario).exists():
        return load_scenarios(scenario)
    raise UsageError(f"--scenario: {scenario!r} is neither a built-in scenario "
                     f"({', '.join(BUILTIN)}) nor an existing file")
