"""``kpigate plan``: requests (and, at a given traffic, hours) each stage needs.

The baseline's figures come from the MLflow registry (``--model NAME --baseline
VERSION|@ALIAS``: the same μ, σ and prevalence a rollout reads, plus the planning metrics
``<kpi>.unit_sd``, ``.rate``, ``.segments`` of the version's run), from a file
(``--baseline-file``), or both (the file's fields win). A figure a decisive KPI needs and
neither has is one line each, naming it, and exit code 2.
"""

from __future__ import annotations

import math
import os

import click

from mlflow_kpigate.core.baseline import RegistryBaseline
from mlflow_kpigate.core.durations import format_duration, parse_duration
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.forecast import HEADERS, Forecast
from mlflow_kpigate.gate.forecast import plan_forecast, shares
from mlflow_kpigate.gate.planning import PlanRow, missing_figures, plan
from mlflow_kpigate.policy import Policy, load_policy


def _n(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _table(rows: list[list[str]], left: tuple[int, ...]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) if i in left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def _registry_baseline(model: str, baseline: str, policy: Policy,
                       tracking_uri: str | None) -> RegistryBaseline:
    """The baseline version's figures from MLflow (imported late: MLflow is slow)."""
    from mlflow_kpigate.registry import Registry

    ref = baseline.strip()
    uri = f"models:/{model}@{ref[1:]}" if ref.startswith("@") else f"models:/{model}/{ref}"
    registry = Registry(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None)
    return registry.baseline_kpis(registry.resolve(uri), policy)


def _where(figure: str, model: str | None, baseline: str) -> str:
    """Where a missing figure can be given."""
    if model is None:
        return "add it to --baseline-file"
    metric = figure.removeprefix("kpis.").replace(".mean", "")
    return (f"log run metric '{metric}' on the run of {model} {baseline}, or give it in "
            "--baseline-file")


def _hours(policy: Policy, rows: list[PlanRow], rps: float, delay: float
           ) -> list[list[str]]:
    """Per stage, alone: requests to promote ÷ rate (+ label delay), at least min dwell."""
    out = [["stage", "promote requests", "hours", "binds", "max_duration"]]
    labelled = {k.name for k in policy.kpis if k.decides and k.needs_labels}
    for stage in policy.gated_stages:
        share = shares(stage)[0]
        needs: list[tuple[float, str]] = [(stage.min_dwell, "min_dwell")]
        needs.append((stage.min_samples.requests / (rps * share), "min_samples"))
        if labelled:
            needs.append((delay + stage.min_samples.labelled / (rps * share), "min_samples"))
        most = 0
        for r in (r for r in rows if r.stage == stage.name):
            wait = delay if r.kpi in labelled else 0.0
            seconds = math.inf if r.promote_requests is None else r.promote_requests / rps
            needs.append((seconds + wait, r.kpi))
            most = max(most, r.promote_requests or 0)
        seconds, binds = max(needs, key=lambda n: n[0])
        limit = stage.max_duration
        flag = "" if limit is None or seconds <= limit else " (cannot decide in time)"
        out.append([stage.name, _n(most), f"{seconds / 3600:,.1f}", binds,
                    ("—" if limit is None else format_duration(limit)) + flag])
    return out


def _forecast_lines(fc: Forecast) -> list[str]:
    lines = _table([HEADERS, *fc.rows()], (0, 1, 2, 5, 6, 7))
    return lines + [f"  note: {n}" for n in fc.notes]


@click.command("plan")
@click.argument("policy_file", type=click.Path())
@click.option("--baseline-file", type=click.Path(),
              help="YAML/JSON with the baseline's KPI figures (see docs/statistics.md); "
                   "with --model, its fields win over the registry's.")
@click.option("--model", help="Registered model whose baseline version's figures are read "
                              "from MLflow.")
@click.option("--baseline", "baseline_ref", default="@champion", show_default=True,
              help="With --model: the baseline VERSION or @ALIAS.")
@click.option("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI).")
@click.option("--traffic", type=float, help="Live requests per second: print hours per "
                                            "stage and the forecast rollout.")
@click.option("--label-delay", help="With --traffic: how long labels take to arrive, e.g. "
                                    "1h (default: the policy's evaluation.maturity).")
def plan_command(policy_file: str, baseline_file: str | None, model: str | None,
                 baseline_ref: str, tracking_uri: str | None, traffic: float | None,
                 label_delay: str | None) -> None:
    """Size POLICY_FILE's stages: requests needed to promote or to detect, per KPI."""
    policy = load_policy(policy_file)
    if baseline_file is None and model is None:
        raise UsageError("give the baseline's figures: --model NAME [--baseline VERSION|"
                         "@ALIAS] reads them from MLflow, --baseline-file FILE from a file")
    if traffic is not None and not (math.isfinite(traffic) and traffic > 0):
        raise UsageError(f"--traffic {traffic:g}: must be requests per second > 0")
    try:
        delay = parse_duration(label_delay) if label_delay is not None else 0.0
    except ValueError as exc:
        raise UsageError(f"--label-delay: {exc}") from None
    if label_delay is not None and traffic is None:
        raise UsageError("--label-delay needs --traffic (hours follow from both)")
    registry = RegistryBaseline()
    if model is not None:
        registry = _registry_baseline(model, baseline_ref, policy, tracking_uri)
    if baseline_file is not None:
        registry = registry.updated_with(RegistryBaseline.from_file(baseline_file))
    missing = missing_figures(policy, registry)
    if missing:
        for m in missing:
            click.echo(f"kpigate plan: {m.kpi} needs '{m.figure}' ({m.what}); "
                       f"{_where(m.figure, model, baseline_ref)}", err=True)
        raise click.exceptions.Exit(2)
    rows = plan(policy, registry)
    ev = policy.evaluation
    click.echo(f"plan for {policy_file}: alpha_rollback {ev.alpha_rollback:g} (split), "
               f"alpha_promote {ev.alpha_promote:g}, power {ev.power:g}"
               + (f"; baseline {registry.source}" if registry.source else ""))
    click.echo("requests = all requests through the router in that stage alone (both roles);"
               " pooling evidence from earlier stages only shortens a stage.")
    click.echo("  promote: an equal candidate shown within (stage scale x margin);"
               " detect: a candidate worse by the KPI's detect (default 1.75 x margin)"
               " rolled back;"
               " Wald: SPRT lower bound with a known baseline.")
    header = ["stage", "KPI", "unit", "promote", "detect", "Wald", "note"]
    for line in _table([header, *([r.stage, r.kpi, r.unit, _n(r.promote_requests),
                                   _n(r.detect_requests), _n(r.wald_requests), r.note]
                                  for r in rows)], (0, 1, 2, 6)):
        click.echo(line)
    if traffic is None:
        return
    lag = max(delay, ev.maturity)
    click.echo(f"\nhours per stage at {traffic:g} requests/s, labels after "
               f"{format_duration(lag)} (the stage alone, power {ev.power:g}: requests ÷ "
               "rate + label delay, at least the stage's min dwell and min samples):")
    for line in _table(_hours(policy, rows, traffic, lag), (0, 3, 4)):
        click.echo(line)
    fc = plan_forecast(policy, registry, traffic, lag, f"--traffic {traffic:g}")
    click.echo("\nforecast (an equal candidate's expected path, evidence pooled across "
               "stages; what `mlflow deployments create -C expected_rps=…` prints):")
    for line in _forecast_lines(fc):
        click.echo(line)
    for warning in fc.warnings():
        click.echo(f"warning: {warning}")
