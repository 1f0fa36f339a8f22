"""``kpigate replay``: re-judge a rollout's recorded evaluations, with its policy or another.

The evaluations come from the rollout's state store (``NAME`` with ``--target`` or
``--namespace``, as for the other rollout commands, :mod:`.targeting`) or from its MLflow
run's artifacts (``--run-id``), so a rollout can be replayed from the run a user finds in
the MLflow UI. With the rollout's own policy every decision must be reproduced exactly
(exit 1 if one is not); with ``--policy`` the output shows where that policy would have
decided differently.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from mlflow_kpigate.cli.output import dump, output_option
from mlflow_kpigate.cli.targeting import Where, rollout_target
from mlflow_kpigate.core.durations import format_duration
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.evaluation import Evaluation
from mlflow_kpigate.core.history import History
from mlflow_kpigate.policy import Policy, load_policy
from mlflow_kpigate.rollout.replay import Outcome, Rejudged, Replay, replay


class ReplayMismatch(KpigateError):
    """Replaying with the recorded policy did not reproduce every decision."""


def _from_store(name: str, where: Where) -> tuple[list[Evaluation], Policy | None, str]:
    rollout = where.deployer().open(name, where.config())
    evaluations = [e.evaluation for e in History.of(rollout.store.events()).evaluations()]
    return evaluations, rollout.policy, f"{name} ({where.target})"


def _from_run(run_id: str, tracking_uri: str | None, want_policy: bool
              ) -> tuple[list[Evaluation], Policy | None, str]:
    from mlflow_kpigate.deploy.inputs import tracking_uri as default_tracking_uri
    from mlflow_kpigate.registry import Registry

    registry = Registry(tracking_uri or default_tracking_uri())
    evaluations = registry.evaluation_records(run_id)
    policy = None
    if want_policy:
        with tempfile.TemporaryDirectory(prefix="kpigate-replay-") as tmp:
            policy = load_policy(registry.rollout_policy(run_id, Path(tmp)))
    return evaluations, policy, f"run {run_id}"


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _verdict(ev: Any) -> str:
    if ev is None:
        return "absent"
    bounds = "" if ev.lower != ev.lower else f" [{ev.lower:+.4g}, {ev.upper:+.4g}]"
    return f"{ev.verdict.value}{bounds}"


def _where(r: Rejudged) -> str:
    e = r.evaluation
    into = "" if e.stage_elapsed_s != e.stage_elapsed_s \
        else f", {format_duration(max(e.stage_elapsed_s, 0.0)) or '0s'} into the stage"
    return f"evaluation {e.number} ({r.recorded.stage_name}{into})"


def _lines(result: Replay, source: str, policy_label: str, show_all: bool) -> list[str]:
    n = len(result.results)
    lines = [f"{source}: {n} recorded evaluation{'s' if n != 1 else ''}, recorded under "
             f"policy {', '.join(_short(d) for d in result.recorded_digests) or 'unknown'}",
             f"replayed under {policy_label} ({_short(result.policy_digest)})",
             f"  identical: {result.count(Outcome.IDENTICAL)}, same action with other "
             f"evidence: {result.count(Outcome.SAME_ACTION)}, different action: "
             f"{result.count(Outcome.DIFFERENT)}, holds for missing metrics: "
             f"{result.count(Outcome.NO_DATA)}, without kept inputs: "
             f"{result.count(Outcome.NOT_REPLAYABLE)}"]
    first = result.first_divergence
    if first is None:
        lines.append("  no divergence: every re-judged evaluation takes the recorded action")
    else:
        assert first.replayed is not None
        lines.append(f"  first divergence: {_where(first)}: recorded "
                     f"{first.recorded.action.value}, replay {first.replayed.action.value}")
        lines.append(f"    replay: {first.replayed.reason}")
        for change in first.changes:
            why = change.replayed.reason if change.replayed is not None else "not in policy"
            lines.append(f"    {change.kpi}: {_verdict(change.recorded)} -> "
                         f"{_verdict(change.replayed)}: {why}")
    shown = [r for r in result.results if show_all or r.outcome is Outcome.DIFFERENT]
    if shown:
        lines.append("  evaluations" + ("" if show_all else " with another action (--all "
                                             "lists every one)") + ":")
        for r in shown:
            replayed = r.replayed.action.value if r.replayed is not None else "-"
            kpis = ", ".join(c.kpi for c in r.changes)
            lines.append(f"    #{r.evaluation.number:<4} {r.recorded.stage_name:<8} "
                         f"{r.recorded.action.value:>8} -> {replayed:<8} {r.outcome.value}"
                         + (f" ({kpis})" if kpis else ""))
    return lines


def _as_json(result: Replay, source: str) -> dict[str, Any]:
    return {
        "source": source, "policy_digest": result.policy_digest,
        "recorded_policy_digests": list(result.recorded_digests),
        "reproduced": result.reproduced,
        "first_divergence": (None if result.first_divergence is None
                             else result.first_divergence.evaluation.number),
        "evaluations": [{
            "number": r.evaluation.number, "stage": r.recorded.stage_name,
            "recorded": r.recorded.action.value,
            "replayed": None if r.replayed is None else r.replayed.action.value,
            "outcome": r.outcome.value,
            "changes": [{"kpi": c.kpi,
                         "recorded": None if c.recorded is None else c.recorded.to_dict(),
                         "replayed": None if c.replayed is None else c.replayed.to_dict()}
                        for c in r.changes],
        } for r in result.results],
    }


@click.command("replay")
@click.argument("name", required=False)
@rollout_target
@click.option("--run-id", help="Replay from this MLflow rollout run's artifacts instead.")
@click.option("--tracking-uri", help="MLflow tracking URI for --run-id (default: "
              "$MLFLOW_TRACKING_URI).")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False),
              help="Re-judge under this policy (default: the rollout's own).")
@click.option("--all", "show_all", is_flag=True, help="List every evaluation.")
@output_option("the comparison")
def replay_command(name: str | None, where: Where, run_id: str | None,
                   tracking_uri: str | None, policy_file: str | None, show_all: bool,
                   output: str) -> None:
    """Re-judge every recorded evaluation of rollout NAME (or of --run-id)."""
    if (name is None) == (run_id is None):
        raise UsageError("give a rollout NAME or --run-id RUN_ID (one of them)")
    other = load_policy(policy_file) if policy_file else None
    if run_id is not None:
        evaluations, own, source = _from_run(run_id, tracking_uri, other is None)
    else:
        assert name is not None
        evaluations, own, source = _from_store(name, where)
    if not evaluations:
        raise UsageError(f"{source}: no evaluations recorded yet; nothing to replay")
    policy = other or own
    if policy is None:
        raise UsageError(f"{source}: the rollout's policy copy cannot be read; give "
                         "--policy FILE")
    result = replay(evaluations, policy)
    label = f"--policy {policy_file}" if policy_file else "the rollout's own policy"
    if output != "text":
        click.echo(dump(_as_json(result, source), output))
    else:
        for line in _lines(result, source, label, show_all):
            click.echo(line)
    if other is None and not result.reproduced:
        differ = len(result.results) - result.count(Outcome.IDENTICAL) \
            - result.count(Outcome.NO_DATA) - result.count(Outcome.NOT_REPLAYABLE)
        raise ReplayMismatch(f"{differ} recorded decision(s) were not reproduced by the "
                             "rollout's own policy; the record or the gate changed")
