"""Time of one gate evaluation (20 KPIs, 10 segments): the Newton solvers vs the brentq ones.

Usage::

    .venv/bin/python benchmarks/gate_eval.py [--calls 200] [--rounds 10] [--json]

The evaluation: benchmarks/policies/fraud_20kpis.yaml (20 decisive KPIs, 6 of them
per-region fairness indices), judged at its 50% stage with every stage's data pooled:
``--requests`` requests per stage split by the stage's traffic share (5%, 25%, 50%), all
labelled, prevalence ``--prevalence``, 10 regions of equal size, lognormal latency (85 ms
median), 0.2% errors, and an equal candidate (the data are drawn once, from
``numpy.random.default_rng(seed)``, and not timed). ``gate.evaluate`` is then called
``--calls`` times per round with :func:`time.perf_counter` around each call.

Two solvers for the boundaries (mlflow_kpigate/gate/boundaries.py): ``newton``, the
package's, and ``brentq``, the earlier one (kept below, verbatim, as the reference; put in
place of the package's functions wherever the package holds them). They run in alternating
rounds (A B, B A, …), so drift on a shared machine falls on both alike; the table gives the
median and p90 over all calls of each (wall time, :func:`time.perf_counter`; the median
CPU time of the process, :func:`time.process_time`, beside it, which other processes on a
shared machine disturb less), and the ratio of the medians. Both see the
mixture-variance constant κ(α) already cached (``--calls`` evaluations after one warm-up);
``cold`` times a first evaluation with that cache cleared, median over the rounds.
Before timing, the two solvers' decisions are compared (action, verdicts, reasons,
samples needed; bounds to 1e-9 relative).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.special import log_ndtr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mlflow_kpigate.gate import (  # noqa: E402
    StageSample,
    boundaries,
    evaluate,
)
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate  # noqa: E402
from mlflow_kpigate.policy import Policy, load_policy  # noqa: E402

POLICY = HERE / "policies" / "fraud_20kpis.yaml"
REGIONS = np.array([f"region-{i}" for i in range(10)])
STAGE = 2  # the 50% stage
ELAPSED = 3600.0
TOL = 1e-9

# --- the earlier solvers (reference), verbatim --------------------------------------------


def ref_two_sided_radius(v: float, tau2: float, alpha: float) -> float:
    if not (v > 0 and math.isfinite(v)):
        return math.inf
    return math.sqrt(v * (v + tau2) / tau2 * (math.log((v + tau2) / v) + 2 * math.log(1 / alpha)))


def ref_z_one_sided(c: float) -> float:
    def f(z: float) -> float:
        return 0.5 * z * z + float(log_ndtr(z)) - c

    hi = math.sqrt(2 * max(c, 0.0)) + 2.0
    while f(hi) < 0:
        hi *= 2
    lo = -1.0
    while f(lo) > 0:
        lo *= 2
    return brentq(f, lo, hi, xtol=1e-12)


def ref_one_sided_radius(v: float, tau2: float, alpha: float) -> float:
    if not (v > 0 and math.isfinite(v)):
        return math.inf
    c = math.log(1 / (2 * alpha)) + 0.5 * math.log1p(tau2 / v)
    z = ref_z_one_sided(c)
    return z * math.sqrt(v * (v + tau2)) / math.sqrt(tau2)


@lru_cache(maxsize=256)
def ref_kappa(alpha: float, one_sided: bool) -> float:
    radius = ref_one_sided_radius if one_sided else ref_two_sided_radius

    def neg_vstar(log_kappa: float) -> float:
        tau2 = math.exp(log_kappa)
        vstar = brentq(lambda lv: radius(math.exp(lv), tau2, alpha) - 1.0, -30.0, 5.0)
        return -vstar

    res = minimize_scalar(neg_vstar, bounds=(-3.0, 3.0), method="bounded",
                          options={"xatol": 1e-6})
    return math.exp(float(res.x))


def ref_tau2_for_radius(radius: float, alpha: float, one_sided: bool = True) -> float:
    if not radius > 0:
        raise ValueError("radius must be > 0")
    return ref_kappa(round(alpha, 12), one_sided) * radius * radius


def ref_variance_for_radius(radius: float, tau2: float, alpha: float, one_sided: bool = True
                            ) -> float:
    fn = ref_one_sided_radius if one_sided else ref_two_sided_radius
    lo, hi = -60.0, math.log(max(radius * radius, 1e-300)) + 5.0
    if fn(math.exp(lo), tau2, alpha) > radius:
        return 0.0
    return math.exp(brentq(lambda lv: fn(math.exp(lv), tau2, alpha) - radius, lo, hi,
                           xtol=1e-10))


REFERENCE: dict[str, Callable[..., float]] = {
    "one_sided_radius": ref_one_sided_radius,
    "two_sided_radius": ref_two_sided_radius,
    "tau2_for_radius": ref_tau2_for_radius,
    "variance_for_radius": ref_variance_for_radius,
}
NEWTON: dict[str, Callable[..., float]] = {name: getattr(boundaries, name) for name in REFERENCE}


@contextmanager
def _swapped(replacements: dict[str, Callable[..., float]]) -> Iterator[None]:
    """Within the block, the package's boundary functions named in ``replacements`` are
    replaced wherever the package holds them (its modules import them by name)."""
    patched = []
    for module in [m for n, m in sys.modules.items() if n.startswith("mlflow_kpigate")]:
        for attr, value in list(vars(module).items()):
            for fn_name, fn in NEWTON.items():
                if value is fn and fn_name in replacements:
                    patched.append((module, attr, value))
                    setattr(module, attr, replacements[fn_name])
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)


def solver(name: str) -> Any:
    """Context manager: the package uses ``name``'s functions (``newton`` is the package's)."""
    return _swapped({} if name == "newton" else REFERENCE)


def clear_caches(name: str) -> None:
    """Forget κ(α) (the constant the solver would otherwise have cached)."""
    (ref_kappa if name == "brentq" else boundaries._kappa).cache_clear()


# --- the evaluation -----------------------------------------------------------------------


def _role(policy: Policy, rng: np.random.Generator, n: int, prevalence: float
          ) -> RoleAggregate:
    agg = RoleAggregate(AggregateSpec.from_policy(policy))
    agg.add_requests(np.exp(rng.normal(math.log(0.085), 0.22, n)), rng.random(n) < 0.002)
    y = rng.random(n) < prevalence
    region = REGIONS[rng.integers(0, len(REGIONS), n)]
    pred = np.where(y, rng.random(n) < 0.876, rng.random(n) < 0.05)
    score = 1 / (1 + np.exp(-rng.normal(-1.5 + 2.5 * y, 1.2)))
    agg.add_labelled(y, pred, score, segments={"region": region})
    return agg


def build(requests: int, prevalence: float, seed: int) -> tuple[Policy, list[StageSample]]:
    """The policy and the pooled samples of its first three stages (see the docstring)."""
    policy = load_policy(POLICY)
    rng = np.random.default_rng(seed)
    samples = []
    for index, stage in enumerate(policy.stages[:STAGE + 1]):
        cand = round(requests * stage.traffic / 100)
        samples.append(StageSample(index, _role(policy, rng, requests - cand, prevalence),
                                   _role(policy, rng, cand, prevalence)))
    return policy, samples


def radius_calls(policy: Policy, samples: list[StageSample]) -> int:
    """How many one-sided radii one evaluation computes (κ(α) already cached)."""
    calls = 0
    fn = NEWTON["one_sided_radius"]

    def counting(v: float, tau2: float, alpha: float) -> float:
        nonlocal calls
        calls += 1
        return fn(v, tau2, alpha)

    with _swapped({"one_sided_radius": counting}):
        evaluate(policy, STAGE, ELAPSED, samples)
    return calls


def _compare(got: Any, want: Any, where: str = "decision") -> float:
    """Largest relative difference of floats in two decisions' dicts; raises on any other
    difference."""
    if isinstance(want, dict):
        if got.keys() != want.keys():
            raise AssertionError(f"{where}: keys differ")
        return max((_compare(got[k], want[k], f"{where}.{k}") for k in want), default=0.0)
    if isinstance(want, list | tuple):
        if len(got) != len(want):
            raise AssertionError(f"{where}: lengths differ")
        return max((_compare(g, w, f"{where}[{i}]") for i, (g, w) in
                    enumerate(zip(got, want, strict=True))), default=0.0)
    if isinstance(want, float) and isinstance(got, float) and got != want:
        rel = abs(got - want) / abs(want)
        if not rel <= TOL:
            raise AssertionError(f"{where}: {got!r} vs {want!r}")
        return rel
    if got != want:
        raise AssertionError(f"{where}: {got!r} vs {want!r}")
    return 0.0


def same_decisions(policy: Policy, samples: list[StageSample]) -> tuple[str, float]:
    """(action, largest relative difference between the two solvers' decisions)."""
    with solver("brentq"):
        want = evaluate(policy, STAGE, ELAPSED, samples).to_dict()
    got = evaluate(policy, STAGE, ELAPSED, samples).to_dict()
    return str(got["action"]), _compare(got, want)


def _time_calls(policy: Policy, samples: list[StageSample], calls: int
                ) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each of ``calls`` evaluations."""
    out = []
    for _ in range(calls):
        start, cpu = time.perf_counter(), time.process_time()
        evaluate(policy, STAGE, ELAPSED, samples)
        out.append((time.perf_counter() - start, time.process_time() - cpu))
    return out


def run(calls: int, rounds: int, requests: int, prevalence: float, seed: int
        ) -> dict[str, Any]:
    policy, samples = build(requests, prevalence, seed)
    action, deviation = same_decisions(policy, samples)
    times: dict[str, list[tuple[float, float]]] = {"brentq": [], "newton": []}
    cold: dict[str, list[tuple[float, float]]] = {"brentq": [], "newton": []}
    order = ["brentq", "newton"]
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            with solver(name):
                clear_caches(name)
                cold[name] += _time_calls(policy, samples, 1)
                times[name] += _time_calls(policy, samples, calls)
    figures = {name: {"median_ms": 1e3 * statistics.median(w for w, _ in t),
                      "p90_ms": 1e3 * float(np.quantile([w for w, _ in t], 0.9)),
                      "cpu_median_ms": 1e3 * statistics.median(c for _, c in t),
                      "cold_ms": 1e3 * statistics.median(w for w, _ in cold[name]),
                      "calls": len(t)} for name, t in times.items()}
    ratio = figures["brentq"]["median_ms"] / figures["newton"]["median_ms"]
    kpis = len(policy.kpis)
    return {
        "solvers": figures,
        "ratio_median": ratio,
        "decisions": {"identical": True, "action": action,
                      "max_relative_deviation": deviation},
        "settings": {"policy": str(POLICY.relative_to(HERE.parent)), "kpis": kpis,
                     "segments": len(REGIONS), "stage_index": STAGE, "requests": requests,
                     "prevalence": prevalence, "seed": seed, "calls": calls,
                     "rounds": rounds, "radius_calls": radius_calls(policy, samples)},
    }


def print_table(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(f"gate.evaluate, {s['kpis']} KPIs × {s['segments']} segments ({s['policy']}, "
          f"stage {s['stage_index']}, {s['requests']:,} requests per stage, "
          f"{s['radius_calls']:,} one-sided radii per evaluation); "
          f"{s['rounds']} alternating rounds of {s['calls']} calls")
    print(f"{'solver':<8} {'median ms':>10} {'p90 ms':>8} {'CPU median ms':>14} "
          f"{'cold ms':>8}")
    for name in ("brentq", "newton"):
        f = result["solvers"][name]
        print(f"{name:<8} {f['median_ms']:>10.2f} {f['p90_ms']:>8.2f} "
              f"{f['cpu_median_ms']:>14.2f} {f['cold_ms']:>8.2f}")
    d = result["decisions"]
    print(f"ratio of medians (brentq / newton): {result['ratio_median']:.1f}×; decisions "
          f"identical ({d['action']}), largest relative difference "
          f"{d['max_relative_deviation']:.1e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="evaluations per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200_000,
                        help="requests per stage (both arms)")
    parser.add_argument("--prevalence", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    result = run(args.calls, args.rounds, args.requests, args.prevalence, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
