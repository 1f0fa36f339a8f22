"""The ``kpigate`` MLflow deployment target (entry point ``mlflow.deployments: kpigate``).

A thin adapter: it checks what MLflow passes, turns errors into what each caller expects,
and delegates to the target's :class:`~mlflow_kpigate.deploy.Deployer`.

Target URIs: ``kpigate`` and ``kpigate:/local`` (the embedded backend on this machine),
``kpigate:/seldon/NAMESPACE`` (Seldon Core canaries on Kubernetes).

Errors: from the ``mlflow deployments`` CLI a user error is one ``Error: …`` line and exit
code 2 (the MLflow CLI would otherwise print a traceback) — an invalid policy gives its
heading and then one line per problem; from Python it is an
``MlflowException`` with ``INVALID_PARAMETER_VALUE``. The plugin leaves the MLflow CLI
with its own exit code by raising a ``click.ClickException`` whose ``exit_code`` is the
code of :mod:`~mlflow_kpigate.core.exit_codes` (click prints it and exits with it).

Outcomes: with ``-C wait=true`` (``create``, ``update -m``, ``run-local``) the CLI ends
with one line saying how the rollout ended (``kpigate: rollout of NAME rolled back: …``)
and the outcome's exit code: 0 promoted, 3 rolled back, 4 aborted, 5 the wait stopped
first (``-C wait_timeout``). From Python, ``create_deployment`` returns the deployment
(its ``status`` says how it ended) and a stopped wait is an ``MlflowException``. While
the CLI waits on a terminal, stderr shows the rollout's live view (:mod:`~mlflow_kpigate.
console`) with the progress lines above it; elsewhere (CI logs, a Job) only the lines.

Endpoints: kpigate has no MLflow endpoints apart from its deployments (each deployment's
router *is* its endpoint, shown by ``get``). ``create-endpoint``, ``get-endpoint``,
``list-endpoints``, ``update-endpoint`` and ``delete-endpoint`` are usage errors (exit
2) naming the deployment command that does the job, rather than aliases of it: an
endpoint's config (routes, rate limits) has nothing in common with a rollout's ``-C``
keys, so accepting one for the other would only hide mistakes.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TypeVar, cast

import click
from mlflow.deployments import BaseDeploymentClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from mlflow_kpigate.core import exit_codes
from mlflow_kpigate.core.errors import (
    KpigateError,
    PolicyError,
    UsageError,
    WaitStopped,
)
from mlflow_kpigate.deploy.config import LOCAL_KEYS, SELDON_KEYS, help_lines, parse_config
from mlflow_kpigate.deploy.deployer import Deployer, Observe, Progress
from mlflow_kpigate.deploy.targets import deployer_for

F = TypeVar("F", bound=Callable[..., Any])


class _CliError(click.ClickException):
    """One ``Error: …`` line on stderr; the exit code is the class's (see :func:`_cli`)."""


class _CliOutcome(click.ClickException):
    """One ``kpigate: …`` line on stderr saying how a rollout ended (see :func:`_cli`)."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"kpigate: {self.message}", file=file, err=file is None)


@functools.cache
def _cli(base: type[click.ClickException], exit_code: int) -> type[click.ClickException]:
    """``base`` with ``exit_code`` (click reads the exit code from the class)."""
    return type(base.__name__, (base,), {"exit_code": exit_code})


def _in_mlflow_cli() -> bool:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    root = ctx.find_root()
    return "deployments" in root.command.commands if isinstance(root.command,
                                                                  click.Group) else False


def _translate(func: F) -> F:
    """Turn kpigate errors into a one-line CLI error or an MlflowException."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KpigateError as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, PolicyError):  # its heading, then one line per problem
                message = str(exc)
            if _in_mlflow_cli():
                base = _CliOutcome if isinstance(exc, WaitStopped) else _CliError
                raise _cli(base, exc.exit_code)(message) from None
            code = INVALID_PARAMETER_VALUE if isinstance(exc, UsageError) else INTERNAL_ERROR
            raise MlflowException(str(exc), error_code=code) from None

    return cast(F, wrapper)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _waiting(deployer: Deployer, name: str, config: Mapping[str, Any] | None
             ) -> Iterator[tuple[Progress, Observe | None]]:
    """What ``create``/``update -m``/``run-local`` report while they wait: in the
    ``mlflow deployments`` CLI with ``-C wait=true`` and stderr a terminal, the live view
    (stopped however the wait ends) and its event lines; else the progress lines alone."""
    wait = parse_config(config, allow_action=True).wait and _in_mlflow_cli()
    # Imported only for a terminal: rich is not among what MLflow's CLI imports.
    if not (wait and sys.stderr.isatty()):
        yield _progress, None
        return
    from mlflow_kpigate.console import LiveScreen, live_wanted

    if not live_wanted(sys.stderr):
        yield _progress, None
        return
    with LiveScreen(sys.stderr, lambda: deployer.open(name, config).policy) as screen:
        yield screen.say, screen.show


