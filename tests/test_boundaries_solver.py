"""The boundaries' solvers against the earlier ones: the same radii, variances and τ² to 1e-9.

The one-sided radius and its inverse used to be found by ``scipy.optimize.brentq`` (the
inverse by a ``brentq`` around the radius's ``brentq``); :mod:`mlflow_kpigate.gate.boundaries`
now uses Newton's method. The earlier code is kept below, verbatim, as the reference:
every public function must agree with it to 1e-9 relative over wide grids, and whole gate
decisions must be the same (actions, verdicts, reasons, samples needed; bounds to 1e-9)
with either solver in place.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar
from scipy.special import log_ndtr

from mlflow_kpigate.gate import StageSample, evaluate
from mlflow_kpigate.gate import boundaries as new
from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
from mlflow_kpigate.policy import Policy, policy_from_dict

TOL = 1e-9

# --- the reference: the earlier solvers, verbatim ---------------------------------------


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

# --- grids ------------------------------------------------------------------------------

# Levels from the policy's largest (½) down to what a 20-KPI policy's Bonferroni split over
# fairness pairs and the recent-window check reaches, and below.
ALPHAS = [1e-6, 1e-5, 1e-4, 1e-3, 0.0025, 0.01, 0.05, 0.1, 0.25, 0.5]
VARIANCES = np.geomspace(1e-10, 1e2, 49)
TAU2S = np.geomspace(1e-8, 1e2, 21)  # κ × scale² for scales from 1e-4 to 10


def _relative(new_value: float, old_value: float) -> float:
    if new_value == old_value:
        return 0.0
    return abs(new_value - old_value) / abs(old_value)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_one_sided_radius_equals_the_brentq_solver(alpha):
    worst = max(_relative(new.one_sided_radius(v, t, alpha), ref_one_sided_radius(v, t, alpha))
                for v, t in itertools.product(VARIANCES, TAU2S))
    print(f"alpha {alpha:g}: one_sided_radius max relative deviation {worst:.2e}")
    assert worst <= TOL


def test_one_sided_radius_above_level_one_half_equals_the_brentq_solver():
    # c ≤ 0 is reachable only with α > ½ (never from a valid policy): the bracketed path.
    worst = max(_relative(new.one_sided_radius(v, t, a), ref_one_sided_radius(v, t, a))
                for v, t, a in itertools.product(VARIANCES[::4], TAU2S[::4], (0.6, 0.9, 0.99)))
    assert worst <= TOL


@pytest.mark.parametrize("c", [-0.6, -0.2, 0.0, 1e-9, 0.01, 0.3, 1.0, 2.3, 5.0, 12.8, 31.0,
                               200.0, 5000.0])
def test_the_solved_z_satisfies_its_equation_to_rounding(c):
    z, slope = new._solve_z(c)
    residual = 0.5 * z * z + float(log_ndtr(z)) - c
    # The solver stops with |z − root| ≤ 5e-15·|z| (its last Newton step); then rounding.
    assert abs(residual) <= 5e-15 * abs(z) * slope + 8 * sys.float_info.epsilon * max(1, abs(c))
    assert slope == pytest.approx(z + math.exp(-0.5 * z * z - float(log_ndtr(z)))
                                  / math.sqrt(2 * math.pi), rel=1e-6)
    assert z == pytest.approx(ref_z_one_sided(c), rel=TOL)


def test_the_solver_returns_at_once_without_a_finite_equation():
    assert new._solve_z(math.inf) == (math.inf, math.inf)
    assert all(math.isnan(x) for x in new._solve_z(math.nan))
    assert new.one_sided_radius(1e-310, 1.0, 0.05) == math.inf  # τ²/v overflows


@pytest.mark.parametrize("one_sided", [True, False])
def test_tau2_for_radius_equals_the_brentq_solver(one_sided):
    # Every level of the grid, and the rollback levels 0.05 / k of a Bonferroni split.
    alphas = [*np.geomspace(1e-6, 0.5, 25), *(0.05 / k for k in range(1, 41))]
    worst = max(_relative(new.tau2_for_radius(0.02, float(a), one_sided),
                          ref_tau2_for_radius(0.02, float(a), one_sided)) for a in alphas)
    print(f"tau2_for_radius (one_sided={one_sided}) max relative deviation {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("one_sided", [True, False])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_variance_for_radius_equals_the_brentq_solver(alpha, one_sided):
    worst = 0.0
    zeros = 0
    # Radii from 1e-14 (no variance above e⁻⁶⁰ reaches it: 0) to 1e3; τ² from 1e-6 R²
    # (the variance far above τ²) to 1e6 R², and the gate's own κ(α) R².
    for radius in np.geomspace(1e-14, 1e3, 35):
        kappa = new.tau2_for_radius(1.0, alpha, one_sided)
        for tau2 in (*(radius * radius * np.geomspace(1e-6, 1e6, 13)), kappa * radius * radius):
            got = new.variance_for_radius(radius, tau2, alpha, one_sided)
            want = ref_variance_for_radius(radius, tau2, alpha, one_sided)
            zeros += want == 0.0
            worst = max(worst, _relative(got, want))
    print(f"alpha {alpha:g} one_sided={one_sided}: variance_for_radius max relative "
          f"deviation {worst:.2e} ({zeros} zeros)")
    assert 0 < zeros < 35 * 14
    assert worst <= TOL


# --- whole decisions --------------------------------------------------------------------

REGIONS = np.array([f"region-{i}" for i in range(10)])


def _twenty_kpis(**evaluation: Any) -> Policy:
    """20 decisive KPIs, 6 of them fairness indices over 10 regions (like
    benchmarks/policies/fraud_20kpis.yaml, at a smaller scale)."""
    rates = ("recall", "precision", "false_positive_rate", "false_negative_rate",
             "true_negative_rate", "accuracy", "f1", "error_rate")
    kpis: list[dict[str, Any]] = [
        {"name": r, "kind": "proportion", "metric": r, "margin": 0.02,
         "role": "critical" if r == "recall" else "guardrail"} for r in rates]
    kpis += [{"name": "auc", "kind": "auc", "margin": 0.01},
             {"name": "latency_mean", "kind": "mean", "source": "latency", "margin": "10%"}]
    kpis += [{"name": f"latency_p{q}", "kind": "quantile", "source": "latency", "q": q / 100,
              "margin": "10%"} for q in (50, 90, 95, 99)]
    kpis += [{"name": f"{m}_fairness", "kind": "fairness", "metric": m,
              "segment_by": "region", "margin": "25%",
              "role": "critical" if m == "false_positive_rate" else "guardrail"}
             for m in ("false_positive_rate", "recall", "precision", "false_negative_rate",
                       "accuracy", "positive_rate")]
    settings = {"min_samples": {"requests": 2000, "labelled": 2000}, "min_dwell": "15m",
                "max_duration": "2h"}
    return policy_from_dict({
        "stages": [{"traffic": t, **settings} for t in (5, 25, 50)] + [{"traffic": 100}],
        "kpis": kpis, "evaluation": {"alpha_rollback": 0.05, **evaluation}})


def _role(policy: Policy, seed: int, n: int, recall: float = 0.876, fpr: float = 0.05,
          fpr_region_0: float | None = None, latency_scale: float = 1.0) -> RoleAggregate:
    rng = np.random.default_rng(seed)
    agg = RoleAggregate(AggregateSpec.from_policy(policy))
    agg.add_requests(latency_scale * np.exp(rng.normal(math.log(0.085), 0.22, n)),
                     rng.random(n) < 0.002)
    y = rng.random(n) < 0.3
    region = rng.choice(REGIONS, n)
    neg_rate = np.where(region == REGIONS[0], fpr if fpr_region_0 is None else fpr_region_0,
                        fpr)
    pred = np.where(y, rng.random(n) < recall, rng.random(n) < neg_rate)
    score = 1 / (1 + np.exp(-rng.normal(-1.5 + 2.5 * y, 1.2)))
    agg.add_labelled(y, pred, score, segments={"region": region})
    return agg


CANDIDATES: dict[str, dict[str, Any]] = {
    "equal": {},
    "recall-minus-3": {"recall": 0.846},
    "recall-minus-1": {"recall": 0.866},
    "fpr-region-0": {"fpr_region_0": 0.08},
    "slower": {"latency_scale": 1.08},
}


def _evaluations() -> list[tuple[str, Policy, int, list[StageSample]]]:
    """(name, policy, stage index, samples): each candidate at each stage, two traffic levels,
    with and without the recent-window check."""
    out = []
    for window in (0.0, 0.2):
        policy = _twenty_kpis(window_share=window)
        for (name, cand), n in itertools.product(CANDIDATES.items(), (3000, 30_000)):
            for stage in range(3):
                samples = [StageSample(i, _role(policy, 100 + 10 * i, n),
                                       _role(policy, 200 + 10 * i, n, **cand))
                           for i in range(stage + 1)]
                out.append((f"{name}/n={n}/stage={stage}/window={window}", policy, stage,
                            samples))
    return out


def _same(got: Any, want: Any, where: str) -> None:
    """Recursive equality, floats to :data:`TOL` relative."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, str):
        assert got == pytest.approx(want, rel=TOL, abs=1e-300, nan_ok=True), where
    else:
        assert got == want, where


