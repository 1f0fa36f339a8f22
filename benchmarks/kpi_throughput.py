"""Throughput and memory of the streaming KPI engine vs scikit-learn / numpy on full arrays.

Usage::

    .venv/bin/python benchmarks/kpi_throughput.py [--n 50000000] [--chunk 1000000] [--json]

Synthetic labelled predictions (fraud prevalence 1.5%, logistic scores, thresholded
predictions, lognormal latency with an 85 ms median, 0.2% errors, 3 region segments) are
generated chunk by chunk from ``numpy.random.default_rng([seed, chunk_index])``, so every
process sees exactly the same rows without keeping them around.

Each side runs in its own subprocess, so that peak memory is the process's own
``ru_maxrss`` (peak resident set size, includes the interpreter and imported libraries;
the RSS right after imports is reported too):

- ``kpigate``: each chunk is fed to a :class:`~mlflow_kpigate.kpis.RoleAggregate`
  (requests + errors + latency histogram and log moments, confusion matrix, score
  histogram, per-region confusion); then the KPIs are read from it. Only one chunk is
  alive at a time.
- ``sklearn``: the chunks are written into preallocated full-length arrays; then
  ``precision_score``, ``recall_score``, ``f1_score``, ``accuracy_score``,
  ``confusion_matrix`` (FPR), ``roc_auc_score``, one ``np.quantile`` call for
  p50/p95/p99, ``np.mean(np.log(latency))``, the error rate and per-region FPR
  (``confusion_matrix`` on each region's mask; the region names are given, not
  discovered, which favours this side).

Timed: the KPI computation only (for kpigate the ``add_*`` calls plus reading the KPIs;
for sklearn the metric calls). Data generation is excluded on both sides. A third run of
kpigate at ``n = chunk`` shows that its memory does not depend on ``n``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REGIONS = np.array(["eu", "us", "apac"])
REGION_P = [0.5, 0.3, 0.2]
QUANTILES = (0.5, 0.95, 0.99)
PREVALENCE = 0.015
ERROR_RATE = 0.002
MEDIAN_LATENCY_S = 0.085


def make_chunk(seed: int, index: int, size: int) -> dict[str, np.ndarray]:
    """Chunk ``index`` of the synthetic stream (deterministic in ``seed`` and ``index``)."""
    rng = np.random.default_rng([seed, index])
    y_true = rng.random(size) < PREVALENCE
    score = 1.0 / (1.0 + np.exp(-rng.normal(np.where(y_true, 0.5, -2.5), 1.2)))
    return {
        "y_true": y_true,
        "y_pred": score >= 0.5,
        "score": score,
        "latency": np.exp(rng.normal(math.log(MEDIAN_LATENCY_S), 0.35, size)),
        "error": rng.random(size) < ERROR_RATE,
        "region": REGIONS[rng.choice(len(REGIONS), size=size, p=REGION_P)],
    }


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Sizes of the chunks that make up ``n`` rows."""
    full, rest = divmod(n, chunk)
    return [chunk] * full + ([rest] if rest else [])


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    """Current resident set size in MiB (``/proc``; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return _rss_mb()


def run_kpigate(n: int, chunk: int, seed: int) -> dict[str, Any]:
    """Stream every chunk into a RoleAggregate and read the KPIs from it."""
    try:
        from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate
    except ImportError:  # run from a checkout without installing the package
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from mlflow_kpigate.kpis import AggregateSpec, RoleAggregate

    rss_after_import = _current_rss_mb()
    agg = RoleAggregate(AggregateSpec(segment_fields=("region",)))
    elapsed = 0.0
    for index, size in enumerate(chunk_sizes(n, chunk)):
        data = make_chunk(seed, index, size)
        start = time.perf_counter()
        agg.add_requests(data["latency"], data["error"])
        agg.add_labelled(
            data["y_true"], data["y_pred"], data["score"], segments={"region": data["region"]}
        )
        elapsed += time.perf_counter() - start
        del data

    start = time.perf_counter()
    c = agg.confusion
    kpis: dict[str, float] = {
        "precision": c.precision(),
        "recall": c.recall(),
        "f1": c.f1(),
        "accuracy": c.accuracy(),
        "false_positive_rate": c.false_positive_rate(),
        "auc": agg.scores.auc(),
        "mean_log_latency": agg.latency.mean_log(),
        "error_rate": agg.error_rate(),
    }
    for q in QUANTILES:
        kpis[f"p{round(q * 100)}_latency"] = agg.latency.quantile(q)
    for region in REGIONS:
        kpis[f"fpr[{region}]"] = agg.segments["region"][str(region)].false_positive_rate()
    elapsed += time.perf_counter() - start

    state = json.dumps(agg.to_dict())
    return {
        "side": "kpigate",
        "n": n,
        "seconds": elapsed,
        "peak_rss_mb": _rss_mb(),
        "rss_after_import_mb": rss_after_import,
        "state_json_bytes": len(state),
        "state_array_bytes": agg.nbytes(),
        "auc_error_bound": agg.scores.auc_error_bound(),
        "latency_growth": agg.latency.growth,
        "kpis": kpis,
    }


def run_sklearn(n: int, chunk: int, seed: int) -> dict[str, Any]:
    """Materialise the full arrays, then compute the same KPIs with sklearn / numpy."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    rss_after_import = _current_rss_mb()
    template = make_chunk(seed, 0, 1)
    full = {key: np.empty(n, dtype=arr.dtype) for key, arr in template.items()}
    offset = 0
    for index, size in enumerate(chunk_sizes(n, chunk)):
        data = make_chunk(seed, index, size)
        for key, arr in data.items():
            full[key][offset : offset + size] = arr
        offset += size
        del data
    y, pred = full["y_true"], full["y_pred"]

    start = time.perf_counter()
    tn, fp, _, _ = confusion_matrix(y, pred, labels=[False, True]).ravel()
    kpis: dict[str, float] = {
        "precision": float(precision_score(y, pred, zero_division=np.nan)),
        "recall": float(recall_score(y, pred, zero_division=np.nan)),
        "f1": float(f1_score(y, pred, zero_division=np.nan)),
        "accuracy": float(accuracy_score(y, pred)),
        "false_positive_rate": float(fp / (fp + tn)),
        "auc": float(roc_auc_score(y, full["score"])),
        "mean_log_latency": float(np.mean(np.log(full["latency"]))),
        "error_rate": float(np.mean(full["error"])),
    }
    for q, value in zip(QUANTILES, np.quantile(full["latency"], QUANTILES), strict=True):
        kpis[f"p{round(q * 100)}_latency"] = float(value)
    for region in REGIONS:
        mask = full["region"] == region
        tn_r, fp_r, _, _ = confusion_matrix(y[mask], pred[mask], labels=[False, True]).ravel()
        kpis[f"fpr[{region}]"] = float(fp_r / (fp_r + tn_r))
    elapsed = time.perf_counter() - start

    return {
        "side": "sklearn",
        "n": n,
        "seconds": elapsed,
        "peak_rss_mb": _rss_mb(),
        "rss_after_import_mb": rss_after_import,
        "data_bytes": int(sum(arr.nbytes for arr in full.values())),
        "kpis": kpis,
    }