def _waited(info: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    """After ``create``/``update -m`` with ``-C wait=true``: from the ``mlflow deployments``
    CLI, one line with the outcome, and its exit code unless it was promoted; from Python,
    the deployment unchanged (its ``status`` and ``reason`` say how it ended)."""
    if not parse_config(config, allow_action=True).wait or "phase" not in info \
            or not _in_mlflow_cli():
        return info
    line = exit_codes.outcome_line(info["name"], info["status"], info.get("reason"))
    code = exit_codes.exit_code_for(info["phase"])
    if code != exit_codes.PROMOTED:
        raise _cli(_CliOutcome, code)(line)
    _progress(f"kpigate: {line}")
    return info


def target_help() -> str:
    """Help text shown by ``mlflow deployments help -t kpigate``."""
    return "\n".join([
        "kpigate: staged rollouts of MLflow model versions, decided by KPI evidence.",
        "",
        "Target URI: kpigate (or kpigate:/local) - the embedded router and controller on "
        "this machine; kpigate:/seldon/NAMESPACE - Seldon Core canaries on Kubernetes, KPIs "
        "from Prometheus, state in ConfigMaps (docs/kubernetes.md).",
        "",
        "  mlflow deployments create -t kpigate --name NAME -m models:/MODEL/VERSION "
        "[-C key=value ...]",
        "  mlflow deployments update -t kpigate --name NAME -C action=promote|rollback|"
        "pause|resume",
        "  mlflow deployments update -t kpigate --name NAME -m models:/MODEL/V2  "
        "(a new rollout)",
        "  mlflow deployments get|list|delete|predict -t kpigate ...",
        "",
        "Config keys (-C):",
        *help_lines(),
        "",
        "Progress: kpigate status NAME, kpigate watch NAME; model-version tags kpigate.* in "
        "the MLflow UI. Docs: README.md, docs/deployment.md, docs/policy.md.",
        "",
        f"Exit codes with -C wait=true (and of kpigate watch): {exit_codes.PROMOTED} "
        f"promoted, {exit_codes.ROLLED_BACK} rolled back, {exit_codes.ABORTED} aborted, "
        f"{exit_codes.NOT_ENDED} still running when -C wait_timeout stopped the wait; "
        f"{exit_codes.ERROR} error, {exit_codes.USAGE} bad input "
        "(docs/deployment.md#exit-codes).",
    ])


def _check_target_keys(deployer: Deployer, config: dict[str, Any] | None) -> None:
    """Refuse -C keys of the other target (the embedded router's or Seldon's)."""
    from mlflow_kpigate.deploy.local import LocalDeployer

    local = isinstance(deployer, LocalDeployer)
    for key in config or {}:
        if not local and key in ("metrics_port", "metrics_host"):
            raise UsageError(f"-C {key}: only for the embedded backend (-t kpigate); a "
                             "Seldon controller serves its metrics on $KPIGATE_METRICS_PORT")
        if not local and key in LOCAL_KEYS:
            raise UsageError(f"-C {key}: only for the embedded router (-t kpigate); on "
                             "Kubernetes, size the predictors with -C replicas")
        if local and key in SELDON_KEYS:
            raise UsageError(f"-C {key}: only for -t kpigate:/seldon/NAMESPACE; remove it for "
                             "the embedded backend")


@_translate
def run_local(name: str, model_uri: str, flavor: str | None = None,
              config: dict[str, Any] | None = None) -> None:
    """``mlflow deployments run-local -t kpigate``: a rollout that blocks until it ends."""
    deployer = deployer_for("kpigate")
    _check_target_keys(deployer, config)
    config = {**(config or {}), "wait": "true"}
    with _waiting(deployer, name, config) as (progress, observe):
        info = deployer.create(name, model_uri, config, progress=progress, observe=observe)
    _waited(info, config)


#: Column sets of a DataFrame that ``pd.read_json`` made of an MLflow scoring payload (or
#: a split-oriented frame) instead of the rows it holds.
_WRAPPED = ({"dataframe_split"}, {"dataframe_records"}, {"instances"},
            {"columns", "data"}, {"columns", "data", "index"})


def _check_read_json_frame(inputs: Any) -> None:
    """``mlflow deployments predict -I FILE`` reads FILE with ``pandas.read_json``, so a
    file holding ``{"dataframe_split": …}`` arrives as one column of that name: say so."""
    columns = getattr(inputs, "columns", None)
    if columns is not None and {str(c) for c in columns} in _WRAPPED:
        raise UsageError("-I: the input file holds an MLflow payload or a split frame, but "
                         "mlflow deployments predict reads it with pandas.read_json; write "
                         'the rows as records, e.g. [{"a": 1.0, "b": 2.0}], or as columns, '
                         'e.g. {"a": [1.0], "b": [2.0]}')


class KpigateDeploymentClient(BaseDeploymentClient):
    """Deployment client for ``mlflow.deployments.get_deploy_client("kpigate")``."""

    @_translate
    def __init__(self, target_uri: str) -> None:
        self.deployer = deployer_for(target_uri)
        super().__init__(target_uri)

    @staticmethod
    def _check_flavor(flavor: str | None) -> None:
        if flavor not in (None, "python_function"):
            raise UsageError(f"--flavor {flavor}: kpigate serves python_function models only")

    @_translate
    def create_deployment(self, name: str, model_uri: str, flavor: str | None = None,
                          config: dict[str, Any] | None = None,
                          endpoint: str | None = None) -> dict[str, Any]:
        """Start a staged rollout of ``model_uri`` (returns once the router serves, or at
        the end with ``-C wait=true``)."""
        self._check_flavor(flavor)
        _check_target_keys(self.deployer, config)
        with _waiting(self.deployer, name, config) as (progress, observe):
            info = self.deployer.create(name, model_uri, config, progress=progress,
                                        observe=observe)
        return _waited(info, config)

    @_translate
    def update_deployment(self, name: str, model_uri: str | None = None,
                          flavor: str | None = None, config: dict[str, Any] | None = None,
                          endpoint: str | None = None) -> dict[str, Any]:
        """Steer the rollout (``-C action=…``) or start a new one with ``model_uri``."""
        self._check_flavor(flavor)
        config = dict(config or {})
        cfg = parse_config(config, allow_action=True)
        _check_target_keys(self.deployer, config)
        if cfg.action and model_uri:
            raise UsageError("give either -m (a new rollout) or -C action=..., not both")
        if cfg.action:
            info = self.deployer.steer(name, cfg.action, config)
        elif model_uri:
            with _waiting(self.deployer, name, config) as (progress, observe):
                info = self.deployer.replace(name, model_uri, config, progress=progress,
                                             observe=observe)
            info = _waited(info, config)
        else:
            raise UsageError("nothing to update: give -m models:/NAME/V for a new rollout or "
                             "-C action=promote|rollback|pause|resume")
        return {**info, "flavor": "python_function"}

    @_translate
    def delete_deployment(self, name: str, config: dict[str, Any] | None = None,
                          endpoint: str | None = None) -> None:
        """Stop the router and controller; an unfinished rollout is recorded as aborted."""
        self.deployer.delete(name, config)

    @_translate
    def list_deployments(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Every deployment of the target."""
        return self.deployer.list_all()

    @_translate
    def get_deployment(self, name: str, endpoint: str | None = None) -> dict[str, Any]:
        """Stage, weights, last decision and endpoint of ``name``."""
        return self.deployer.describe(name)

    @_translate
    def predict(self, deployment_name: str | None = None, inputs: Any = None,
                endpoint: str | None = None) -> Any:
        """Score ``inputs`` through the deployment's router (baseline/candidate split)."""
        if not deployment_name:
            raise UsageError("--name: the deployment to send the input to")
        _check_read_json_frame(inputs)
        return self.deployer.predict(deployment_name, inputs)

    @_translate
    def explain(self, deployment_name: str | None = None, df: Any = None,
                endpoint: str | None = None) -> Any:
        """Not supported: kpigate routes predictions, it does not explain them."""
        raise UsageError("explain is not supported by the kpigate target")

    @_translate
    def predict_stream(self, deployment_name: str | None = None, inputs: Any = None,
                       endpoint: str | None = None) -> Any:
        """Not supported: the router answers each request whole; use ``predict``."""
        raise UsageError("predict_stream is not supported by the kpigate target; use "
                         "predict")

    # Endpoints: see the module docstring for why each is a usage error.
    @_translate
    def create_endpoint(self, name: str, config: dict[str, Any] | None = None) -> Any:
        """Not supported: a deployment's router is its endpoint (``create`` makes both)."""
        raise _no_endpoints("mlflow deployments create --name NAME -m models:/MODEL/V")

    @_translate
    def update_endpoint(self, endpoint: str, config: dict[str, Any] | None = None) -> Any:
        """Not supported: steer the deployment with ``update``."""
        raise _no_endpoints("mlflow deployments update --name NAME -C action=... (or -m)")

    @_translate
    def delete_endpoint(self, endpoint: str) -> Any:
        """Not supported: ``delete`` stops a deployment and its router."""
        raise _no_endpoints("mlflow deployments delete --name NAME")

    @_translate
    def list_endpoints(self) -> Any:
        """Not supported: ``list`` shows every deployment with its endpoint."""
        raise _no_endpoints("mlflow deployments list")

    @_translate
    def get_endpoint(self, endpoint: str) -> Any:
        """Not supported: ``get`` shows a deployment and its router's endpoint URL."""
        raise _no_endpoints("mlflow deployments get --name NAME")


def _no_endpoints(instead: str) -> UsageError:
    return UsageError("kpigate has no endpoints apart from its deployments (each "
                      f"deployment's router is its endpoint); use `{instead} -t kpigate`")
