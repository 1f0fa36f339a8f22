"""``kpigate collector``: run the in-cluster collector service for one deployment.

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

from mlflow_kpigate.core.durations import parse_duration
from mlflow_kpigate.core.errors import KpigateError, UsageError
from mlflow_kpigate.core.signals import signals_end_the_server
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.policy import load_policy, parse_stage_shortcut

if TYPE_CHECKING:
    from mlflow_kpigate.metrics.service_config import CollectorServiceConfig

#: metrics.service_config.UNANSWERED, repeated so that ``kpigate --help`` does not import the
#: service just to list the command; a test keeps the two equal.
UNANSWERED = ("error", "drop")

__all__ = ["build_config", "collector_command"]


# Config fields as the options that set them, for error messages.
_OPTIONS = {
    "deployment": "--deployment",
    "maturity_s": "--maturity",
    "threshold": "--threshold",
    "pending_ttl_s": "--pending-ttl",
    "unanswered": "--unanswered",
    "versions": "--baseline-version/--candidate-version",
    "tokens": "--token-file",
    "stages": "--stages",
}


def _duration(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def build_config(
    *,
    deployment: str,
    policy_file: str,
    data_dir: str,
    threshold: float = 0.5,
    maturity: str | None = None,
    pending_ttl: str = "10m",
    unanswered: str = "error",
    baseline_version: str | None = None,
    candidate_version: str | None = None,
    token_files: tuple[str, ...] = (),
    insecure_no_auth: bool = False,
    stages: str | None = None,
) -> CollectorServiceConfig:
    """The service configuration from the command's options (``UsageError`` when bad)."""
    from mlflow_kpigate.metrics.service_auth import load_tokens
    from mlflow_kpigate.metrics.service_config import CollectorServiceConfig

    if not token_files and not insecure_no_auth:
        raise UsageError("--token-file: none given; give the ingest and operator tokens "
                         "(--token-file ingest=PATH --token-file operator=PATH, and labels=PATH "
                         "for /feedback), or --insecure-no-auth for a local test")
    if stages is not None:
        try:
            parse_stage_shortcut(stages)
        except ValueError as exc:
            raise UsageError(f"--stages: {exc}") from None

    def override(doc: dict[str, Any]) -> None:
        if stages:
            doc["stages"] = stages

    policy = load_policy(policy_file, override=override)
    maturity_s = _duration("--maturity", maturity)
    ttl = _duration("--pending-ttl", pending_ttl)
    versions = {role: v for role, v in (("baseline", baseline_version),
                                        ("candidate", candidate_version)) if v}
    path = Path(data_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--data-dir: {path} is a file; give a directory for the "
                         "prediction log")
    try:
        tokens = load_tokens(token_files)
        return CollectorServiceConfig(
            deployment=deployment,
            data_dir=path,
            spec=AggregateSpec.from_policy(policy),
            maturity_s=policy.evaluation.maturity if maturity_s is None else maturity_s,
            threshold=threshold,
            versions=versions,
            pending_ttl_s=ttl if ttl is not None else 600.0,
            unanswered=unanswered,
            stages=policy.stages,
            tokens=tokens,
            insecure_no_auth=insecure_no_auth,
        )
    except ValueError as exc:
        name, _, rest = str(exc).partition(":")
        raise UsageError(f"{_OPTIONS.get(name, name)}:{rest}") from None


@click.command("collector")
@click.option("--deployment", required=True, help="The SeldonDeployment's name (the rollout).")
@click.option("--policy", "policy_file", required=True, type=click.Path(),
              help="Rollout policy file: segment fields, business values, label maturity.")
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
@click.option("--insecure-no-auth", is_flag=True, default=False,
              help="Accept every request without a token (local tests and demos only).")
def collector_command(deployment: str, policy_file: str, data_dir: str, host: str, port: int,
                      threshold: float, maturity: str | None, pending_ttl: str,
                      unanswered: str, baseline_version: str | None,
                      candidate_version: str | None, stages: str | None,
                      token_files: tuple[str, ...], insecure_no_auth: bool) -> None:
    """Collect Seldon request-logger CloudEvents and labels; export KPIs for Prometheus."""
    import uvicorn

    from mlflow_kpigate.metrics.service_app import create_collector_app

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(
            deployment=deployment, policy_file=policy_file, data_dir=data_dir,
            threshold=threshold, maturity=maturity, pending_ttl=pending_ttl,
            unanswered=unanswered, baseline_version=baseline_version,
            candidate_version=candidate_version, token_files=token_files,
            insecure_no_auth=insecure_no_auth, stages=stages,
        )
        app = create_collector_app(config)
    except KpigateError as exc:
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(exc.exit_code) from None
    except (OSError, sqlite3.Error, ValueError) as exc:
        # The store: an unwritable directory, a file that is not a prediction log, or one
        # written with another policy's binning.
        click.echo(f"error: --data-dir: cannot use {data_dir}: {exc}", err=True)
        raise click.exceptions.Exit(UsageError.exit_code) from None
    click.echo(f"kpigate collector for {deployment} on http://{host}:{port} "
               f"(data in {config.data_dir})", err=True)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, workers=1, log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=30,
    ))
    with signals_end_the_server():
        server.run()
    click.echo(f"kpigate collector for {deployment} stopped; prediction log closed", err=True)
