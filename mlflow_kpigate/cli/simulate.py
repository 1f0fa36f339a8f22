"""``kpigate simulate``: a staged rollout against a synthetic stream, look by look."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import click

from mlflow_kpigate.cli.tables import evidence_table
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.gate import Verdict
from mlflow_kpigate.policy import Policy, load_policy
from mlflow_kpigate.simulate import BUILTIN, RULES, Look, registry_from_stream, resolve, run_rollout
from mlflow_kpigate.simulate.stream import StreamSpec

# One character per KPI verdict in the progress lines.
SYMBOLS = {
    Verdict.BETTER: "+",
    Verdict.NON_INFERIOR: "=",
    Verdict.INCONCLUSIVE: "~",
    Verdict.INSUFFICIENT_DATA: "?",
    Verdict.WORSE: "X",
    Verdict.LIMIT_BREACHED: "X",
    Verdict.OUTSIDE_CONTROL_LIMITS: "X",
    Verdict.REPORTED: ".",
    Verdict.NO_REGRESSION: "=",
    Verdict.NOT_MEASURABLE: "-",
}
LEGEND = ("verdicts: + better  = within margin  ~ inconclusive  ? not enough data  "
          "X worse/limit  . reported  - not measurable in shadow")


def default_horizon(policy: Policy) -> int:
    """Intervals that cover every stage's max_duration (2 h for stages without one)."""
    total = sum(s.max_duration or max(2 * 3600.0, 2 * s.min_dwell)
                for s in policy.gated_stages)
    return max(1, min(20_000, math.ceil(total / policy.evaluation.interval)))


def _clock(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}"


def _progress(policy: Policy, look: Look, width: int) -> str:
    stages = len(policy.stages)
    bar = "".join("#" if i < look.stage_index else ">" if i == look.stage_index else "."
                  for i in range(stages))
    t = _clock((look.interval + 1) * policy.evaluation.interval)
    stage = policy.stages[look.stage_index].describe()
    verdicts = ""
    if look.decision is not None:
        verdicts = "  ".join(f"{e.kpi} {SYMBOLS[e.verdict]}" for e in look.decision.evidence)
    return f"{t:>6}  [{bar}] {stage:<7} {look.action.value:<8} {verdicts}"[:width]


def _describe_stream(stream: StreamSpec, policy: Policy) -> str:
    rate = stream.requests_per_interval / policy.evaluation.interval
    segs = "/".join(stream.segments)
    delay = max(stream.label_delay_s, policy.evaluation.maturity)
    return (f"stream: {stream.requests_per_interval:,} requests per "
            f"{format_duration(policy.evaluation.interval)} (~{rate:,.0f}/s), fraud "
            f"prevalence {stream.prevalence:.1%}, {stream.segment_field} {segs}, labels "
            f"count after {format_duration(delay) if delay else 'the same interval'}; "
            f"horizon {stream.horizon_intervals} intervals "
            f"({format_duration(stream.horizon_intervals * policy.evaluation.interval)})")


@click.command("simulate")
@click.argument("policy_file", type=click.Path())
@click.option("--scenario", "scenario", default="equal", show_default=True,
              help=f"Built-in scenario ({', '.join(BUILTIN)}) or a YAML/JSON scenario file.")
@click.option("--scenario-file", "scenario_file", type=click.Path(),
              help="A YAML/JSON scenario file (same as passing its path to --scenario).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--rule", type=click.Choice(sorted(RULES)), default="kpigate", show_default=True,
              help="Decision rule (the foils are for comparison only).")
@click.option("--requests-per-interval", type=click.IntRange(min=1),
              help="Override the scenario's traffic per evaluation interval.")
@click.option("--horizon", type=click.IntRange(min=1),
              help="Evaluation intervals to simulate (default: the stages' max durations).")
