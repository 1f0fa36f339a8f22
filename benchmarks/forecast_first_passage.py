"""First passage of the gate's bounds against the forecast's expected crossing.

The time-to-decision forecast (mlflow_kpigate/gate/forecast.py) says when the *expected*
bound crosses its threshold: for an equal candidate (Δ = 0) the information I* at which
the promotion radius r(1/I) equals s·m, for a candidate at −detect the I*_r at which the
rollback radius equals the distance d. The gate decides at the first look its *random*
bound crosses. This script draws the estimate as a Brownian motion in information time
(δ̂(I) = Δ + B(I)/I, the normal approximation the gate's bounds rest on), looks
``--looks`` times per I*, and prints the mean and median of the first passage in units of
I*, so docs/statistics.md can say which of the two the forecast estimates.

    .venv/bin/python benchmarks/forecast_first_passage.py [--paths 4000] [--looks 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_kpigate.gate.boundaries import (
    one_sided_radius,
    tau2_for_radius,
    variance_for_radius,
)


def first_passage(case: str, scale: float, alpha: float, paths: int, looks: int,
                  rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean, median, share not crossed by 6 I*) of the first passage / I*, margin m = 1.

    ``case`` ``promote``: Δ = 0, the bound δ̂ − r clears −scale (and the guard δ̂ > −1);
    ``rollback``: Δ = −scale, the bound δ̂ + r falls below 0 (a critical KPI at −detect).
    """
    # τ² tuned to the margin for promotion, to the distance for rollback (as the gate).
    tau2 = tau2_for_radius(1.0 if case == "promote" else scale, alpha)
    i_star = 1.0 / variance_for_radius(scale, tau2, alpha)
    grid = np.linspace(i_star / looks, 6 * i_star, 6 * looks)
    radius = np.array([one_sided_radius(1.0 / i, tau2, alpha) for i in grid])
    steps = np.sqrt(np.diff(np.concatenate([[0.0], grid])))
    brownian = np.cumsum(rng.normal(size=(paths, grid.size)) * steps, axis=1)
    if case == "promote":
        est = brownian / grid
        crossed = (est - radius >= -scale) & (est > -1.0)
    else:
        est = -scale + brownian / grid
        crossed = est + radius < 0
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    t = np.where(first >= 0, grid[np.maximum(first, 0)], np.inf) / i_star
    done = t[np.isfinite(t)]
    return float(done.mean()), float(np.median(t)), float(np.mean(~np.isfinite(t)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--paths", type=int, default=4000)
    parser.add_argument("--looks", type=int, default=200, help="looks per I*")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"first passage / expected crossing ({args.paths} paths, {args.looks} looks per "
          "I*, Brownian estimate)")
    print(f"{'case':<30}{'alpha':>8}{'mean':>8}{'median':>8}{'> 6 I*':>8}")
    rows = [("promote", s, a) for s in (1.0, 2.0, 3.0) for a in (0.05, 0.0125)]
    rows += [("rollback", 1.75, a) for a in (0.05, 0.0125)]
    for case, scale, alpha in rows:
        mean, median, left = first_passage(case, scale, alpha, args.paths, args.looks, rng)
        label = (f"equal, promotion at -{scale:g} m" if case == "promote"
                 else f"at -detect ({scale:g} m), critical")
        print(f"{label:<30}{alpha:>8g}{mean:>8.3f}{median:>8.3f}{left:>8.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
