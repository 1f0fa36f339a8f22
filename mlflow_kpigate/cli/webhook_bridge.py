"""``kpigate webhook-bridge``: serve the MLflow-webhook → GitHub repository_dispatch bridge.

The command reads the shared secret from the environment variable named by
``--secret-env`` (never from the command line, where ``ps`` would show it) and the GitHub
token from ``GITHUB_TOKEN``; ``GITHUB_API_URL`` selects a GitHub Enterprise Server. It
serves until SIGINT or SIGTERM and then exits 0 after the requests in progress finish.

Every problem with the options is one line on stderr and exit code 2, also for the
mistakes click itself detects (a missing ``--repo``), so that the command behaves the same
whether or not it runs under the ``kpigate`` group.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import click

from mlflow_kpigate.cli.errors import error_line
from mlflow_kpigate.core.durations import parse_duration
from mlflow_kpigate.core.errors import USAGE_EXIT_CODE, KpigateError, UsageError
from mlflow_kpigate.webhooks.config import FORWARDED_EVENTS, BridgeConfig
from mlflow_kpigate.webhooks.server import WEBHOOK_PATH, Bridge, BridgeServer

__all__ = ["webhook_bridge_command"]

DEFAULT_API_URL = "https://api.github.com"


class _OneLineErrors(click.Command):
    """A command whose usage and kpigate errors are one ``Error: …`` line on stderr."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            click.echo(error_line(exc.format_message()), err=True)
            raise click.exceptions.Exit(USAGE_EXIT_CODE) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KpigateError as exc:
            click.echo(error_line(str(exc)), err=True)
            raise click.exceptions.Exit(exc.exit_code) from None


def _port(text: str) -> int:
    if not text.strip().isdigit() or int(text) > 65535:
        raise UsageError(f"--port: {text!r} is not a port; use 0-65535 (0 picks a free one)")
    return int(text)


def _max_age(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--max-age: {exc}") from None
    if seconds <= 0:
        raise UsageError("--max-age: must be positive, e.g. 300s or 5m")
    return seconds


def _secret(var: str) -> str:
    if not var or "=" in var:
        raise UsageError(f"--secret-env: {var!r} is not a variable name; pass the NAME of the "
                         "environment variable that holds the secret")
    value = os.environ.get(var, "")
    if not value:
        raise UsageError(f"--secret-env: environment variable {var} is not set or empty; "
                         "export the secret the MLflow webhook was created with")
    return value


def build_config(*, repo: str, secret_env: str, models: Sequence[str] = (),
                 aliases: Sequence[str] = (), events: Sequence[str] = (),
                 event_type: str = "kpigate-rollout", pr_tag: str = "github.pr",
                 max_age: str = "300s") -> BridgeConfig:
    """The bridge configuration from the command's options and the environment."""
    return BridgeConfig(
        repo=repo,
        secret=_secret(secret_env),
        token=os.environ.get("GITHUB_TOKEN", ""),
        api_url=os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL,
        event_type=event_type,
        models=frozenset(models),
        aliases=frozenset(aliases),
        events=frozenset(events) or FORWARDED_EVENTS,
        pr_tag=pr_tag,
        max_age=_max_age(max_age),
    )


def _serve(server: BridgeServer) -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    try:
        stop.wait()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command("webhook-bridge", cls=_OneLineErrors)
@click.option("--repo", required=True, metavar="OWNER/NAME",
              help="Repository that receives the repository_dispatch events.")
@click.option("--secret-env", required=True, metavar="VAR",
              help="Environment variable holding the webhook's shared secret.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default="8787", show_default=True,
              help="Port to listen on (0 picks a free one).")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Forward events of this registered model only (repeatable; default all).")
@click.option("--alias", "aliases", multiple=True, metavar="ALIAS",
              help="Forward alias events for this alias only (repeatable; default all).")
@click.option("--event", "events", multiple=True, metavar="EVENT",
              help="MLflow event to forward: model_version.created or "
                   "model_version_alias.created (repeatable; default both).")
@click.option("--event-type", default="kpigate-rollout", show_default=True,
              help="repository_dispatch event_type (what workflows select with types:).")
@click.option("--pr-tag", default="github.pr", show_default=True,
              help="Model-version tag whose value (42, #42 or a PR URL) becomes pr_number.")
@click.option("--max-age", default="300s", show_default=True,
              help="Reject deliveries whose timestamp is further than this from now.")
def webhook_bridge_command(repo: str, secret_env: str, host: str, port: str,
                           models: tuple[str, ...], aliases: tuple[str, ...],
                           events: tuple[str, ...], event_type: str, pr_tag: str,
                           max_age: str) -> None:
    """Forward MLflow registry webhooks to GitHub as repository_dispatch events.

    Token from GITHUB_TOKEN, API base from GITHUB_API_URL (default https://api.github.com).
    See docs/webhook-bridge.md.
    """
    config = build_config(repo=repo, secret_env=secret_env, models=models, aliases=aliases,
                          events=events, event_type=event_type, pr_tag=pr_tag,
                          max_age=max_age)
    server = BridgeServer(Bridge(config), host, _port(port))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(message)s")
    selected = ", ".join(sorted(config.models)) or "all models"
    click.echo(f"kpigate webhook-bridge: listening on {server.url}{WEBHOOK_PATH} "
               f"(forwarding {', '.join(sorted(config.events))} of {selected} to "
               f"{config.repo} as {config.event_type}); Ctrl-C stops", err=True)
    _serve(server)
    click.echo("kpigate webhook-bridge: stopped", err=True)
