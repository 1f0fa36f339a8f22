"""``kpigate collector``: run the in-cluster collector service for one deployment, or with
``--shared`` for every rollout of a namespace, each registered by the operator
(:mod:`mlflow_kpigate.metrics.service_shared`).

Inside a container it binds ``0.0.0.0`` (the default) so that Seldon's request logger and
Prometheus reach it through its Service; everywhere else give ``--host 127.0.0.1``. One
uvicorn worker: one process owns the prediction log's writer.

Every ``POST`` needs a token (``--token-file SCOPE=PATH``, files mounted from a Secret; see
:mod:`mlflow_kpigate.metrics.service_auth`). Without tokens for the ``ingest`` and
``operator`` scopes the command refuses to start (exit 2) unless ``--insecure-no-auth``
turns authentication off on purpose, for a local test or demo.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlflow_kpigate.cli.errors import error_line
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.signals import signals_end_the_server

if TYPE_CHECKING:
    from mlflow_kpigate.metrics.service_config import CollectorServiceConfig

#: metrics.service_config.UNANSWERED, repeated so that ``kpigate --help`` does not import the
#: service just to list the command; a test keeps the two equal.
UNANSWERED = ("error", "drop")

__all__ = ["build_config", "collector_command"]


def build_config(**options: Any) -> CollectorServiceConfig:
    """The service configuration from the command's options (``UsageError`` when bad);
    see :func:`mlflow_kpigate.metrics.service_options.build_config`."""
    from mlflow_kpigate.metrics.service_options import build_config as build

    return build(**options)


_PER_ROLLOUT = (("deployment", "--deployment"), ("policy_file", "--policy"),
                ("threshold", "--threshold"), ("maturity", "--maturity"),
                ("baseline_version", "--baseline-version"),
                ("candidate_version", "--candidate-version"), ("stages", "--stages"))


def _shared_app(ctx: click.Context, data_dir: str, pending_ttl: str, unanswered: str,
                token_files: tuple[str, ...], insecure_no_auth: bool) -> Any:
    """The ``--shared`` collector's app (``UsageError`` naming the option when bad)."""
    from click.core import ParameterSource

    from mlflow_kpigate.core.durations import parse_duration
    from mlflow_kpigate.metrics.service_auth import load_tokens
    from mlflow_kpigate.metrics.service_shared import create_shared_collector_app
    from mlflow_kpigate.metrics.shared_registry import SharedCollectorConfig

    for param, option in _PER_ROLLOUT:
        if ctx.get_parameter_source(param) not in (None, ParameterSource.DEFAULT):
            raise UsageError(f"{option}: not with --shared; each rollout brings its own with "
                             "its registration (PUT /rollouts/NAME, see docs/collector.md)")
    if not token_files and not insecure_no_auth:
        raise UsageError("--token-file: none given; give the ingest and operator tokens "
                         "(--token-file ingest=PATH --token-file operator=PATH, and labels=PATH "
                         "for /feedback), or --insecure-no-auth for a local test")
    try:
        if parse_duration(pending_ttl) <= 0:
            raise ValueError("must be a duration > 0")
    except ValueError as exc:
        raise UsageError(f"--pending-ttl: {exc}") from None
    path = Path(data_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--data-dir: {path} is a file; give a directory for the rollouts' "
                         "prediction logs")
    try:
        config = SharedCollectorConfig(data_dir=path, tokens=load_tokens(token_files),
                                       insecure_no_auth=insecure_no_auth,
                                       pending_ttl=pending_ttl, unanswered=unanswered)
    except ValueError as exc:
        name, _, rest = str(exc).partition(":")
        raise UsageError(f"{_SHARED_OPTIONS.get(name, name)}:{rest}") from None
    return create_shared_collector_app(config)


_SHARED_OPTIONS = {"tokens": "--token-file", "unanswered": "--unanswered"}


@click.command("collector")
@click.option("--deployment", default=None,
              help="The SeldonDeployment's name (the rollout); required without --shared.")
@click.option("--policy", "policy_file", default=None, type=click.Path(),
              help="Rollout policy file: segment fields, business values, label maturity; "
                   "required without --shared.")
@click.option("--shared", is_flag=True, default=False,
              help="Serve every rollout of the namespace, each registered by the operator "
                   "(PUT /rollouts/NAME) with its own policy and data under "
                   "DATA_DIR/rollouts/NAME; without --deployment, --policy and the other "
                   "per-rollout options.")