def _use_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the reference solvers wherever the package holds the current ones."""
    current = {name: getattr(new, name) for name in REFERENCE}
    for module in [m for name, m in sys.modules.items() if name.startswith("mlflow_kpigate")]:
        for attr, value in list(vars(module).items()):
            for name, fn in current.items():
                if value is fn:
                    monkeypatch.setattr(module, attr, REFERENCE[name])


def test_gate_decisions_equal_the_brentq_solver(monkeypatch):
    cases = _evaluations()
    decisions = [evaluate(policy, stage, 3600.0, samples).to_dict()
                 for _, policy, stage, samples in cases]
    with monkeypatch.context() as patch:
        _use_reference(patch)
        reference = [evaluate(policy, stage, 3600.0, samples).to_dict()
                     for _, policy, stage, samples in cases]
    assert new.one_sided_radius is not ref_one_sided_radius  # the patch was undone
    actions = [d["action"] for d in decisions]
    assert {"rollback", "hold", "promote"} <= set(actions)  # the set covers every outcome
    worst = 0.0
    for (name, *_), got, want in zip(cases, decisions, reference, strict=True):
        _same(got, want, name)
        for g, w in zip(got["evidence"], want["evidence"], strict=True):
            for bound in ("lower", "upper"):
                if w[bound] is not None:
                    worst = max(worst, _relative(g[bound], w[bound]))
    counts = ", ".join(f"{actions.count(a)} {a}" for a in sorted(set(actions)))
    print(f"{len(cases)} decisions equal ({counts}); bounds' max relative deviation "
          f"{worst:.2e}")
