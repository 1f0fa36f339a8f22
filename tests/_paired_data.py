"""Correlated models on the same requests, drawn request by request (a brute-force shadow).

Both roles score every request: binormal latent scores (positives N(μ_r, 1), negatives
N(0, 1)) that correlate at ``rho`` within a request, flagged above a threshold set for the
role's recall and false-positive rate; log-latencies and errors correlate alike. Returns
both roles' aggregates and their paired part, built from the same per-request arrays, so a
test can compare the gate's paired variance with the spread of the estimates over
repetitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from mlflow_kpigate.core.samples import StageSample
from mlflow_kpigate.kpis import AggregateSpec, PairedAggregate, RoleAggregate


@dataclass(frozen=True)
class Model:
    """One role's truth."""

    recall: float = 0.85
    fpr: float = 0.10
    log_latency: float = math.log(0.085)
    error_rate: float = 0.02


def _pair(rng: np.random.Generator, n: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    shared = rng.standard_normal(n)
    a = math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.standard_normal(n)
    b = math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.standard_normal(n)
    return a, b


def shadow_sample(rng: np.random.Generator, n: int, baseline: Model, candidate: Model, *,
                  rho: float = 0.8, prevalence: float = 0.3, stage_index: int = 0,
                  spec: AggregateSpec | None = None, paired: bool = True) -> StageSample:
    """``n`` requests answered by both roles (all labelled)."""
    spec = spec or AggregateSpec()
    y = rng.random(n) < prevalence
    out = []
    latent = _pair(rng, n, rho)
    lat_noise = _pair(rng, n, rho)
    err_noise = _pair(rng, n, rho)
    roles = {}
    for model, z0, lz, ez in zip((baseline, candidate), latent, lat_noise, err_noise,
                                 strict=True):
        c = float(norm.isf(model.fpr))
        mu = c + float(norm.ppf(model.recall))
        z = z0 + np.where(y, mu, 0.0)
        pred = z > c
        score = norm.cdf((z - c) / 2.0)
        latency = np.exp(model.log_latency + 0.3 * lz)
        error = ez < norm.ppf(model.error_rate)
        agg = RoleAggregate(spec)
        agg.add_requests(latency, error)
        agg.add_labelled(y, pred, score)
        out.append(agg)
        roles[len(roles)] = (pred, score, latency, error)
    pair = None
    if paired:
        pair = PairedAggregate(spec.score_bins)
        (pb, sb, lb, eb), (pc, sc, lc, ec) = roles[0], roles[1]
        pair.add_requests(eb, ec, lb, lc)
        pair.add_labelled(y, pb, pc, sb, sc)
    return StageSample(stage_index, out[0], out[1], pair)