@click.option("--data-dir", required=True, type=click.Path(),
              help="Directory for the prediction log (a persistent volume in a cluster).")
@click.option("--host", default="0.0.0.0", show_default=True,
              help="Address to bind; 127.0.0.1 outside a container.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="Port to listen on.")
@click.option("--threshold", default=0.5, show_default=True, type=float,
              help="Score at or above which a prediction counts as positive.")
@click.option("--maturity", default=None,
              help="Label maturity such as 30m (default: the policy's evaluation.maturity).")
@click.option("--pending-ttl", default="10m", show_default=True,
              help="How long a request waits for its response (and vice versa).")
@click.option("--unanswered", type=click.Choice(UNANSWERED), default="error",
              show_default=True,
              help="A request whose response never came: a failed prediction, or dropped.")
@click.option("--baseline-version", default=None,
              help="Model version recorded for baseline predictions (default: the graph "
                   "node name the logger reports).")
@click.option("--candidate-version", default=None,
              help="Model version recorded for candidate predictions.")
@click.option("--stages", default=None, metavar="shadow,5,25,…",
              help="The rollout's stages when it was created with -C stages=… (default: the "
                   "policy's); stage notices are checked against them.")
@click.option("--token-file", "token_files", multiple=True, metavar="SCOPE[,SCOPE]=PATH",
              help="A file holding the token of a scope: ingest (request logger), labels "
                   "(/feedback), operator (stage notices). Repeat per scope; required for "
                   "ingest and operator.")
@click.option("--max-segment-values", default=20, show_default=True,
              type=click.IntRange(min=1),
              help="Segment values (fairness KPIs) with a series of their own per stage and "
                   "field: the most frequent; the rest are summed as value=\"__other__\".")
@click.option("--insecure-no-auth", is_flag=True, default=False,
              help="Accept every request without a token (local tests and demos only).")
@click.pass_context
def collector_command(ctx: click.Context, deployment: str | None, policy_file: str | None,
                      shared: bool, data_dir: str, host: str, port: int,
                      threshold: float, maturity: str | None, pending_ttl: str,
                      unanswered: str, baseline_version: str | None,
                      candidate_version: str | None, stages: str | None,
                      token_files: tuple[str, ...], insecure_no_auth: bool,
                      max_segment_values: int) -> None:
    """Collect Seldon request-logger CloudEvents and labels; export KPIs for Prometheus."""
    from mlflow_kpigate.metrics.service_app import create_collector_app

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if shared:
            app = _shared_app(ctx, data_dir, pending_ttl, unanswered, token_files,
                              insecure_no_auth)
            what, where = "shared by the namespace's rollouts", Path(data_dir).expanduser()
            return _serve(app, host, port, what, where)
        for option, given in (("--deployment", deployment), ("--policy", policy_file)):
            if not given:
                raise UsageError(f"{option}: missing; a collector serves one deployment "
                                 "(--deployment NAME --policy FILE), or every rollout of the "
                                 "namespace with --shared")
        config = build_config(
            deployment=deployment, policy_file=policy_file, data_dir=data_dir,
            threshold=threshold, maturity=maturity, pending_ttl=pending_ttl,
            unanswered=unanswered, baseline_version=baseline_version,
            candidate_version=candidate_version, token_files=token_files,
            insecure_no_auth=insecure_no_auth, stages=stages,
            max_segment_values=max_segment_values,
        )
        app = create_collector_app(config)
    except KpigateError as exc:
        click.echo(error_line(str(exc)), err=True)
        raise click.exceptions.Exit(exc.exit_code) from None
    except (OSError, sqlite3.Error, ValueError) as exc:
        # The store: an unwritable directory, a file that is not a prediction log, or one
        # written with another policy's binning.
        click.echo(error_line(f"--data-dir: cannot use {data_dir}: {exc}"), err=True)
        raise click.exceptions.Exit(UsageError.exit_code) from None
    _serve(app, host, port, f"for {deployment}", config.data_dir)


def _serve(app: Any, host: str, port: int, what: str, where: Path) -> None:
    """Run ``app`` under one uvicorn worker until SIGTERM/SIGINT."""
    import uvicorn

    click.echo(f"kpigate collector {what} on http://{host}:{port} (data in {where})",
               err=True)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, workers=1, log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=30,
    ))
    with signals_end_the_server():
        server.run()
    click.echo(f"kpigate collector {what} stopped; prediction log closed", err=True)