def _worker(side: str, n: int, chunk: int, seed: int) -> dict[str, Any]:
    """Run one side in a fresh interpreter so that its peak RSS is its own."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        side,
        "--n",
        str(n),
        "--chunk",
        str(chunk),
        "--seed",
        str(seed),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def compare(kpigate: dict[str, Any], sklearn: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Absolute (and for latency quantiles relative) differences of every KPI."""
    diffs = {}
    for name, ref in sklearn["kpis"].items():
        mine = kpigate["kpis"][name]
        entry = {"kpigate": mine, "sklearn": ref, "abs_diff": abs(mine - ref)}
        if name.endswith("_latency") and name.startswith("p"):
            entry["rel_diff"] = abs(mine - ref) / ref
        diffs[name] = entry
    return diffs


def _fmt_mb(mb: float) -> str:
    return f"{mb:,.0f} MiB"


def report(results: dict[str, Any]) -> str:
    """The human-readable tables."""
    kg, sk, small = results["kpigate"], results["sklearn"], results["kpigate_small"]
    n = kg["n"]
    lines = [
        f"n = {n:,} labelled predictions (= requests), chunk = {results['chunk']:,}, "
        f"seed = {results['seed']}",
        "peak memory = ru_maxrss of the side's own subprocess (incl. interpreter + imports)",
        "",
        f"{'side':<34} {'wall time':>10} {'vs sklearn':>11} {'rows/s':>12} "
        f"{'peak memory':>12} {'RSS after imports':>18}",
    ]
    for label, r in (("kpigate (streaming, chunked)", kg), ("sklearn/numpy (full arrays)", sk)):
        ratio = sk["seconds"] / r["seconds"]
        lines.append(
            f"{label:<34} {r['seconds']:>9.2f}s {ratio:>10.1f}x {n / r['seconds']:>12,.0f} "
            f"{_fmt_mb(r['peak_rss_mb']):>12} {_fmt_mb(r['rss_after_import_mb']):>18}"
        )
    lines += [
        "",
        "kpigate memory vs n:",
        f"{'n':>14} {'peak memory':>12} {'state arrays':>13} {'state JSON':>11}",
    ]
    for r in (small, kg):
        lines.append(
            f"{r['n']:>14,} {_fmt_mb(r['peak_rss_mb']):>12} {r['state_array_bytes']:>11,} B "
            f"{r['state_json_bytes']:>9,} B"
        )
    lines += [
        "",
        f"agreement (AUC error bound from the histogram: {kg['auc_error_bound']:.2e}; "
        f"quantile relative error bound: {kg['latency_growth'] - 1:.2g})",
        f"{'KPI':<22} {'kpigate':>14} {'sklearn':>14} {'max abs diff':>13} {'rel diff':>9}",
    ]
    for name, d in results["agreement"].items():
        rel = f"{d['rel_diff']:.2e}" if "rel_diff" in d else ""
        lines.append(
            f"{name:<22} {d['kpigate']:>14.9f} {d['sklearn']:>14.9f} {d['abs_diff']:>13.2e} "
            f"{rel:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000_000, help="rows (default 50M)")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="rows per chunk")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--worker", choices=("kpigate", "sklearn"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 1 or args.chunk < 1:
        parser.error("--n and --chunk must be positive")

    if args.worker:
        run = run_kpigate if args.worker == "kpigate" else run_sklearn
        print(json.dumps(run(args.n, args.chunk, args.seed)))
        return

    results: dict[str, Any] = {"chunk": args.chunk, "seed": args.seed}
    results["kpigate"] = _worker("kpigate", args.n, args.chunk, args.seed)
    results["kpigate_small"] = _worker("kpigate", min(args.n, args.chunk), args.chunk, args.seed)
    results["sklearn"] = _worker("sklearn", args.n, args.chunk, args.seed)
    results["agreement"] = compare(results["kpigate"], results["sklearn"])
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(report(results))


if __name__ == "__main__":
    main()
