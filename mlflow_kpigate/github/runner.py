"""The Actions runner as the report step sees it: its environment, validated
(:class:`GitHubEnv`), and its log (:class:`Console`, which never prints the token).

The runner's files (outputs, job summary) and workflow commands are in :mod:`.workflow`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlflow_kpigate.core.errors import UsageError
from mlflow_kpigate.github.api import DEFAULT_API_URL, check_api_url
from mlflow_kpigate.github.record import http_base
from mlflow_kpigate.github.workflow import workflow_command

#: A commit SHA (abbreviated or full).
SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

#: Writes one line to the log: (line, to stderr).
Echo = Callable[[str, bool], None]


@dataclass(frozen=True)
class GitHubEnv:
    """The runner's environment, validated."""

    token: str | None = None
    repository: str | None = None
    api_url: str = DEFAULT_API_URL
    server_url: str = "https://github.com"
    event_name: str | None = None
    event_path: str | None = None
    sha: str | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    output_path: str | None = None
    summary_path: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GitHubEnv:
        """Read and check the variables; ``UsageError`` naming the one that is wrong."""
        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        repository = get("GITHUB_REPOSITORY")
        if repository and not _REPOSITORY.match(repository):
            raise UsageError(f"GITHUB_REPOSITORY: {repository[:80]!r} is not OWNER/NAME; the "
                             "runner sets it, or set it to e.g. octo-org/models")
        sha = get("GITHUB_SHA")
        if sha and not SHA.match(sha):
            raise UsageError(f"GITHUB_SHA: {sha[:80]!r} is not a commit SHA; give the 40 "
                             "hex digits of a commit (the runner sets it)")
        run_id = get("GITHUB_RUN_ID")
        if run_id and not run_id.isdigit():
            raise UsageError(f"GITHUB_RUN_ID: {run_id[:40]!r} is not a number; the runner "
                             "sets it, or unset it")
        server = get("GITHUB_SERVER_URL") or "https://github.com"
        if http_base(server) is None:
            raise UsageError(f"GITHUB_SERVER_URL: {server[:80]!r} is not an http(s) URL; "
                             "set it to https://github.com or your GitHub Enterprise URL")
        return cls(token=get("GITHUB_TOKEN"), repository=repository,
                   api_url=check_api_url(get("GITHUB_API_URL") or DEFAULT_API_URL),
                   server_url=server.rstrip("/"), event_name=get("GITHUB_EVENT_NAME"),
                   event_path=get("GITHUB_EVENT_PATH"), sha=sha, run_id=run_id,
                   tracking_uri=get("MLFLOW_TRACKING_URI"), output_path=get("GITHUB_OUTPUT"),
                   summary_path=get("GITHUB_STEP_SUMMARY"))

    @property
    def workflow_run_url(self) -> str | None:
        """The workflow run's page (logs, job summary), when the runner said which."""
        if not (self.repository and self.run_id):
            return None
        return f"{self.server_url}/{self.repository}/actions/runs/{self.run_id}"


class Console:
    """Prints with the token redacted, whatever the text's origin.

    Each message becomes exactly one line: the runner reads every line that starts with
    ``::`` as a workflow command, so a reason with a newline in it must not start one.
    ``echo`` writes a line (the command line interface passes ``click.echo``).
    """

    def __init__(self, token: str | None, echo: Echo) -> None:
        self.token = token
        self._echo = echo

    def clean(self, text: str) -> str:
        """``text`` with the token replaced by ``***`` (a token too short to be one is
        left alone: replacing it would garble unrelated text)."""
        if self.token and len(self.token) >= 4:
            return text.replace(self.token, "***")
        return text

    def _line(self, text: str) -> str:
        return " ".join(self.clean(text).splitlines())

    def out(self, text: str) -> None:
        """One line to stdout."""
        self._echo(self._line(text), False)

    def err(self, text: str) -> None:
        """One line to stderr."""
        self._echo(self._line(text), True)

    def warn(self, message: str) -> None:
        """A ``::warning`` workflow command (titled kpigate) on stdout."""
        self.out(workflow_command("warning", self.clean(message), title="kpigate"))
