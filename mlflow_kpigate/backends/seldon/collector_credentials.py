"""The controller's credentials for the in-cluster collector, named by environment variables.

The collector refuses unauthenticated posts (:mod:`mlflow_kpigate.metrics.service_auth`).
The controller holds two of its tokens, each as a file mounted from the collector's
Secret and named by an environment variable (never a ``-C`` option: those are saved in
the rollout's ConfigMap, which is no place for a secret):

* ``KPIGATE_COLLECTOR_TOKEN_FILE``: the ``operator`` token, sent as
  ``Authorization: Bearer`` with every stage notice. The file is read for each notice,
  so a rotated Secret is picked up without a restart.
* ``KPIGATE_COLLECTOR_INGEST_TOKEN_FILE``: the ``ingest`` token, written into the request
  logger URL of the SeldonDeployment (``…/cloudevents/<token>``), because Seldon Core
  v1's executor cannot send a header with its logger's events.

Both are optional: without them the controller sends no token, which only a collector
started with ``--insecure-no-auth`` accepts.

``kpigate feedback`` posts labels with the ``labels`` token, from ``--token-file`` or the
file ``KPIGATE_COLLECTOR_LABELS_TOKEN_FILE`` names (:func:`labels_token`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.core.tokens import read_token_file

__all__ = ["INGEST_TOKEN_ENV", "LABELS_TOKEN_ENV", "OPERATOR_TOKEN_ENV",
           "CollectorCredentials", "labels_token"]

OPERATOR_TOKEN_ENV = "KPIGATE_COLLECTOR_TOKEN_FILE"
INGEST_TOKEN_ENV = "KPIGATE_COLLECTOR_INGEST_TOKEN_FILE"
LABELS_TOKEN_ENV = "KPIGATE_COLLECTOR_LABELS_TOKEN_FILE"


@dataclass(frozen=True)
class CollectorCredentials:
    """Where the operator token is read from, and the ingest token itself (never shown)."""

    operator_token_file: Path | None = None
    ingest_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CollectorCredentials:
        """The credentials the environment names (``UsageError`` naming the variable when a
        file is missing or does not hold a token)."""
        env = os.environ if environ is None else environ
        operator = _path(env, OPERATOR_TOKEN_ENV)
        if operator is not None:
            _read(OPERATOR_TOKEN_ENV, operator)  # fail at start, not at the first notice
        ingest = _path(env, INGEST_TOKEN_ENV)
        return cls(operator, _read(INGEST_TOKEN_ENV, ingest) if ingest is not None else None)

    def operator_token(self) -> str | None:
        """The operator token as the file holds it now (``UsageError`` if it cannot)."""
        if self.operator_token_file is None:
            return None
        return _read(OPERATOR_TOKEN_ENV, self.operator_token_file)


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value).expanduser() if value else None


def _read(name: str, path: Path) -> str:
    try:
        return read_token_file(path)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None


def labels_token(token_file: str | None, environ: Mapping[str, str] | None = None
                 ) -> str | None:
    """The ``labels`` token from ``token_file`` (``--token-file``), else from the file
    :data:`LABELS_TOKEN_ENV` names; None when neither is given (``UsageError`` naming the
    option or variable when the file does not hold a token)."""
    if token_file:
        return _read("--token-file", Path(token_file).expanduser())
    path = _path(os.environ if environ is None else environ, LABELS_TOKEN_ENV)
    return _read(LABELS_TOKEN_ENV, path) if path is not None else None
