"""Errors that carry a user-facing message and the exit code the CLI should use.

The codes themselves are in :mod:`.exit_codes` (one table for errors and outcomes).
"""

from __future__ import annotations

from mlflow_kpigate.core import exit_codes

USAGE_EXIT_CODE = exit_codes.USAGE


class KpigateError(Exception):
    """Base class for errors that are shown to the user as one line, without a traceback."""

    exit_code: int = exit_codes.ERROR


class UsageError(KpigateError):
    """Bad input from the user (a flag, a file, a config value): exit code 2."""

    exit_code = USAGE_EXIT_CODE


class WaitStopped(KpigateError):
    """A wait for a rollout (``-C wait_timeout``) stopped before the rollout ended; the
    rollout goes on. Exit code ``NOT_ENDED`` (5), not an error of kpigate's."""

    exit_code = exit_codes.NOT_ENDED


class PolicyError(UsageError):
    """A rollout policy failed validation; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = f"{where}{self.problems[0]}"
        else:
            message = f"{where}{len(self.problems)} problems:\n" + "\n".join(
                f"  {p}" for p in self.problems
            )
        super().__init__(message)


class MetricsUnavailable(KpigateError):
    """A metrics source could not deliver the data an evaluation needs.

    The controller turns it into a *hold* (never a promotion) and says why; the message
    names what was missing (a query, a series, an unreachable server).
    """


class StateUnreadable(KpigateError):
    """A deployment's saved state is damaged or not a database (one line: which file, and
    what to do); commands on other deployments are unaffected."""


class StateConflict(KpigateError):
    """Another process saved the rollout's state since it was loaded (compare-and-set)."""


class PayloadError(ValueError):
    """A request body the router cannot read; ``status`` is the HTTP status to answer.

    (Here rather than in :mod:`.payloads`, so that the prediction records, which raise it
    for a bad ``/feedback`` body, do not import pandas with the payload parsers.)
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
