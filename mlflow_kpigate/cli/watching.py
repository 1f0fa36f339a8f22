"""``kpigate watch``, and the follow loop it shares with ``kpigate status --watch``.

Both follow a rollout's state store (:meth:`~mlflow_kpigate.deploy.deployer.Deployer.
follow`) until the rollout ends, ``--timeout`` passes or Ctrl-C, and exit with the
outcome's code (docs/deployment.md#exit-codes). On a terminal they draw the live view
(:mod:`mlflow_kpigate.console`) in place; ``watch`` prints its event lines above it. When
stdout is not a terminal they print plain lines only: ``watch`` one per audit record, as
it always did.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import click

from mlflow_kpigate.cli.operate import forecast_lines, timeout_seconds
from mlflow_kpigate.cli.targeting import Where, rollout_target
from mlflow_kpigate.core import exit_codes
from mlflow_kpigate.core.events import Recorded
from mlflow_kpigate.deploy.deployer import Deployer
from mlflow_kpigate.deploy.follow import Poll

if TYPE_CHECKING:
    from mlflow_kpigate.console import LiveScreen

__all__ = ["follow_until_end", "record_lines", "screen_for", "watch_command"]


def record_lines(rec: Recorded) -> list[str]:
    """The plain lines of one audit record: time, kind, stage, reason (and under an
    evaluation, the first two lines of its forecast)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(rec.ts))
    body = rec.event.body()
    what = body.get("reason") or body.get("weights") or ""
    lines = [f"{stamp} {rec.kind:<18} {body.get('stage', ''):<7} {what}"[:240]]
    lines += [line[:240] for line in forecast_lines(body.get("decision"), " " * 9)[:2]]
    return lines


def screen_for(deployer: Deployer, name: str, config: Mapping[str, Any] | None
               ) -> LiveScreen | None:
    """The live screen on stdout when stdout is a terminal, else None (plain lines)."""
    if not sys.stdout.isatty():
        return None  # rich is not imported at all for plain lines
    from mlflow_kpigate.console import LiveScreen, live_wanted

    if not live_wanted(sys.stdout):
        return None
    return LiveScreen(sys.stdout, lambda: deployer.open(name, config).policy)


def follow_until_end(deployer: Deployer, name: str, config: Mapping[str, Any] | None,
                     limit: float | None, on_poll: Callable[[Poll], None]
                     ) -> tuple[str, int]:
    """Follow rollout ``name``, calling ``on_poll`` at each look, until it ends (its
    outcome), ``limit`` seconds pass or Ctrl-C (both: not ended); the closing line and
    the exit code."""
    deadline = None if limit is None else time.monotonic() + limit
    try:
        for poll in deployer.follow(name, config):
            on_poll(poll)
            state = poll.state
            if poll.ended:
                return (f"{name}: {state.status} — {state.reason}",
                        exit_codes.exit_code_for(state.phase))
            if deadline is not None and time.monotonic() > deadline:
                return f"{name}: still {state.status} (stopped watching)", exit_codes.NOT_ENDED
    except KeyboardInterrupt:
        # Not an outcome: a script that runs `kpigate watch` must not read 0 (promoted).
        return "stopped watching; the rollout goes on", exit_codes.NOT_ENDED
    raise AssertionError("follow() never ends")  # pragma: no cover


@click.command("watch")
@click.argument("name")
@rollout_target
@click.option("--timeout", default=None, metavar="DURATION",
              help="Stop watching after DURATION: seconds, or e.g. 15m, 2h (exit code 5 if "
                   "the rollout goes on).")
def watch_command(name: str, where: Where, timeout: str | None) -> None:
    """Follow rollout NAME through its stages until it ends (Ctrl-C stops watching only).

    Exits with the outcome's code: 0 promoted, 3 rolled back, 4 aborted, 5 still running
    when --timeout or Ctrl-C stopped the watch (docs/deployment.md#exit-codes). On a
    terminal the rollout's live view (stages, traffic, requirements, KPIs, forecast) is
    redrawn under the event lines; piped or captured, only the event lines are printed.
    """
    limit = None if timeout is None else timeout_seconds(timeout)
    deployer, config = where.deployer(), where.config()
    deployer.open(name, config)  # a clear error if there is no such rollout
    screen = screen_for(deployer, name, config)
    echo = screen.say if screen is not None else click.echo

    def on_poll(poll: Poll) -> None:
        for rec in poll.records:
            for line in record_lines(rec):
                echo(line)
        if screen is not None:
            screen.show(poll.state)

    with screen if screen is not None else nullcontext():
        line, code = follow_until_end(deployer, name, config, limit, on_poll)
    click.echo(line)
    raise click.exceptions.Exit(code)
