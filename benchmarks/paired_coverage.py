"""Coverage of the gate's paired confidence sequences in a simulation of correlated models.

One shadow stratum grows by --requests-per-look requests per look for --looks looks. Both
models answer every request (every request labelled at once), their outcomes drawn jointly
by mlflow_kpigate/simulate/paired_stream.py with latent correlation --rho, from a built-in
scenario's truth (--scenario). At every look the gate's own estimator
(gate/estimators.measure) gives each KPI's promotion test (estimate and variance) twice:
with the stratum's paired part (paired variances, gate/paired.py) and without it (the two
roles as independent samples, as the gate does for a source that cannot pair). Each gives
the one-sided anytime-valid lower and upper bounds at --alpha with τ² tuned at the KPI's
margin, as the gate's promotion boundary (gate/boundaries.py).

Reported per KPI: the true difference Δ (better-positive, on the tested scale), the
fraction of paths on which Δ is *ever* outside the lower or the upper bound (time-uniform
non-coverage, each side at most α for a valid sequence; Monte Carlo SE
√(α(1 − α)/paths)), the same for the independent variance, and at the last look the median
ratios paired / independent of the bound's width and of the variance.

KPIs (margins): recall (0.02), precision (0.02), error rate (0.001, lower is better),
mean latency (10%: the log of the ratio of geometric means), AUC (0.01).

    .venv/bin/python benchmarks/paired_coverage.py [--paths 2000] [--looks 100]
        [--requests-per-look 5000] [--rho 0.8[,0.5,...]] [--scenario NAME[,NAME]]
        [--alpha 0.05] [--seed 1] [--workers 2] [--markdown]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.gate.boundaries import one_sided_radius, tau2_for_radius
from mlflow_kpigate.gate.estimators import Strata, measure
from mlflow_kpigate.kpis import AggregateSpec, PairedAggregate, RoleAggregate
from mlflow_kpigate.policy import Policy, policy_from_dict
from mlflow_kpigate.simulate import builtin
from mlflow_kpigate.simulate.paired_stream import PairedGenerator
from mlflow_kpigate.simulate.stream import RoleModel, StreamGenerator, StreamSpec

KPIS: list[dict[str, Any]] = [
    {"name": "recall", "kind": "proportion", "metric": "recall", "margin": 0.02},
    {"name": "precision", "kind": "proportion", "metric": "precision", "margin": 0.02},
    {"name": "error_rate", "kind": "proportion", "metric": "error_rate", "margin": 0.001,
     "direction": "lower"},
    {"name": "latency_mean", "kind": "mean", "source": "latency", "margin": "10%",
     "direction": "lower"},
    {"name": "auc", "kind": "auc", "margin": 0.01},
]
NAMES = [k["name"] for k in KPIS]


def coverage_policy() -> Policy:
    """A shadow stage and the final stage; the KPIs above, each a guardrail."""
    return policy_from_dict({"stages": [{"shadow": True}, {"traffic": 100}], "kpis": KPIS})


def _binned_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos bin > neg bin) + ½ P(same bin): the AUC the gate computes on binned scores."""
    below = np.concatenate(([0.0], np.cumsum(neg)[:-1]))
    return float(pos @ (below + 0.5 * neg))


def truth(stream: StreamSpec, gen: StreamGenerator) -> dict[str, float]:
    """Each KPI's true Δ, better-positive, on the scale the gate tests."""

    def auc(model: RoleModel) -> float:
        pos, negs = gen._score_probs(model)
        return _binned_auc(pos, sum(share * n for share, n in zip(gen.shares, negs,
                                                                  strict=True)))

    def mu(model: RoleModel) -> float:
        return math.log(model.latency_mean_s) - model.latency_log_sd ** 2 / 2

    b, c = stream.baseline, stream.candidate
    return {"recall": c.recall - b.recall, "precision": c.precision - b.precision,
            "error_rate": b.error_rate - c.error_rate, "latency_mean": mu(b) - mu(c),
            "auc": auc(c) - auc(b)}


