"""The collector service's configuration from the options of ``kpigate collector``.

:func:`build_config` turns the command's options (a policy file, durations as text, token
files) into a checked :class:`~.service_config.CollectorServiceConfig`, raising
``UsageError`` with one line naming the option. The command (:mod:`mlflow_kpigate.cli.
collector`) uses it for its one deployment, and a shared collector
(:mod:`.shared_registry`) for each rollout registered with it, so both build a rollout's
configuration the same way. It lives here, below the CLI, for the second use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow_kpigate.core.durations import parse_duration
from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.kpis import AggregateSpec
from mlflow_kpigate.metrics.exposition import MAX_SEGMENT_VALUES
from mlflow_kpigate.metrics.service_auth import CollectorTokens, load_tokens
from mlflow_kpigate.metrics.service_config import CollectorServiceConfig
from mlflow_kpigate.policy import load_policy, parse_stage_shortcut

__all__ = ["OPTIONS", "build_config"]


# Config fields as the options that set them, for error messages.
OPTIONS = {
    "deployment": "--deployment",
    "maturity_s": "--maturity",
    "threshold": "--threshold",
    "pending_ttl_s": "--pending-ttl",
    "unanswered": "--unanswered",
    "versions": "--baseline-version/--candidate-version",
    "tokens": "--token-file",
    "stages": "--stages",
    "max_segment_values": "--max-segment-values",
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
    tokens: CollectorTokens | None = None,
    max_segment_values: int = MAX_SEGMENT_VALUES,
) -> CollectorServiceConfig:
    """The service configuration from the command's options (``UsageError`` when bad).

    ``tokens`` are tokens already read (a shared collector's, for each of its rollouts);
    without them they are read from ``token_files``.
    """
    if tokens is None and not token_files and not insecure_no_auth:
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
        if tokens is None:
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
            max_segment_values=max_segment_values,
        )
    except ValueError as exc:
        name, _, rest = str(exc).partition(":")
        raise UsageError(f"{OPTIONS.get(name, name)}:{rest}") from None
