"""Decision efficiency of three rollout rules, side by side on the same synthetic streams.

Rules (see mlflow_kpigate/simulate/rules.py):
  paper    the case study's rule: roll back when a KPI in the latest interval is more than
           2σ (registry σ of the baseline's per-interval KPI) from the baseline mean;
  ztest    fixed-horizon one-sided z bounds re-checked at every interval (peeking);
  kpigate  the gate: anytime-valid confidence sequences, α split across KPIs.

Every rule sees the same random numbers while in the same stage (common random numbers).
Figures per scenario and rule: false rollback rate (candidates that should be promoted),
power (rollback rate of worse candidates), exposure to detection (candidate responses
served to users before the rollback: mean, median, p90), promotion rate, candidate
requests served until promotion, and the rate still holding at the horizon.

    .venv/bin/python benchmarks/decision_efficiency.py [--reps 200] [--seed 1] [--json]
        [--policy FILE] [--scenario-file FILE] [--requests-per-interval N] [--horizon N]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mlflow_kpigate.core.errors import KpigateError  # noqa: E402
from mlflow_kpigate.gate.planning import wald_asn  # noqa: E402
from mlflow_kpigate.policy import Policy, load_policy  # noqa: E402
from mlflow_kpigate.simulate import (  # noqa: E402
    BUILTIN,
    GOOD,
    RULES,
    StreamSpec,
    builtin,
    load_scenarios,
    registry_from_stream,
    run_rollout,
)

RULE_ORDER = ("paper", "ztest", "kpigate")
DEFAULT_POLICY = HERE / "policies" / "fraud_benchmark.yaml"
DEFAULT_STREAM = {"requests_per_interval": 200_000, "horizon": 120}


def _run_chunk(args: tuple[Policy, StreamSpec, str, int, list[int], Any]
               ) -> list[tuple[str, int]]:
    policy, stream, rule_name, seed, reps, registry = args
    rule = RULES[rule_name]()
    out = []
    for rep in reps:
        result = run_rollout(policy, stream, rule, seed=seed, rep=rep, registry=registry)
        out.append((result.status, result.exposed_requests))
    return out


def _summary(results: list[tuple[str, int]], good: bool) -> dict[str, float | None]:
    n = len(results)
    statuses = [s for s, _ in results]
    rolled = [e for s, e in results if s == "rolled_back"]
    promoted = [e for s, e in results if s == "promoted"]
    rb_rate = statuses.count("rolled_back") / n

    def stat(values: list[int], fn: Any) -> float | None:
        return float(fn(values)) if values else None

    return {
        "false_rollback_rate": rb_rate if good else None,
        "power": None if good else rb_rate,
        "exposure_mean": stat(rolled, np.mean),
        "exposure_median": stat(rolled, np.median),
        "exposure_p90": stat(rolled, lambda v: np.percentile(v, 90)),
        "promote_rate": statuses.count("promoted") / n,
        "requests_to_promote_mean": stat(promoted, np.mean),
        "hold_rate": statuses.count("holding") / n,
        "reps": n,
    }


def run(policy: Policy, scenarios: list[StreamSpec], reps: int, seed: int, workers: int,
        good: set[str]) -> dict[str, Any]:
    """Run every rule on every scenario; return the JSON-shaped results."""
    jobs = []
    chunks = [list(range(i, reps, max(1, workers * 2))) for i in range(max(1, workers * 2))]
    chunks = [c for c in chunks if c]
    for stream in scenarios:
        registry = registry_from_stream(policy, stream, seed)
        for rule in RULE_ORDER:
            for chunk in chunks:
                jobs.append(((stream.name, rule), (policy, stream, rule, seed, chunk, registry)))
    collected: dict[tuple[str, str], list[tuple[str, int]]] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [(key, pool.submit(_run_chunk, args)) for key, args in jobs]
        for key, fut in futures:
            collected.setdefault(key, []).extend(fut.result())
    out: dict[str, Any] = {"scenarios": {}}
    for stream in scenarios:
        out["scenarios"][stream.name] = {
            rule: _summary(collected[(stream.name, rule)], stream.name in good)
            for rule in RULE_ORDER
        }
    return out


def _fmt(value: float | None, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if kind == "rate":
        return f"{value * 100:.1f}%"
    return f"{value:,.0f}"


def print_tables(result: dict[str, Any], reps: int) -> None:
    """One side-by-side table per figure: scenarios × rules."""
    figures = [
        ("false rollback rate (should be promoted)", "false_rollback_rate", "rate"),
        ("power: rollback rate of worse candidates", "power", "rate"),
        ("exposure to detection, mean (candidate responses before rollback)",
         "exposure_mean", "count"),
        ("exposure to detection, median", "exposure_median", "count"),
        ("exposure to detection, p90", "exposure_p90", "count"),
        ("promotion rate within the horizon", "promote_rate", "rate"),
        ("candidate requests served until promotion, mean", "requests_to_promote_mean",
         "count"),
        ("still holding at the horizon", "hold_rate", "rate"),
    ]
    names = list(result["scenarios"])
    width = max(len(n) for n in names) + 2
    for title, key, kind in figures:
        rows = [n for n in names
                if any(result["scenarios"][n][r][key] is not None for r in RULE_ORDER)]
        if not rows:
            continue
        print(f"\n{title}  ({reps} runs per cell)")
        print("scenario".ljust(width) + "".join(r.rjust(12) for r in RULE_ORDER))
        for n in rows:
            cells = [_fmt(result["scenarios"][n][r][key], kind) for r in RULE_ORDER]
            print(n.ljust(width) + "".join(c.rjust(12) for c in cells))
    bounds = result["bounds"]
    print(f"\nWald's SPRT expected sample number for recall {bounds['recall_p0']} → "
          f"{bounds['recall_p1']:.3f} (known baseline, α={bounds['alpha']}, "
          f"power {bounds['power']}): {bounds['wald_asn_positives']:.0f} labelled positives "
          f"≈ {bounds['wald_asn_requests']:,.0f} candidate requests")


def check_targets(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The issue's targets for kpigate's engine, measured."""
    sc = result["scenarios"]
    rows: list[tuple[str, str, bool]] = []
    for name in GOOD:
        if name in sc:
            r = sc[name]["kpigate"]["false_rollback_rate"]
            rows.append((f"false rollback ≤ 5% ({name})", f"{r * 100:.1f}%", r <= 0.05))
    if "recall-minus-5" in sc:
        e = sc["recall-minus-5"]["kpigate"]["exposure_mean"]
        w = result["bounds"]["wald_asn_requests"]
        if e is not None:
            rows.append(("exposure to detect −5 points ≤ 1.5× Wald", f"{e / w:.2f}×",
                         e / w <= 1.5))
    if "recall-plus-3.2" in sc:
        p = sc["recall-plus-3.2"]["kpigate"]["promote_rate"]
        rows.append(("≥ 95% of +3.2-point candidates promoted", f"{p * 100:.1f}%", p >= 0.95))
    if "segment-fpr-x1.5" in sc:
        c = sc["segment-fpr-x1.5"]["kpigate"]["power"]
        promoted = sc["segment-fpr-x1.5"]["kpigate"]["promote_rate"]
        rows.append(("segment FPR ×1.5 rolled back ≥ 90%",
                     f"{c * 100:.1f}% (promoted {promoted * 100:.1f}%)", c >= 0.9))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(DEFAULT_POLICY))
    parser.add_argument("--scenario-file", help="YAML/JSON scenarios instead of the built-in")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests-per-interval", type=int,
                        default=DEFAULT_STREAM["requests_per_interval"])
    parser.add_argument("--horizon", type=int, default=DEFAULT_STREAM["horizon"],
                        help="evaluation intervals per run")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.policy)
        if args.scenario_file:
            scenarios = load_scenarios(args.scenario_file)
            good = {s.name for s in scenarios if s.candidate == s.baseline or
                    (s.candidate.recall >= s.baseline.recall and
                     s.candidate.precision >= s.baseline.precision and
                     s.candidate.latency_mean_s <= s.baseline.latency_mean_s and
                     not s.candidate.fpr_multiplier and s.candidate_recall_drift >= 0)}
        else:
            stream = {"requests_per_interval": args.requests_per_interval,
                      "horizon": args.horizon}
            scenarios = [builtin(name, stream) for name in BUILTIN]
            good = set(GOOD)
    except KpigateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    result = run(policy, scenarios, args.reps, args.seed, args.workers, good)
    alpha = policy.evaluation.alpha_rollback
    power = policy.evaluation.power
    p0, prev = 0.876, 0.015
    if scenarios:
        p0, prev = scenarios[0].baseline.recall, scenarios[0].prevalence
    p1 = p0 - 0.05
    asn = wald_asn(p0, p1, alpha, 1 - power)
    result["bounds"] = {"wald_asn_requests": asn / prev, "wald_asn_positives": asn,
                        "recall_p0": p0, "recall_p1": p1, "alpha": alpha, "power": power}
    result["settings"] = {"policy": args.policy, "reps": args.reps, "seed": args.seed,
                          "requests_per_interval": scenarios[0].requests_per_interval,
                          "horizon_intervals": scenarios[0].horizon_intervals,
                          "interval_seconds": policy.evaluation.interval,
                          "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s = result["settings"]
    print(f"decision efficiency: {len(scenarios)} scenarios × {len(RULE_ORDER)} rules × "
          f"{args.reps} runs; {s['requests_per_interval']:,} requests per "
          f"{s['interval_seconds']:g}s interval, horizon {s['horizon_intervals']} intervals; "
          f"policy {args.policy}")
    print_tables(result, args.reps)
    print("\ntargets (kpigate):")
    for name, value, ok in check_targets(result):
        print(f"  [{'met' if ok else 'NOT met'}] {name}: {value}")
    print(f"\n({s['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