def run_paths(job: tuple[str, float, int, int, int, int, float, int]) -> dict[str, np.ndarray]:
    """Paths ``first`` … ``first + count − 1``: per path and KPI, [misses below, misses
    above] for the paired and the independent sequence, and the last look's width and
    variance of both."""
    scenario, rho, first, count, looks, n, alpha, seed = job
    policy = coverage_policy()
    spec = AggregateSpec.from_policy(policy)
    stream = builtin(scenario)
    gen = StreamGenerator(stream, spec)
    pgen = PairedGenerator(gen)
    true = truth(stream, gen)
    # Per KPI: τ² of the promotion boundary (tuned at the margin on the tested scale).
    tau2: dict[str, float] = {}
    out = {name: np.full((count, 8), np.nan) for name in NAMES}
    for i in range(count):
        rng = np.random.default_rng([seed, first + i])
        sample = StageSample(0, RoleAggregate(spec), RoleAggregate(spec),
                             PairedAggregate(spec.score_bins))
        assert sample.paired is not None
        missed = {name: np.zeros(4, dtype=bool) for name in NAMES}
        last: dict[str, list[float]] = {}
        for _ in range(looks):
            d = pgen.draw(rng, stream.baseline, stream.candidate, n, rho)
            for role, data in ((sample.baseline, d.baseline), (sample.candidate, d.candidate)):
                role.merge(data.requests)
                role.merge(data.labelled)
            sample.paired.merge(d.requests)
            sample.paired.merge(d.labelled)
            paired = Strata([sample])
            independent = Strata([StageSample(0, sample.baseline, sample.candidate)])
            for kpi in policy.kpis:
                row = []
                for j, strata in enumerate((paired, independent)):
                    meas = measure(kpi, strata, 1.0, 1.0)
                    test = meas.promote_tests[0] if meas.promote_tests else None
                    if test is None or not test.usable:
                        row += [math.nan, math.nan]
                        continue
                    t2 = tau2.setdefault(kpi.name, tau2_for_radius(meas.scale, alpha))
                    r = one_sided_radius(test.variance, t2, alpha)
                    missed[kpi.name][2 * j] |= test.delta - r > true[kpi.name]
                    missed[kpi.name][2 * j + 1] |= test.delta + r < true[kpi.name]
                    row += [r, test.variance]
                last[kpi.name] = row
        for name in NAMES:
            out[name][i, :4] = missed[name]
            out[name][i, 4:] = last.get(name, [math.nan] * 4)
    return out


def measure_coverage(scenario: str, rho: float, paths: int, looks: int, n: int,
                     alpha: float, seed: int, workers: int) -> dict[str, dict[str, float]]:
    """The figures of one (scenario, ρ) over ``paths`` paths."""
    chunk = max(1, math.ceil(paths / (4 * workers)))
    jobs = [(scenario, rho, f, min(chunk, paths - f), looks, n, alpha, seed)
            for f in range(0, paths, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(run_paths, jobs))
    policy = coverage_policy()
    stream = builtin(scenario)
    true = truth(stream, StreamGenerator(stream, AggregateSpec.from_policy(policy)))
    figures = {}
    for name in NAMES:
        data = np.concatenate([p[name] for p in parts])
        figures[name] = {
            "delta": true[name],
            "paired_below": float(data[:, 0].mean()), "paired_above": float(data[:, 1].mean()),
            "indep_below": float(data[:, 2].mean()), "indep_above": float(data[:, 3].mean()),
            "width_ratio": float(np.nanmedian(data[:, 4] / data[:, 6])),
            "variance_ratio": float(np.nanmedian(data[:, 5] / data[:, 7])),
        }
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--looks", type=int, default=100)
    ap.add_argument("--requests-per-look", type=int, default=5000)
    ap.add_argument("--rho", default="0.8", help="comma-separated latent correlations")
    ap.add_argument("--scenario", default="equal,recall-minus-5",
                    help="comma-separated built-in scenarios")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    se = math.sqrt(args.alpha * (1 - args.alpha) / args.paths)
    started = time.time()
    print(f"{args.paths} paths × {args.looks} looks × {args.requests_per_look:,} requests, "
          f"α = {args.alpha} per side (limit α + 3 SE = {args.alpha + 3 * se:.4f})")
    if args.markdown:
        print("\n| scenario | ρ | KPI | true Δ | paired: misses below / above | independent: "
              "misses below / above | width paired/indep. | variance paired/indep. |")
        print("|---|---|---|---|---|---|---|---|")
    for scenario in args.scenario.split(","):
        for rho in (float(r) for r in args.rho.split(",")):
            figures = measure_coverage(scenario, rho, args.paths, args.looks,
                                       args.requests_per_look, args.alpha, args.seed,
                                       args.workers)
            for name, f in figures.items():
                cells = (f"{f['delta']:+.4g}", f"{f['paired_below']:.2%} / "
                         f"{f['paired_above']:.2%}", f"{f['indep_below']:.2%} / "
                         f"{f['indep_above']:.2%}", f"{f['width_ratio']:.3f}",
                         f"{f['variance_ratio']:.3f}")
                if args.markdown:
                    print(f"| {scenario} | {rho} | {name} | " + " | ".join(cells) + " |")
                else:
                    print(f"{scenario:16} ρ={rho:<5} {name:13} Δ {cells[0]:>10}  paired "
                          f"{cells[1]:>15}  independent {cells[2]:>15}  width "
                          f"{cells[3]}  variance {cells[4]}")
    print(f"({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