@click.option("--json", "as_json", is_flag=True, help="Print every decision as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary.")
def simulate_command(policy_file: str, scenario: str, scenario_file: str | None, seed: int,
                     rule: str, requests_per_interval: int | None, horizon: int | None,
                     as_json: bool, quiet: bool) -> None:
    """Run POLICY_FILE's staged rollout against a synthetic stream and show each decision."""
    policy = load_policy(policy_file)
    streams = resolve(scenario_file or scenario)
    results = []
    for stream in streams:
        # A scenario may give its rate and horizon in time: count them in this policy's
        # intervals before the per-interval overrides apply.
        stream = stream.per_interval(policy.evaluation.interval)
        if requests_per_interval:
            stream = replace(stream, requests_per_interval=requests_per_interval)
        if horizon or not stream.horizon_intervals:
            stream = replace(stream, horizon_intervals=horizon or default_horizon(policy))
        missing = set(policy.segment_fields) - {stream.segment_field}
        if missing:
            raise UsageError(f"{policy_file}: segment_by {sorted(missing)[0]!r} is not in the "
                             f"scenario's stream (it has {stream.segment_field!r}); set "
                             "stream.segment_field in a scenario file")
        results.append(_simulate_one(policy, policy_file, stream, seed, rule, as_json, quiet))
    if as_json:
        click.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))


def _simulate_one(policy: Policy, policy_file: str, stream: StreamSpec, seed: int, rule: str,
                  as_json: bool, quiet: bool) -> dict[str, object]:
    registry = registry_from_stream(policy, stream, seed)
    width = shutil.get_terminal_size((160, 24)).columns
    width = max(width, 100)
    if not as_json:
        click.echo(f"scenario {stream.name}: {stream.description}")
        click.echo(_describe_stream(stream, policy))
        click.echo(f"policy: {policy_file} ({' -> '.join(s.describe() for s in policy.stages)}),"
                   f" rule: {rule}")
        if not quiet:
            click.echo(LEGEND)

    def show(look: Look) -> None:
        if as_json or quiet:
            return
        click.echo(_progress(policy, look, width))
        if look.action.value != "hold" or (look.decision and look.decision.alert):
            click.echo(f"        -> {look.reason}")

    outcome = run_rollout(policy, stream, RULES[rule](), seed=seed, registry=registry,
                          on_look=show)
    last = outcome.looks[-1]
    elapsed = format_duration(len(outcome.looks) * policy.evaluation.interval)
    served = last.candidate_requests
    summary = {
        "scenario": stream.name,
        "outcome": outcome.status,
        "final_stage": policy.stages[outcome.final_stage].describe(),
        "evaluations": len(outcome.looks),
        "simulated_time_s": len(outcome.looks) * policy.evaluation.interval,
        "candidate_requests": served,
        "candidate_requests_exposed": last.exposed_requests,
        "last_reason": last.reason,
    }
    if as_json:
        summary["decisions"] = [
            {"interval": lk.interval, "stage": lk.stage, "action": lk.action.value,
             "reason": lk.reason,
             "decision": lk.decision.to_dict() if lk.decision else None}
            for lk in outcome.looks
        ]
        return summary
    words = {"promoted": "PROMOTED to 100%", "rolled_back": "ROLLED BACK",
             "holding": f"still HOLDING at {summary['final_stage']} (horizon reached)"}
    click.echo("")
    click.echo(f"outcome: {words[outcome.status]} after {elapsed} of simulated time, "
               f"{len(outcome.looks)} evaluations; the candidate scored {served:,} requests, "
               f"{last.exposed_requests:,} of them served to users")
    click.echo(f"last decision: {last.reason}")
    last_with_evidence = next((lk.decision for lk in reversed(outcome.looks) if lk.decision),
                              None)
    if last_with_evidence is not None:
        click.echo(f"evidence at the last evaluation ({last_with_evidence.stage_name}; bounds "
                   "are anytime-valid, positive = candidate better):")
        for line in evidence_table(last_with_evidence, policy):
            click.echo(line)
    return summary
